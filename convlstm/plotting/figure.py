"""Where a plot draws (the caller's axes or figure, or a new ``Figure`` of its own, never pyplot's global state, so
plots are independent, thread-safe and need no display) and the one way figures are saved."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure

from convlstm.atomic import atomic_path

DPI = 120


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write a figure as a PNG atomically, so a crash never leaves a half-written file in place of a good one.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure, as a ``plot_*`` function returns it.
    path : str or os.PathLike
        The file to write; missing folders are made and an existing file is replaced in one rename.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_path(path) as tmp:  # the temporary name ends in .tmp, so the format is given explicitly
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def canvas(fig: Figure | SubFigure | None, size: tuple[float, float], layout: str = "compressed") -> Figure | SubFigure:
    """The caller's (sub)figure to lay panels out in, or a new figure of ``size`` inches.

    Parameters
    ----------
    fig : matplotlib.figure.Figure or SubFigure or None
        Where the caller wants the panels; None makes a new figure.
    size : tuple of float
        Width and height (inches) of a new figure.
    layout : str
        Layout engine of a new figure.

    Returns
    -------
    matplotlib.figure.Figure or SubFigure
        ``fig``, or the new figure.
    """
    return Figure(figsize=size, dpi=DPI, layout=layout) if fig is None else fig


def single_axes(ax: Axes | None, size: tuple[float, float], layout: str = "constrained") -> Axes:
    """The caller's axes, or the only axes of a new figure of ``size`` inches.

    Parameters
    ----------
    ax : matplotlib.axes.Axes or None
        Where the caller wants the plot; None makes a new figure.
    size, layout
        As for :func:`canvas`.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax``, or the new axes.
    """
    return canvas(None, size, layout).add_subplot() if ax is None else ax


def root_figure(where: Axes | Figure | SubFigure) -> Figure:
    """The top-level figure (the one to save) of axes or of a (sub)figure.

    Parameters
    ----------
    where : matplotlib.axes.Axes, Figure or SubFigure
        What a plot drew in.

    Returns
    -------
    matplotlib.figure.Figure
        The figure that holds it.
    """
    return where.figure.figure if isinstance(where, Axes) else where.figure


def legend_below(ax: Axes, own: bool, handles: Sequence[Artist], labels: Sequence[str], ncols: int) -> None:
    """The legend under the plot in a figure of our own; inside the axes in the caller's, which we do not lay out.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The plot.
    own : bool
        Whether the figure is ours (made by :func:`single_axes` or :func:`canvas`).
    handles, labels : sequence
        The legend's entries.
    ncols : int
        Entries per row.
    """
    if own:
        ax.figure.legend(handles, labels, loc="outside lower center", ncols=ncols, framealpha=0.9)
    else:
        ax.legend(handles, labels, ncols=ncols, framealpha=0.9, fontsize=8)

"""The comparison's score figures: CSI bars, the performance diagram and an error score over time.

Scores come as DataArrays on ``(forecast, threshold)`` (a string forecast name, a threshold in mm) or
``(forecast, time)``; each forecast keeps its colour and marker (:data:`~convlstm.plotting.style.FORECAST_STYLES`).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from convlstm.errors import ConfigError, DataError
from convlstm.evaluation.alignment import check_aligned
from convlstm.plotting.figure import legend_below, root_figure, single_axes
from convlstm.plotting.style import forecast_styles, unit_of

CSI_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BIAS_LEVELS = (0.5, 1.0, 1.5, 2.0, 4.0)


def plot_csi_bars(csi: xr.DataArray, low: xr.DataArray | None = None, high: xr.DataArray | None = None, *,
                  title: str = "", ax: Axes | None = None) -> Figure:
    """Draw grouped CSI bars per threshold with their intervals, to compare forecasts event size by event size.

    One group per threshold (in increasing order), one bar per forecast. A NaN CSI leaves its bar out
    (marked "n/a"); a NaN bound leaves out only that interval bar. Raises ``DataError`` for wrong dims or
    bounds off the CSI's forecasts and thresholds, ``ConfigError`` for no forecast or threshold.

    Parameters
    ----------
    csi : xarray.DataArray
        CSI on dims ``(forecast, threshold)``: forecast names, thresholds in mm.
    low, high : xarray.DataArray, optional
        Lower and upper interval bounds on the same forecasts and thresholds (both needed for interval bars).
    title : str
        Axes title; by default "CSI per threshold".
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; by default a new figure, with the legend under the plot.

    Returns
    -------
    matplotlib.figure.Figure
        The bar chart, or the figure of ``ax``.
    """
    csi, low, high = _tables(csi=csi, low=low, high=high)
    names, thresholds = [str(n) for n in csi["forecast"].values], csi["threshold"].values
    n, m = len(names), len(thresholds)
    own = ax is None
    ax = single_axes(ax, (min(16.0, max(7.5, 2.0 + 0.42 * n * m + 0.3 * m)), 5.0))
    styles = forecast_styles(names)
    x = np.arange(m, dtype=float)
    width = 0.8 / n
    for i, name in enumerate(names):
        color, value = styles[name][0], csi.values[i]
        lo, hi = (np.full(m, np.nan),) * 2 if low is None or high is None else (low.values[i], high.values[i])
        pos = x + (i - (n - 1) / 2) * width
        shown = np.isfinite(value)
        ax.bar(pos[shown], value[shown], width, color=color, edgecolor="white", linewidth=0.6, zorder=2)
        bounded = shown & np.isfinite(lo) & np.isfinite(hi)
        if bounded.any():
            yerr = np.clip([value[bounded] - lo[bounded], hi[bounded] - value[bounded]], 0.0, None)
            ax.errorbar(pos[bounded], value[bounded], yerr=yerr, fmt="none", ecolor="black", elinewidth=1.0,
                        capsize=2.5, zorder=3)
        for p in pos[~shown]:
            ax.text(p, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, fontweight="bold", color=color)
    ax.set_xticks(x, [f"≥ {t:g} mm" for t in thresholds])
    ax.set_xlim(-0.5, m - 0.5)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("precipitation threshold (mm per 12 h)")
    ax.set_ylabel("CSI (critical success index)")
    ax.grid(True, axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
    legend_below(ax, own, [Patch(facecolor=styles[name][0]) for name in names], names, min(n, 4))
    ax.set_title(title or "CSI per threshold", fontsize=12)
    return root_figure(ax)


def plot_performance_diagram(pod: xr.DataArray, far: xr.DataArray, *, title: str = "",
                             ax: Axes | None = None) -> Figure:
    """Draw a performance diagram (Roebber 2009), which shows POD, success ratio, CSI and frequency bias at once.

    Success ratio (1 − FAR) on x, POD on y, over labelled CSI contours and dashed frequency-bias lines
    (bias = POD / SR). Each forecast's points are joined in increasing threshold and labelled with it;
    points with a NaN are left out. A perfect forecast sits in the top-right corner. Raises ``DataError``
    for wrong dims or tables that differ in forecasts or thresholds, ``ConfigError`` for empty ones.

    Parameters
    ----------
    pod, far : xarray.DataArray
        Probability of detection and false-alarm ratio on dims ``(forecast, threshold)`` (thresholds in mm).
    title : str
        Figure title (axes title when drawn into ``ax``); by default "Performance diagram".
    ax : matplotlib.axes.Axes, optional
        Axes to draw the diagram into (with the legend inside); by default on a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The performance diagram (on the figure of ``ax`` when given).
    """
    pod, far = _tables(pod=pod, far=far)
    own = ax is None
    ax = single_axes(ax, (7.2, 7.6))
    _performance_background(ax)
    names, thresholds = [str(n) for n in pod["forecast"].values], pod["threshold"].values
    styles = forecast_styles(names)
    for i, name in enumerate(names):
        color, marker = styles[name]
        sr, hits = 1.0 - far.values[i], pod.values[i]
        ok = np.isfinite(sr) & np.isfinite(hits)
        label = name if ok.any() else f"{name} (no finite points)"
        ax.plot(sr[ok], hits[ok], color=color, marker=marker, markersize=7, linewidth=1.5,
                markeredgecolor="white", markeredgewidth=0.6, label=label, zorder=5)
        for x, y, threshold in zip(sr[ok], hits[ok], thresholds[ok]):
            ax.annotate(f"{threshold:g} mm", xy=(x, y), xytext=(5, 4), textcoords="offset points",
                        fontsize=7, color=color, zorder=6)
    ax.set_xlabel("success ratio (1 − FAR)")
    ax.set_ylabel("probability of detection (POD)")
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.6", linewidth=0.8), Line2D([], [], color="0.45", linewidth=0.9, linestyle="--")]
    labels += ["CSI (contours)", "frequency bias (POD / SR)"]
    legend_below(ax, own, handles, labels, 3)
    (ax.figure.suptitle if own else ax.set_title)(title or "Performance diagram", fontsize=13)
    return root_figure(ax)


def plot_error_by_time(errors: xr.DataArray, *, title: str = "", ylabel: str = "RMSE (mm)",
                       ax: Axes | None = None) -> Figure:
    """Draw one line per forecast of an error score over time, to show when and how often one forecast wins.

    Dates are labelled with matplotlib's concise date formatter; the legend gives each forecast's mean.
    Raises ``DataError`` for wrong dims, ``ConfigError`` for no forecast.

    Parameters
    ----------
    errors : xarray.DataArray
        The score on dims ``(forecast, time)``; NaN leaves a gap.
    title : str
        Axes title; by default "<score> per forecast time", the score named by ``ylabel``.
    ylabel : str
        Y-axis label; a unit in trailing parentheses, "RMSE (mm)", is repeated with the means.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The time series; when ``ax`` is passed, its figure.
    """
    check_aligned({"errors": errors}, dims=("forecast", "time"))
    if errors.sizes["forecast"] == 0:
        raise ConfigError("errors holds no forecast: pass at least one row on the 'forecast' dim.")
    errors = errors.sortby("time")
    names = [str(n) for n in errors["forecast"].values]
    styles = forecast_styles(names)
    unit = f" {unit_of(ylabel)}".rstrip()
    ax = single_axes(ax, (10.0, 4.8))
    t = errors["time"].values
    for name, y in zip(names, errors.values.astype(float)):
        finite = y[np.isfinite(y)]
        mean = f" (mean {finite.mean():#.3g}{unit})" if finite.size else " (no finite values)"
        color, marker = styles[name]
        ax.plot(t, y, color=color, marker=marker if len(t) <= 60 else None, markersize=4, linewidth=1.4,
                label=name + mean)
    if np.issubdtype(t.dtype, np.datetime64):
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_xlabel("valid time (UTC)")
    else:
        ax.set_xlabel("time")
    if not (errors < 0).any():
        ax.set_ylim(bottom=0.0)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9, fontsize=9)
    ax.set_title(title or f"{ylabel.split(' (')[0]} per forecast time", fontsize=12)
    return root_figure(ax)


def _tables(**tables: xr.DataArray | None) -> list[xr.DataArray | None]:
    """The given tables checked (dims, same forecasts and thresholds, numeric thresholds), sorted by threshold."""
    given = {name: table for name, table in tables.items() if table is not None}
    check_aligned(given, dims=("forecast", "threshold"))
    first = next(iter(given.values()))
    if first.size == 0:
        raise ConfigError(f"{' and '.join(given)} hold no forecast or no threshold: pass at least one of each.")
    if not np.issubdtype(first["threshold"].dtype, np.number):
        raise DataError(f"The threshold coordinate must be numbers (mm), got {first['threshold'].values[:3]}.")
    return [None if table is None else table.sortby("threshold") for table in tables.values()]


def _performance_background(ax: Axes) -> None:
    """Labelled CSI contours (solid) and frequency-bias lines (dashed) on the unit square."""
    grid = np.linspace(0.005, 1.0, 200)
    sr, pod = np.meshgrid(grid, grid)
    csi = 1.0 / (1.0 / sr + 1.0 / pod - 1.0)
    contours = ax.contour(sr, pod, csi, levels=CSI_LEVELS, colors="0.6", linewidths=0.8, zorder=1)
    ax.clabel(contours, fmt="%.1f", fontsize=8, inline=True)
    line = np.array([0.0, 1.0])
    for bias in BIAS_LEVELS:
        ax.plot(line, bias * line, linestyle="--", color="0.45", linewidth=0.9, zorder=1)
        if bias >= 1.0:  # leaves through the top edge
            ax.text(1.0 / bias, 1.01, f"{bias:g}", ha="center", va="bottom", fontsize=8, color="0.3")
        else:  # leaves through the right edge
            ax.text(1.01, bias, f"{bias:g}", ha="left", va="center", fontsize=8, color="0.3")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")

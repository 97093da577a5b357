"""The training figure: losses and validation RMSE per epoch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from convlstm.errors import ConfigError
from convlstm.plotting.figure import root_figure, single_axes


def plot_loss_curve(history: Sequence[dict[str, float]], *, ax: Axes | None = None) -> Figure:
    """Plot the losses and validation RMSE per epoch, so a reader sees whether training went on long past its best.

    Training and validation loss share the left axis, the validation RMSE (mm) has a twin right axis
    when the rows carry ``val_rmse_mm``, and the best epoch (lowest validation loss, the one whose
    checkpoint is kept) is marked. Raises ``ConfigError`` for an empty history or rows without a key.

    Parameters
    ----------
    history : sequence of dict
        One row per epoch with the keys ``epoch``, ``train_loss``, ``val_loss`` and optionally ``val_rmse_mm``.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The loss curve (``ax``'s figure when given).
    """
    if not history:
        raise ConfigError("Cannot plot a loss curve from an empty history: train for at least one epoch first.")
    missing = {"epoch", "train_loss", "val_loss"} - set(history[0])
    if missing:
        raise ConfigError(f"History rows need the keys epoch, train_loss, val_loss; missing {sorted(missing)}.")
    epochs = np.array([row["epoch"] for row in history], dtype=float)
    train = np.array([row["train_loss"] for row in history], dtype=float)
    val = np.array([row["val_loss"] for row in history], dtype=float)
    rmse = np.array([row.get("val_rmse_mm", np.nan) for row in history], dtype=float)
    marker = "o" if len(history) <= 30 else None  # a single epoch must still show as a point

    ax = single_axes(ax, (8.0, 4.8))
    ax.plot(epochs, train, marker=marker, color="tab:blue", label="training loss")
    ax.plot(epochs, val, marker=marker, color="tab:orange", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (normalised units)")
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)

    handles, labels = ax.get_legend_handles_labels()
    if np.isfinite(rmse).any():
        ax_rmse = ax.twinx()
        (line,) = ax_rmse.plot(epochs, rmse, marker=marker, linestyle="--", color="tab:green", label="validation RMSE (mm)")
        ax_rmse.set_ylabel("validation RMSE (mm)", color="tab:green")
        ax_rmse.tick_params(axis="y", colors="tab:green")
        handles.append(line)
        labels.append(line.get_label())

    if np.isfinite(val).any():
        best = int(np.nanargmin(val))
        vline = ax.axvline(epochs[best], color="grey", linestyle=":", linewidth=1.5,
                           label=f"best epoch {epochs[best]:g} (val loss {val[best]:.4g})")
        ax.plot(epochs[best], val[best], marker="*", markersize=14, color="tab:red", zorder=5)
        handles.append(vline)
        labels.append(vline.get_label())
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        ax.set_xticks(epochs)
    ax.legend(handles, labels, loc="upper right", framealpha=0.9)
    ax.set_title("Training history")
    return root_figure(ax)

"""Loss curve: the lines, the RMSE twin axis, the best epoch, one-epoch histories, refusals, a caller's axes."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.figure import Figure

from conftest import assert_png
from convlstm.errors import ConfigError
from convlstm.plotting import plot_loss_curve, save_figure


def _history(n: int, rmse: bool = True) -> list[dict[str, float]]:
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e + 0.05 * e, "val_rmse_mm": 3.0 / e}
            for e in range(1, n + 1)]
    return rows if rmse else [{k: v for k, v in row.items() if k != "val_rmse_mm"} for row in rows]


def test_loss_curve_lines_and_best_epoch() -> None:
    fig = plot_loss_curve(_history(8))  # val loss 1.2/e + 0.05e is lowest at epoch 5
    ax, ax_rmse = fig.axes
    assert ax.get_title() == "Training history"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "loss (normalised units)")
    assert ax_rmse.get_ylabel() == "validation RMSE (mm)"
    (rmse,) = ax_rmse.get_lines()
    assert list(rmse.get_ydata()) == pytest.approx([3.0 / e for e in range(1, 9)])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["training loss", "validation loss", "validation RMSE (mm)", "best epoch 5 (val loss 0.49)"]
    star = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(star) == 1 and list(star[0].get_xdata()) == [5.0]


def test_loss_curve_without_rmse_has_one_axis() -> None:
    fig = plot_loss_curve(_history(3, rmse=False))
    assert len(fig.axes) == 1
    assert "validation RMSE (mm)" not in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_loss_curve_of_one_epoch(tmp_path: Path) -> None:
    fig = plot_loss_curve(_history(1))
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.5, 1.5) and list(ax.get_xticks()) == [1.0]
    assert all(line.get_marker() in ("o", "*") for line in ax.get_lines() if len(line.get_xdata()) == 1)
    assert_png(save_figure(fig, tmp_path / "loss_curve.png"))


def test_loss_curve_refusals() -> None:
    with pytest.raises(ConfigError, match="empty history"):
        plot_loss_curve([])
    with pytest.raises(ConfigError, match="val_loss"):
        plot_loss_curve([{"epoch": 1, "train_loss": 1.0}])


def test_loss_curve_into_axes() -> None:
    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert plot_loss_curve(_history(4), ax=right) is fig
    assert right.get_title() == "Training history" and not left.has_data()


def test_loss_curve_into_axes_of_a_subfigure() -> None:
    fig = Figure()
    sub = fig.subfigures(1, 2)[1]
    assert plot_loss_curve(_history(2), ax=sub.add_subplot()) is fig

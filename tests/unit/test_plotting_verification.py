"""Score figures: bars, intervals and NaN handling, threshold order, the performance diagram's points, the
error series, refusals of mis-shaped tables, and drawing into a caller's axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.collections import LineCollection
from matplotlib.dates import ConciseDateFormatter
from matplotlib.figure import Figure

from conftest import assert_png
from convlstm.errors import ConfigError, DataError
from convlstm.plotting import plot_csi_bars, plot_error_by_time, plot_performance_diagram, save_figure

NAMES = ("baseline", "upstream", "persistence", "climatology")
THRESHOLDS = (0.1, 1.0, 5.0, 10.0, 20.0)
LABELS = ["≥ 0.1 mm", "≥ 1 mm", "≥ 5 mm", "≥ 10 mm", "≥ 20 mm"]


def _table(values: np.ndarray, thresholds: tuple[float, ...] = THRESHOLDS) -> xr.DataArray:
    coords = {"forecast": list(NAMES), "threshold": list(thresholds)}
    return xr.DataArray(values, dims=("forecast", "threshold"), coords=coords)


@pytest.fixture
def csi() -> xr.DataArray:
    return _table(np.array([np.linspace(0.6, 0.1, 5) - 0.05 * i for i in range(len(NAMES))]))


@pytest.fixture
def pod() -> xr.DataArray:
    return _table(np.array([[0.9 - 0.15 * j for j in range(5)] for _ in NAMES]))


@pytest.fixture
def far() -> xr.DataArray:
    return _table(np.array([[0.6 - 0.1 * i] * 5 for i in range(len(NAMES))]))


@pytest.fixture
def errors() -> xr.DataArray:
    times = pd.date_range("2021-06-01", periods=10, freq="12h")
    values = np.array([np.linspace(2.0, 3.0, 10), np.linspace(1.0, 2.0, 10)])
    values[1, 3] = np.nan  # a gap must not break the plot
    return xr.DataArray(values, dims=("forecast", "time"), coords={"forecast": ["baseline", "upstream"], "time": times})


def _errorbar_count(fig: Figure) -> int:
    return sum(len(c.get_segments()) for c in fig.axes[0].collections if isinstance(c, LineCollection))


# ----------------------------------------------------------------------------------------------------
# CSI bars
# ----------------------------------------------------------------------------------------------------


def test_csi_bars_layout(csi: xr.DataArray) -> None:
    fig = plot_csi_bars(csi, csi - 0.05, csi + 0.04)
    (ax,) = fig.axes
    assert len(ax.patches) == len(NAMES) * len(THRESHOLDS)
    assert _errorbar_count(fig) == len(NAMES) * len(THRESHOLDS)
    assert ax.get_ylim() == (0.0, 1.0)
    assert ax.get_ylabel() == "CSI (critical success index)"
    assert ax.get_title() == "CSI per threshold"
    assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
    (legend,) = fig.legends  # under the plot, outside the axes
    assert [t.get_text() for t in legend.get_texts()] == list(NAMES) and ax.get_legend() is None
    upstream = [p for p in ax.patches if p.get_facecolor()[:3] == pytest.approx((0.122, 0.467, 0.706), abs=1e-3)]
    assert [p.get_height() for p in upstream] == pytest.approx(csi.sel(forecast="upstream").values)


def test_csi_bars_nan_values_are_missing_bars(csi: xr.DataArray) -> None:
    low, high = csi - 0.05, csi + 0.04
    csi.loc["climatology", 20.0] = np.nan
    csi.loc["climatology", 10.0] = np.nan
    csi.loc["baseline", 1.0] = np.nan
    low.loc["persistence", 5.0] = np.nan  # value without an interval: bar, no error bar
    fig = plot_csi_bars(csi, low, high, title="CSI")
    (ax,) = fig.axes
    assert len(ax.patches) == len(NAMES) * len(THRESHOLDS) - 3
    assert sum(t.get_text() == "n/a" for t in ax.texts) == 3
    assert _errorbar_count(fig) == len(NAMES) * len(THRESHOLDS) - 4
    assert ax.get_title() == "CSI"
    assert len(plot_csi_bars(csi * np.nan).axes[0].patches) == 0


def test_csi_bars_without_bounds_and_in_threshold_order(csi: xr.DataArray) -> None:
    fig = plot_csi_bars(csi.isel(threshold=[3, 0, 4, 2, 1]))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == LABELS
    assert _errorbar_count(fig) == 0


def test_csi_bars_refusals(csi: xr.DataArray) -> None:
    with pytest.raises(DataError, match="dims"):
        plot_csi_bars(csi.T)
    with pytest.raises(DataError, match="threshold"):
        plot_csi_bars(csi, low=csi.isel(threshold=slice(1, None)), high=csi)
    with pytest.raises(DataError, match="numbers"):
        plot_csi_bars(csi.assign_coords(threshold=[f"{t:g}mm" for t in THRESHOLDS]))
    with pytest.raises(ConfigError, match="no forecast or no threshold"):
        plot_csi_bars(csi.isel(forecast=slice(0, 0)))


def test_csi_bars_into_axes(csi: xr.DataArray) -> None:
    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert plot_csi_bars(csi, title="mine", ax=left) is fig
    assert fig.legends == [] and left.get_legend() is not None  # the caller's figure is not laid out by us
    assert left.get_title() == "mine" and not right.has_data()


# ----------------------------------------------------------------------------------------------------
# Performance diagram
# ----------------------------------------------------------------------------------------------------


def test_performance_diagram_layout(pod: xr.DataArray, far: xr.DataArray) -> None:
    fig = plot_performance_diagram(pod, far)
    (ax,) = fig.axes
    assert ax.get_xlim() == (0.0, 1.0) and ax.get_ylim() == (0.0, 1.0)
    assert ax.get_xlabel() == "success ratio (1 − FAR)" and "POD" in ax.get_ylabel()
    assert fig.get_suptitle() == "Performance diagram"
    upstream = next(line for line in ax.get_lines() if line.get_label() == "upstream")
    assert list(upstream.get_xdata()) == pytest.approx(1.0 - far.sel(forecast="upstream").values)
    assert list(upstream.get_ydata()) == pytest.approx(pod.sel(forecast="upstream").values)
    annotations = [t.get_text() for t in ax.texts if t.get_text().endswith(" mm")]
    assert annotations[:5] == ["0.1 mm", "1 mm", "5 mm", "10 mm", "20 mm"]
    assert len(annotations) == len(NAMES) * len(THRESHOLDS)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()][-2:] == ["CSI (contours)", "frequency bias (POD / SR)"]


def test_performance_diagram_joins_points_in_threshold_order(pod: xr.DataArray, far: xr.DataArray) -> None:
    order = [4, 1, 0, 3, 2]
    fig = plot_performance_diagram(pod.isel(threshold=order), far.isel(threshold=order))
    upstream = next(line for line in fig.axes[0].get_lines() if line.get_label() == "upstream")
    assert np.all(np.diff(upstream.get_ydata()) < 0)  # POD falls with the threshold here


def test_performance_diagram_skips_nan_points(pod: xr.DataArray, far: xr.DataArray) -> None:
    far.loc["climatology", 20.0] = np.nan
    pod.loc["climatology", 10.0] = np.nan
    pod.loc["persistence"] = np.nan
    (ax,) = plot_performance_diagram(pod, far).axes
    clim = next(line for line in ax.get_lines() if line.get_label() == "climatology")
    assert len(clim.get_xdata()) == len(THRESHOLDS) - 2 and np.isfinite(clim.get_xydata()).all()
    assert any(line.get_label() == "persistence (no finite points)" for line in ax.get_lines())
    assert len([t for t in ax.texts if t.get_text().endswith(" mm")]) == 3 * len(THRESHOLDS) - 2


def test_performance_diagram_refusals(pod: xr.DataArray, far: xr.DataArray) -> None:
    with pytest.raises(DataError, match="pod and far differ in forecast: 4 values baseline .. climatology vs "
                                         "4 values upstream .. climatology"):
        plot_performance_diagram(pod, far.isel(forecast=[1, 0, 2, 3]))
    with pytest.raises(DataError, match="dims"):
        plot_performance_diagram(pod.isel(threshold=0), far.isel(threshold=0))


def test_performance_diagram_into_axes(pod: xr.DataArray, far: xr.DataArray) -> None:
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_performance_diagram(pod, far, title="POD vs SR", ax=ax) is fig
    assert ax.get_title() == "POD vs SR" and fig.get_suptitle() == ""
    assert fig.legends == [] and ax.get_legend() is not None


# ----------------------------------------------------------------------------------------------------
# Error by time
# ----------------------------------------------------------------------------------------------------


def test_error_by_time_lines(errors: xr.DataArray) -> None:
    fig = plot_error_by_time(errors)
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["baseline (mean 2.50 mm)", "upstream (mean 1.52 mm)"]
    assert isinstance(ax.xaxis.get_major_formatter(), ConciseDateFormatter)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("valid time (UTC)", "RMSE (mm)")
    assert ax.get_title() == "RMSE per forecast time" and ax.get_ylim()[0] == 0.0


def test_error_by_time_sorts_time_and_names_other_scores(errors: xr.DataArray) -> None:
    fig = plot_error_by_time(errors.isel(time=slice(None, None, -1)) - 2.5, title="bias", ylabel="bias (mm)")
    (ax,) = fig.axes
    baseline = ax.get_lines()[0]
    assert np.all(np.diff(baseline.get_xdata().astype("datetime64[ns]").astype(np.int64)) > 0)
    assert ax.get_title() == "bias" and ax.get_ylim()[0] < 0.0  # negative values keep their range


def test_error_by_time_refusals(errors: xr.DataArray) -> None:
    with pytest.raises(DataError, match="dims"):
        plot_error_by_time(errors.isel(forecast=0))
    with pytest.raises(ConfigError, match="no forecast"):
        plot_error_by_time(errors.isel(forecast=slice(0, 0)))


def test_error_by_time_into_axes(errors: xr.DataArray) -> None:
    fig = Figure()
    top, bottom = fig.subplots(2, 1)
    assert plot_error_by_time(errors, ax=bottom) is fig
    assert len(bottom.get_lines()) == 2 and not top.has_data()


def test_score_figures_save_as_png(tmp_path: Path, csi: xr.DataArray, pod: xr.DataArray, far: xr.DataArray,
                                   errors: xr.DataArray) -> None:
    for name, fig in {"csi": plot_csi_bars(csi), "performance": plot_performance_diagram(pod, far),
                      "errors": plot_error_by_time(errors)}.items():
        assert_png(save_figure(fig, tmp_path / f"{name}.png"))

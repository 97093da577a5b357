"""Comparison figures: valid PNGs written atomically, axes counts, NaN handling, refusal of misaligned inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.dates import ConciseDateFormatter
from matplotlib.figure import Figure

from tests.helpers import assert_png
from convlstm.plots import (
    UPSTREAM_BETTER,
    _build_case_maps,
    _build_csi_bars,
    _build_difference_map,
    _build_error_by_time,
    _build_performance_diagram,
    plot_case_maps,
    plot_csi_bars,
    plot_difference_map,
    plot_error_by_time,
    plot_performance_diagram,
)

LAT = np.arange(30.0, 34.0, 0.5)
LON = np.arange(115.0, 119.0, 0.5)
NAMES = ("baseline", "upstream", "persistence", "climatology")
THRESHOLDS = ("0.1mm", "1mm", "5mm", "10mm", "20mm")


def _field(n_time: int = 10, seed: int = 0, name: str = "precipitation") -> xr.DataArray:
    rng = np.random.default_rng(seed)
    shape = (n_time, len(LAT), len(LON))
    values = np.where(rng.random(shape) < 0.5, 0.0, rng.gamma(1.0, 5.0, shape)).astype(np.float32)
    coords = {"time": pd.date_range("2021-06-01", periods=n_time, freq="12h"), "lat": LAT, "lon": LON}
    return xr.DataArray(values, dims=("time", "lat", "lon"), coords=coords, name=name)


@pytest.fixture
def truth() -> xr.DataArray:
    return _field()


@pytest.fixture
def forecasts(truth: xr.DataArray) -> dict[str, xr.DataArray]:
    return {"baseline": (truth * 0.7 + 0.3).rename("baseline"), "upstream": (truth * 0.9 + 0.1).rename("upstream")}


@pytest.fixture
def csi() -> dict[str, dict[str, tuple[float, float, float]]]:
    table = {}
    for i, name in enumerate(NAMES):
        table[name] = {t: (v, max(v - 0.05, 0.0), v + 0.04) for t, v in zip(THRESHOLDS, np.linspace(0.6, 0.1, 5) - 0.05 * i)}
    return table


@pytest.fixture
def points() -> dict[str, dict[str, tuple[float, float]]]:
    return {name: {t: (0.4 + 0.1 * i, 0.9 - 0.15 * j) for j, t in enumerate(THRESHOLDS)} for i, name in enumerate(NAMES)}


def _maps(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


# ----------------------------------------------------------------------------------------------------
# Difference map
# ----------------------------------------------------------------------------------------------------


def test_difference_map_writes_png(tmp_path: Path, truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    diff = np.sqrt(((forecasts["upstream"] - truth) ** 2).mean("time")) - np.sqrt(((forecasts["baseline"] - truth) ** 2).mean("time"))
    out = plot_difference_map(diff, tmp_path / "rmse_difference_map.png")
    assert out == tmp_path / "rmse_difference_map.png"
    assert_png(out)


def test_difference_map_is_symmetric_and_says_which_side_is_better(truth: xr.DataArray) -> None:
    diff = truth.isel(time=0) - 3.0  # mostly negative, skewed
    fig = _build_difference_map(diff, "RMSE difference (upstream − baseline)", "RMSE difference (mm)")
    assert len(fig.axes) == 2  # map + colour bar
    (mesh,) = [c for c in _maps(fig)[0].collections if isinstance(c, QuadMesh)]
    assert mesh.norm.vmin == pytest.approx(-mesh.norm.vmax)
    assert mesh.get_cmap().name == "RdBu_r"
    colorbar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert UPSTREAM_BETTER in colorbar.get_xlabel()
    assert "mm" in colorbar.get_xlabel()
    assert "upstream better in" in _maps(fig)[0].get_title()


def test_difference_map_of_zeros_and_single_time(tmp_path: Path, truth: xr.DataArray) -> None:
    assert_png(plot_difference_map(xr.zeros_like(truth.isel(time=[0])), tmp_path / "zeros.png"))
    with pytest.raises(ValueError, match="one time"):
        plot_difference_map(truth, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# ----------------------------------------------------------------------------------------------------
# Case maps
# ----------------------------------------------------------------------------------------------------


def test_case_maps_write_png(tmp_path: Path, truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    assert_png(plot_case_maps(truth, forecasts, tmp_path / "case_maps.png", title="cases"))


@pytest.mark.parametrize(("max_times", "rows"), [(1, 1), (3, 3), (50, 10)])
def test_case_maps_axes(truth: xr.DataArray, forecasts: dict[str, xr.DataArray], max_times: int, rows: int) -> None:
    fig = _build_case_maps(truth, forecasts, None, max_times, "")
    assert len(_maps(fig)) == rows * 3  # truth + two forecasts per row
    assert len(fig.axes) == rows * 3 + 1  # plus one shared colour bar
    norms = {(c.norm.vmin, c.norm.vmax) for ax in _maps(fig) for c in ax.collections if isinstance(c, QuadMesh)}
    assert len(norms) == 1 and next(iter(norms))[0] == 0.0


def test_case_maps_pick_wettest_times_in_order(truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    truth = truth.copy()
    truth[:] = 0.0
    for i, amount in ((7, 5.0), (2, 9.0), (5, 1.0)):
        truth[i] = amount
    fig = _build_case_maps(truth, {k: f.copy(data=truth.values) for k, f in forecasts.items()}, None, 2, "")
    labels = [ax.get_ylabel().splitlines()[0] for ax in _maps(fig) if "UTC" in ax.get_ylabel()]
    stamps = [pd.Timestamp(t).strftime("%Y-%m-%d %H:%M UTC") for t in truth.time.values]
    assert labels == [stamps[2], stamps[7]]


def test_case_maps_explicit_times(truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    fig = _build_case_maps(truth, forecasts, [truth.time.values[4], truth.time.values[1]], 3, "")
    labels = [ax.get_ylabel().splitlines()[0] for ax in _maps(fig) if "UTC" in ax.get_ylabel()]
    assert labels == [pd.Timestamp(truth.time.values[i]).strftime("%Y-%m-%d %H:%M UTC") for i in (1, 4)]
    with pytest.raises(ValueError, match="not in the truth"):
        _build_case_maps(truth, forecasts, [np.datetime64("1999-01-01")], 3, "")


@pytest.mark.parametrize("change", ["lon", "lat", "time", "shorter"])
def test_case_maps_refuse_misaligned(tmp_path: Path, truth: xr.DataArray, forecasts: dict[str, xr.DataArray], change: str) -> None:
    bad = forecasts["upstream"]
    if change == "lon":
        bad = bad.assign_coords(lon=bad.lon + 0.25)
    elif change == "lat":
        bad = bad.assign_coords(lat=bad.lat - 0.5)
    elif change == "time":
        bad = bad.assign_coords(time=bad.time + np.timedelta64(12, "h"))
    else:
        bad = bad.isel(time=slice(1, None))
    target = tmp_path / "case_maps.png"
    with pytest.raises(ValueError, match="forecast 'upstream' is not on the truth's"):
        plot_case_maps(truth, {"baseline": forecasts["baseline"], "upstream": bad}, target)
    assert list(tmp_path.iterdir()) == []


def test_case_maps_refuse_bad_arguments(truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    with pytest.raises(ValueError, match="max_times"):
        _build_case_maps(truth, forecasts, None, 0, "")
    with pytest.raises(ValueError, match="empty"):
        _build_case_maps(truth, {}, None, 3, "")
    with pytest.raises(ValueError, match="dims"):
        _build_case_maps(truth.isel(time=0), forecasts, None, 3, "")


# ----------------------------------------------------------------------------------------------------
# CSI bars
# ----------------------------------------------------------------------------------------------------


def test_csi_bars_write_png(tmp_path: Path, csi: dict) -> None:
    assert_png(plot_csi_bars(csi, tmp_path / "csi_bars.png", title="CSI"))


def test_csi_bars_layout(csi: dict) -> None:
    fig = _build_csi_bars(csi, "")
    assert len(fig.axes) == 1
    (ax,) = fig.axes
    assert len(ax.patches) == len(NAMES) * len(THRESHOLDS)
    assert ax.get_ylim() == (0.0, 1.0)
    assert ax.get_ylabel() == "CSI (critical success index)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["≥ 0.1 mm", "≥ 1 mm", "≥ 5 mm", "≥ 10 mm", "≥ 20 mm"]


def test_csi_bars_nan_values_are_missing_bars(tmp_path: Path, csi: dict) -> None:
    csi["climatology"]["20mm"] = (np.nan, np.nan, np.nan)
    csi["climatology"]["10mm"] = (float("nan"), 0.1, 0.2)
    csi["persistence"]["5mm"] = (0.3, np.nan, np.nan)  # value without an interval: bar, no error bar
    del csi["baseline"]["1mm"]  # threshold missing for one forecast
    fig = _build_csi_bars(csi, "")
    (ax,) = fig.axes
    assert len(ax.patches) == len(NAMES) * len(THRESHOLDS) - 3
    assert sum(t.get_text() == "n/a" for t in ax.texts) == 3
    assert_png(plot_csi_bars(csi, tmp_path / "csi_nan.png"))
    all_nan = {name: {t: (np.nan, np.nan, np.nan) for t in THRESHOLDS} for name in NAMES}
    assert_png(plot_csi_bars(all_nan, tmp_path / "csi_all_nan.png"))


def test_csi_bars_threshold_order_and_bad_input(csi: dict) -> None:
    shuffled = {name: dict(reversed(list(inner.items()))) for name, inner in csi.items()}
    (ax,) = _build_csi_bars(shuffled, "").axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["≥ 0.1 mm", "≥ 1 mm", "≥ 5 mm", "≥ 10 mm", "≥ 20 mm"]
    with pytest.raises(ValueError, match=r"\(value, low, high\)"):
        _build_csi_bars({"baseline": {"1mm": (0.5, 0.4)}}, "")
    with pytest.raises(ValueError, match="empty"):
        _build_csi_bars({}, "")


# ----------------------------------------------------------------------------------------------------
# Performance diagram
# ----------------------------------------------------------------------------------------------------


def test_performance_diagram_writes_png(tmp_path: Path, points: dict) -> None:
    assert_png(plot_performance_diagram(points, tmp_path / "performance_diagram.png", title="POD vs SR"))


def test_performance_diagram_layout(points: dict) -> None:
    fig = _build_performance_diagram(points, "")
    assert len(fig.axes) == 1
    (ax,) = fig.axes
    assert ax.get_xlim() == (0.0, 1.0) and ax.get_ylim() == (0.0, 1.0)
    assert "success ratio" in ax.get_xlabel() and "POD" in ax.get_ylabel()
    upstream = next(line for line in ax.get_lines() if line.get_label() == "upstream")
    assert len(upstream.get_xdata()) == len(THRESHOLDS)
    assert np.all(np.diff(upstream.get_ydata()) < 0)  # joined in threshold order (POD falls with threshold here)
    annotations = [t for t in ax.texts if t.get_text().endswith(" mm")]
    assert len(annotations) == len(NAMES) * len(THRESHOLDS)


def test_performance_diagram_skips_nan_points(tmp_path: Path, points: dict) -> None:
    points["climatology"]["20mm"] = (np.nan, 0.0)
    points["climatology"]["10mm"] = (np.nan, np.nan)
    points["persistence"] = {t: (np.nan, np.nan) for t in THRESHOLDS}
    fig = _build_performance_diagram(points, "")
    (ax,) = fig.axes
    clim = next(line for line in ax.get_lines() if line.get_label() == "climatology")
    assert len(clim.get_xdata()) == len(THRESHOLDS) - 2
    assert np.isfinite(clim.get_xydata()).all()
    assert len([t for t in ax.texts if t.get_text().endswith(" mm")]) == 2 * len(THRESHOLDS) + len(THRESHOLDS) - 2
    assert_png(plot_performance_diagram(points, tmp_path / "performance_nan.png"))
    with pytest.raises(ValueError, match="success_ratio, pod"):
        _build_performance_diagram({"baseline": {"1mm": (0.5,)}}, "")


# ----------------------------------------------------------------------------------------------------
# Error by time
# ----------------------------------------------------------------------------------------------------


def test_error_by_time_writes_png(tmp_path: Path, truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    errors = {name: np.sqrt(((f - truth) ** 2).mean(["lat", "lon"])) for name, f in forecasts.items()}
    errors["upstream"][3] = np.nan  # a gap must not break the plot
    out = plot_error_by_time(errors, tmp_path / "error_by_time.png")
    assert_png(out)
    fig = _build_error_by_time(errors, "", "RMSE (mm)")
    assert len(fig.axes) == 1
    (ax,) = fig.axes
    assert [line.get_label().split(" (")[0] for line in ax.get_lines()] == list(forecasts)
    assert isinstance(ax.xaxis.get_major_formatter(), ConciseDateFormatter)
    assert ax.get_ylabel() == "RMSE (mm)"


def test_error_by_time_refuses_maps(tmp_path: Path, truth: xr.DataArray) -> None:
    with pytest.raises(ValueError, match="1-D DataArray"):
        plot_error_by_time({"baseline": truth}, tmp_path / "e.png")
    with pytest.raises(ValueError, match="empty"):
        plot_error_by_time({}, tmp_path / "e.png")
    assert list(tmp_path.iterdir()) == []

"""Maps: panels, shared colour scales, the downstream box, row selection, refusals, drawing into a caller's
figure or axes, and save_figure's atomic PNG."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from conftest import assert_png
from convlstm.errors import ConfigError, DataError
from convlstm.plotting import (
    plot_case_maps,
    plot_difference_map,
    plot_precipitation_maps,
    plot_prediction_map,
    save_figure,
)

BOX = (25.0, 40.0, 110.0, 125.0)
LAT = np.arange(25.0, 41.0, 3.0)
LON = np.arange(70.0, 126.0, 5.0)


def _precip(n_time: int = 6, lat: np.ndarray = LAT, lon: np.ndarray = LON, seed: int = 0,
            start: str = "2000-01-01") -> xr.DataArray:
    rng = np.random.default_rng(seed)
    shape = (n_time, len(lat), len(lon))
    values = np.where(rng.random(shape) < 0.5, 0.0, rng.gamma(1.0, 5.0, shape)).astype(np.float32)
    coords = {"time": pd.date_range(start, periods=n_time, freq="12h"), "lat": lat, "lon": lon}
    return xr.DataArray(values, dims=("time", "lat", "lon"), coords=coords, name="precipitation")


@pytest.fixture
def observed() -> xr.DataArray:
    return _precip()


@pytest.fixture
def predicted(observed: xr.DataArray) -> xr.DataArray:
    return (observed.sel(lon=slice(110.0, 125.0)) * 0.8 + 0.5).rename("predicted")


@pytest.fixture
def truth() -> xr.DataArray:
    return _precip(10, lat=np.arange(30.0, 34.0, 0.5), lon=np.arange(115.0, 119.0, 0.5), start="2021-06-01")


@pytest.fixture
def forecasts(truth: xr.DataArray) -> dict[str, xr.DataArray]:
    return {"baseline": truth * 0.7 + 0.3, "upstream": truth + 1.0}


def _maps(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _mesh(ax: Axes) -> QuadMesh:
    (mesh,) = [c for c in ax.collections if isinstance(c, QuadMesh)]
    return mesh


def _row_times(fig: Figure) -> list[str]:
    return [ax.get_ylabel().splitlines()[0] for ax in _maps(fig) if "UTC" in ax.get_ylabel()]


def _stamp(time: object) -> str:
    return pd.Timestamp(time).strftime("%Y-%m-%d %H:%M UTC")


def _has_box(ax: Axes) -> bool:
    return sum(isinstance(p, Rectangle) and not p.get_fill() for p in ax.patches) == 2 and \
        any(t.get_text() == "downstream" for t in ax.texts)


# ----------------------------------------------------------------------------------------------------
# Precipitation maps (training)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("max_times", "rows"), [(1, 1), (4, 4), (10, 6)])
def test_precipitation_maps_rows_and_colour_bars(observed: xr.DataArray, predicted: xr.DataArray, max_times: int,
                                                 rows: int) -> None:
    fig = plot_precipitation_maps(observed, predicted, BOX, title="upstream", max_times=max_times)
    assert len(_maps(fig)) == 3 * rows
    assert len(fig.axes) == 3 * rows + 2  # plus the precipitation and error colour bars
    assert fig.get_suptitle() == "upstream"
    assert [ax.get_title() for ax in _maps(fig)[:3]] == ["observed (input grid)", "predicted (downstream)",
                                                         "error: predicted − observed"]


def test_precipitation_maps_colour_scales_and_box(observed: xr.DataArray, predicted: xr.DataArray) -> None:
    fig = plot_precipitation_maps(observed, predicted, BOX, max_times=2)
    assert fig.get_suptitle() == "Observed and predicted precipitation"
    maps = _maps(fig)
    precip = [_mesh(ax) for i, ax in enumerate(maps) if i % 3 != 2]
    assert {(m.norm.vmin, m.norm.vmax) for m in precip} == {(0.0, precip[0].norm.vmax)}
    assert precip[0].norm.vmax >= 1.0 and precip[0].get_cmap().name == "Blues"
    error = _mesh(maps[2])
    assert error.get_cmap().name == "RdBu_r" and error.norm.vmin == pytest.approx(-error.norm.vmax)
    assert [_has_box(ax) for ax in maps] == [True, False, False] * 2
    labels = {ax.get_xlabel() for ax in fig.axes if ax.get_label() == "<colorbar>"}
    assert labels == {"precipitation (mm per 12 h)", "error (mm)"}


def test_precipitation_maps_downstream_only_input(observed: xr.DataArray, predicted: xr.DataArray) -> None:
    """The baseline's input grid is the downstream region itself."""
    fig = plot_precipitation_maps(observed.sel(lon=slice(110.0, 125.0)), predicted, BOX, max_times=2)
    assert len(fig.axes) == 3 * 2 + 2


def test_rows_are_wet_and_in_time_order(observed: xr.DataArray, predicted: xr.DataArray) -> None:
    observed = observed.copy()
    observed[:, :, :] = 0.0
    observed[4, :, -1] = 20.0  # only time 4 rains in the downstream region
    fig = plot_precipitation_maps(observed, predicted.sel(time=observed.time[1:]), BOX, max_times=2)
    labels = _row_times(fig)
    assert _stamp(observed.time.values[4]) in labels
    assert labels == sorted(labels) and len(labels) == 2
    assert _stamp(observed.time.values[0]) not in labels  # predicted lacks the first time


def test_precipitation_maps_error_is_predicted_minus_observed(observed: xr.DataArray, predicted: xr.DataArray) -> None:
    fig = plot_precipitation_maps(observed, predicted.isel(time=[3]), BOX)
    error = _mesh(_maps(fig)[2]).get_array()
    expected = (predicted.isel(time=3) - observed.isel(time=3).sel(lon=predicted.lon)).values
    np.testing.assert_allclose(np.asarray(error).reshape(expected.shape), expected, rtol=1e-6)


def test_precipitation_maps_refusals(observed: xr.DataArray, predicted: xr.DataArray) -> None:
    with pytest.raises(DataError, match="lon"):
        plot_precipitation_maps(observed, predicted.assign_coords(lon=predicted.lon + 2.5), BOX)
    with pytest.raises(DataError, match="lon"):
        plot_precipitation_maps(observed, _precip(lon=np.arange(110.0, 131.0, 5.0)), BOX)
    with pytest.raises(DataError, match="share no time"):
        plot_precipitation_maps(observed, predicted.assign_coords(time=predicted.time + np.timedelta64(30, "D")), BOX)
    with pytest.raises(DataError, match="dims"):
        plot_precipitation_maps(observed.isel(time=0), predicted, BOX)
    with pytest.raises(ConfigError, match="max_times"):
        plot_precipitation_maps(observed, predicted, BOX, max_times=0)


def test_precipitation_maps_into_a_subfigure(observed: xr.DataArray, predicted: xr.DataArray) -> None:
    fig = Figure(layout="constrained")
    left, right = fig.subfigures(1, 2)
    assert plot_precipitation_maps(observed, predicted, BOX, title="left", max_times=2, fig=left) is fig
    assert len(left.axes) == 3 * 2 + 2 and right.axes == []
    assert left.get_suptitle() == "left" and fig.get_suptitle() == ""


# ----------------------------------------------------------------------------------------------------
# Prediction map (inference)
# ----------------------------------------------------------------------------------------------------


def test_prediction_map_alone(predicted: xr.DataArray) -> None:
    fig = plot_prediction_map(predicted.isel(time=1), downstream_box=BOX, title="forecast")
    assert len(fig.axes) == 2  # map + colour bar
    (ax,) = _maps(fig)
    assert ax.get_title() == f"predicted, {_stamp(predicted.time.values[1])}"
    assert fig.get_suptitle() == "forecast" and _has_box(ax)


def test_prediction_map_beside_observed(observed: xr.DataArray, predicted: xr.DataArray) -> None:
    fig = plot_prediction_map(predicted.isel(time=[2]), observed=observed.isel(time=[1]), downstream_box=BOX)
    assert fig.get_suptitle() == "Precipitation forecast"
    obs_ax, pred_ax = _maps(fig)
    assert obs_ax.get_title() == f"observed, {_stamp(observed.time.values[1])}"
    assert pred_ax.get_title() == f"predicted, {_stamp(predicted.time.values[2])}"
    assert _has_box(obs_ax) and not _has_box(pred_ax)
    assert _mesh(obs_ax).norm is _mesh(pred_ax).norm and _mesh(obs_ax).norm.vmin == 0.0


def test_prediction_map_refuses_several_times(predicted: xr.DataArray) -> None:
    with pytest.raises(DataError, match="one time"):
        plot_prediction_map(predicted)


def test_prediction_map_into_a_figure(predicted: xr.DataArray) -> None:
    fig = Figure()
    assert plot_prediction_map(predicted.isel(time=0), fig=fig) is fig
    assert len(fig.axes) == 2


# ----------------------------------------------------------------------------------------------------
# Difference map (comparison)
# ----------------------------------------------------------------------------------------------------


def test_difference_map_is_symmetric_and_says_which_side_is_better(truth: xr.DataArray) -> None:
    diff = truth.isel(time=0) - 3.0  # mostly negative, skewed
    fig = plot_difference_map(diff)
    assert len(fig.axes) == 2  # map + colour bar
    (ax,) = _maps(fig)
    mesh = _mesh(ax)
    assert mesh.norm.vmin == pytest.approx(-mesh.norm.vmax) and mesh.norm.vmax > 1.0
    assert mesh.get_cmap().name == "RdBu_r"
    colorbar = next(ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert colorbar.get_xlabel().startswith("RMSE difference (mm)\n← upstream better")
    share = 100 * float((diff < 0).mean())
    assert ax.get_title().startswith("mean −") and f"upstream better in {share:.0f} %" in ax.get_title()
    assert fig.get_suptitle() == "RMSE difference (upstream − baseline)"


def test_difference_map_of_zeros_and_single_time(truth: xr.DataArray) -> None:
    mesh = _mesh(_maps(plot_difference_map(xr.zeros_like(truth.isel(time=[0])), label="CSI difference"))[0])
    assert (mesh.norm.vmin, mesh.norm.vmax) == pytest.approx((-0.01, 0.01))
    with pytest.raises(DataError, match="one time"):
        plot_difference_map(truth)


def test_difference_map_into_axes(truth: xr.DataArray) -> None:
    fig = Figure()
    left, right = fig.subplots(1, 2)
    assert plot_difference_map(truth.isel(time=0) - 3.0, title="RMSE", ax=right) is fig
    assert right.get_title().startswith("RMSE\nmean −") and not left.has_data()
    assert fig.get_suptitle() == ""  # the caller's figure keeps its own title


# ----------------------------------------------------------------------------------------------------
# Case maps (comparison)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("max_times", "rows"), [(1, 1), (3, 3), (50, 10)])
def test_case_maps_panels_share_one_scale(truth: xr.DataArray, forecasts: dict[str, xr.DataArray], max_times: int,
                                          rows: int) -> None:
    fig = plot_case_maps(truth, forecasts, max_times=max_times)
    assert len(_maps(fig)) == rows * 3  # truth + two forecasts per row
    assert len(fig.axes) == rows * 3 + 1  # plus one shared colour bar
    norms = {(_mesh(ax).norm.vmin, _mesh(ax).norm.vmax) for ax in _maps(fig)}
    assert len(norms) == 1 and next(iter(norms))[0] == 0.0
    assert [ax.get_title() for ax in _maps(fig)[:3]] == ["truth (observed)", "baseline", "upstream"]
    assert fig.get_suptitle() == "Truth and forecasts, wettest times"


def test_case_maps_note_each_forecasts_rmse(truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    fig = plot_case_maps(truth, forecasts, max_times=2)
    notes = [[t.get_text() for t in ax.texts] for ax in _maps(fig)]
    assert notes[0] == [] and notes[2] == ["RMSE 1.00 mm"] and notes[5] == ["RMSE 1.00 mm"]  # upstream = truth + 1
    assert notes[1][0].startswith("RMSE ") and notes[1] != notes[2]


def test_case_maps_pick_wettest_times_in_order(truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    truth = truth.copy()
    truth[:] = 0.0
    for i, amount in ((7, 5.0), (2, 9.0), (5, 1.0)):
        truth[i] = amount
    fig = plot_case_maps(truth, {k: f.copy(data=truth.values) for k, f in forecasts.items()}, max_times=2)
    assert _row_times(fig) == [_stamp(truth.time.values[2]), _stamp(truth.time.values[7])]


def test_case_maps_explicit_times(truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    fig = plot_case_maps(truth, forecasts, times=[truth.time.values[4], truth.time.values[1]], title="cases")
    assert _row_times(fig) == [_stamp(truth.time.values[i]) for i in (1, 4)]
    assert fig.get_suptitle() == "cases"
    with pytest.raises(ConfigError, match="not in the truth"):
        plot_case_maps(truth, forecasts, times=[np.datetime64("1999-01-01")])
    with pytest.raises(ConfigError, match="times is empty"):
        plot_case_maps(truth, forecasts, times=[])


@pytest.mark.parametrize("change", ["lon", "lat", "time", "shorter"])
def test_case_maps_refuse_misaligned(truth: xr.DataArray, forecasts: dict[str, xr.DataArray], change: str) -> None:
    bad = forecasts["upstream"]
    if change == "lon":
        bad = bad.assign_coords(lon=bad.lon + 0.25)
    elif change == "lat":
        bad = bad.assign_coords(lat=bad.lat - 0.5)
    elif change == "time":
        bad = bad.assign_coords(time=bad.time + np.timedelta64(12, "h"))
    else:
        bad = bad.isel(time=slice(1, None))
    with pytest.raises(DataError, match=f"truth and upstream differ in {'time' if change == 'shorter' else change}"):
        plot_case_maps(truth, {"baseline": forecasts["baseline"], "upstream": bad})


def test_case_maps_refuse_bad_arguments(truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    with pytest.raises(ConfigError, match="max_times"):
        plot_case_maps(truth, forecasts, max_times=0)
    with pytest.raises(ConfigError, match="empty"):
        plot_case_maps(truth, {})
    with pytest.raises(DataError, match="dims"):
        plot_case_maps(truth.isel(time=0), forecasts)


def test_case_maps_into_a_subfigure(truth: xr.DataArray, forecasts: dict[str, xr.DataArray]) -> None:
    fig = Figure()
    top, bottom = fig.subfigures(2, 1)
    assert plot_case_maps(truth, forecasts, max_times=2, fig=bottom) is fig
    assert len(bottom.axes) == 2 * 3 + 1 and top.axes == []


# ----------------------------------------------------------------------------------------------------
# save_figure
# ----------------------------------------------------------------------------------------------------


def test_save_figure_writes_png_atomically(tmp_path: Path, predicted: xr.DataArray) -> None:
    target = tmp_path / "new" / "figure.png"
    assert save_figure(plot_prediction_map(predicted.isel(time=0)), target) == target
    assert_png(target)
    first = target.read_bytes()
    assert save_figure(plot_prediction_map(predicted.isel(time=1), title="another"), str(target)) == target
    assert_png(target)
    assert target.read_bytes() != first


def test_save_figure_failure_keeps_the_old_file(tmp_path: Path, predicted: xr.DataArray,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "figure.png"
    target.write_bytes(b"old content")
    fig = plot_prediction_map(predicted.isel(time=0))

    def fail(path: Path, **kwargs: object) -> None:
        Path(path).write_bytes(b"half a PNG")
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, target)
    assert target.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_threads_do_not_interfere(tmp_path: Path, observed: xr.DataArray, predicted: xr.DataArray) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            fig = plot_prediction_map(predicted.isel(time=i), observed=observed.isel(time=i), downstream_box=BOX)
            save_figure(fig, tmp_path / f"p{i}.png")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(3):
        assert_png(tmp_path / f"p{i}.png")

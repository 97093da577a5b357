"""Figures: valid PNGs written atomically, one-epoch histories, row selection, refusal of misaligned grids."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.helpers import assert_png
from convlstm.data.schema import CF_ATTRS, PRECIPITATION
from convlstm.plots import (
    _build_precipitation_maps,
    _build_prediction_map,
    plot_loss_curve,
    plot_precipitation_maps,
    plot_prediction_map,
)

BOX = (25.0, 40.0, 110.0, 125.0)
LAT = np.arange(25.0, 41.0, 3.0)
LON = np.arange(70.0, 126.0, 5.0)


def _precip(n_time: int = 6, lon: np.ndarray = LON, lat: np.ndarray = LAT, seed: int = 0, start: str = "2000-01-01") -> xr.DataArray:
    rng = np.random.default_rng(seed)
    shape = (n_time, len(lat), len(lon))
    values = np.where(rng.random(shape) < 0.5, 0.0, rng.gamma(1.0, 5.0, shape)).astype(np.float32)
    coords = {"time": pd.date_range(start, periods=n_time, freq="12h"), "lat": lat, "lon": lon}
    return xr.DataArray(values, dims=("time", "lat", "lon"), coords=coords, name=PRECIPITATION, attrs=CF_ATTRS[PRECIPITATION])


@pytest.fixture
def observed() -> xr.DataArray:
    return _precip()


@pytest.fixture
def predicted(observed: xr.DataArray) -> xr.DataArray:
    return (observed.sel(lon=slice(110.0, 125.0)) * 0.8 + 0.5).rename("predicted")


def _history(n: int) -> list[dict[str, float]]:
    return [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e + 0.05 * e, "val_rmse_mm": 3.0 / e, "val_mae_mm": 1.0}
            for e in range(1, n + 1)]


@pytest.mark.parametrize("n_epochs", [1, 5])
def test_loss_curve_writes_png(tmp_path: Path, n_epochs: int) -> None:
    out = plot_loss_curve(_history(n_epochs), tmp_path / "loss_curve.png")
    assert out == tmp_path / "loss_curve.png"
    assert_png(out)


def test_loss_curve_refuses_empty_history(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty history"):
        plot_loss_curve([], tmp_path / "loss.png")
    assert list(tmp_path.iterdir()) == []


def test_precipitation_maps_write_png(tmp_path: Path, observed: xr.DataArray, predicted: xr.DataArray) -> None:
    out = plot_precipitation_maps(observed, predicted, tmp_path / "maps.png", BOX, title="upstream")
    assert_png(out)


def test_precipitation_maps_downstream_only_input(observed: xr.DataArray, predicted: xr.DataArray) -> None:
    """The baseline's input grid is the downstream region itself."""
    fig = _build_precipitation_maps(observed.sel(lon=slice(110.0, 125.0)), predicted, BOX, "baseline", 2)
    assert len(fig.axes) == 3 * 2 + 2


@pytest.mark.parametrize(("max_times", "rows"), [(1, 1), (2, 2), (4, 4), (10, 6)])
def test_max_times_limits_rows(observed: xr.DataArray, predicted: xr.DataArray, max_times: int, rows: int) -> None:
    fig = _build_precipitation_maps(observed, predicted, BOX, "", max_times)
    maps = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(maps) == 3 * rows
    assert len(fig.axes) == 3 * rows + 2  # plus the precipitation and error colour bars


def test_rows_are_wet_and_in_time_order(observed: xr.DataArray, predicted: xr.DataArray) -> None:
    observed = observed.copy()
    observed[:, :, :] = 0.0
    observed[4, :, -1] = 20.0  # only time 4 rains in the downstream region
    fig = _build_precipitation_maps(observed, predicted.sel(time=observed.time[1:]), BOX, "", 2)
    labels = [ax.get_ylabel().splitlines()[0] for ax in fig.axes if ax.get_ylabel().endswith("(°N)") and "UTC" in ax.get_ylabel()]
    stamps = [pd.Timestamp(t).strftime("%Y-%m-%d %H:%M UTC") for t in observed.time.values]
    assert stamps[4] in labels
    assert labels == sorted(labels)
    assert stamps[0] not in labels  # predicted lacks the first time


def test_precipitation_maps_align_on_time_labels(tmp_path: Path, observed: xr.DataArray, predicted: xr.DataArray) -> None:
    fig = _build_precipitation_maps(observed, predicted.isel(time=[1, 3]), BOX, "", 4)
    assert len([ax for ax in fig.axes if ax.get_label() != "<colorbar>"]) == 6


def test_predicted_outside_observed_grid_is_refused(tmp_path: Path, observed: xr.DataArray, predicted: xr.DataArray) -> None:
    shifted = predicted.assign_coords(lon=predicted.lon + 2.5)
    with pytest.raises(ValueError, match="predicted grid is not inside the observed grid"):
        plot_precipitation_maps(observed, shifted, tmp_path / "maps.png", BOX)
    beyond = _precip(lon=np.arange(110.0, 131.0, 5.0))
    with pytest.raises(ValueError, match="lon"):
        plot_precipitation_maps(observed, beyond, tmp_path / "maps.png", BOX)
    assert list(tmp_path.iterdir()) == []


def test_no_common_time_is_refused(tmp_path: Path, observed: xr.DataArray, predicted: xr.DataArray) -> None:
    later = predicted.assign_coords(time=predicted.time + np.timedelta64(30, "D"))
    with pytest.raises(ValueError, match="share no time"):
        plot_precipitation_maps(observed, later, tmp_path / "maps.png", BOX)
    assert list(tmp_path.iterdir()) == []


def test_wrong_dims_are_refused(tmp_path: Path, observed: xr.DataArray, predicted: xr.DataArray) -> None:
    with pytest.raises(ValueError, match="dims"):
        plot_precipitation_maps(observed.isel(time=0), predicted, tmp_path / "maps.png", BOX)


def test_prediction_map_alone_and_with_observed(tmp_path: Path, observed: xr.DataArray, predicted: xr.DataArray) -> None:
    alone = plot_prediction_map(predicted.isel(time=0), tmp_path / "alone.png", title="forecast")
    assert_png(alone)
    both = plot_prediction_map(predicted.isel(time=[2]), tmp_path / "prediction_map_2000-01-02T00.png",
                               observed=observed.isel(time=[2]), downstream_box=BOX)
    assert_png(both)
    assert len([ax for ax in _build_prediction_map(predicted.isel(time=0), None, None, "").axes]) == 2  # map + colour bar
    assert len(_build_prediction_map(predicted.isel(time=0), observed.isel(time=0), BOX, "").axes) == 3


def test_prediction_map_refuses_several_times(tmp_path: Path, predicted: xr.DataArray) -> None:
    with pytest.raises(ValueError, match="one time"):
        plot_prediction_map(predicted, tmp_path / "p.png")


def test_overwrite_is_atomic(tmp_path: Path, observed: xr.DataArray, predicted: xr.DataArray) -> None:
    target = tmp_path / "figure.png"
    target.write_bytes(b"old content")
    plot_prediction_map(predicted.isel(time=0), target)
    assert_png(target)
    first = target.read_bytes()
    # a failing call leaves the previous figure untouched and no temporary file behind
    with pytest.raises(ValueError):
        plot_precipitation_maps(observed, predicted.assign_coords(lon=predicted.lon + 1.0), target, BOX)
    assert target.read_bytes() == first
    plot_loss_curve(_history(3), target)
    assert_png(target)
    assert target.read_bytes() != first


def test_threads_do_not_interfere(tmp_path: Path, observed: xr.DataArray, predicted: xr.DataArray) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            plot_prediction_map(predicted.isel(time=i), tmp_path / f"p{i}.png", observed=observed.isel(time=i), downstream_box=BOX)
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

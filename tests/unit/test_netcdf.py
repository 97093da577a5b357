"""The CF netCDF writer: what lands in the file (read back with netCDF4 and xarray), and that writing is atomic."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.helpers import make_dataset
from convlstm.errors import ConfigError
from convlstm.netcdf import write_netcdf

ZLIB_1 = {"zlib": True, "shuffle": True, "complevel": 1}


@pytest.fixture
def predictions() -> xr.Dataset:
    """Shaped like ``predictions.nc`` of ``infer``: float32 rain with the time of the last input on ``time``."""
    times = pd.date_range("2000-03-01T12", periods=6, freq="12h")
    rain = np.random.default_rng(0).gamma(1.0, 3.0, (6, 4, 5)).astype(np.float32)
    ds = xr.Dataset({"precipitation": (("time", "lat", "lon"), rain, {"units": "mm"})},
                    coords={"time": times, "lat": [25.0, 30.0, 35.0, 40.0], "lon": np.arange(110.0, 135.0, 5.0)})
    return ds.assign_coords(forecast_reference_time=("time", times - pd.Timedelta("12h")))


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def _filters(path: Path) -> dict[str, dict]:
    with netCDF4.Dataset(path) as nc:
        return {name: {**var.filters(), "dtype": var.dtype, "chunking": var.chunking(), "attrs": var.ncattrs()}
                for name, var in nc.variables.items()}


def _decode(variable: netCDF4.Variable, hours: list[int]) -> list[pd.Timestamp]:
    """The times of an int64 ``hours since <the first time>`` variable, checking the stored numbers."""
    assert variable.units.startswith("hours since ")
    np.testing.assert_array_equal(variable[:], hours)
    return [pd.Timestamp(str(t)) for t in netCDF4.num2date(variable[:], variable.units, variable.calendar)]


def test_cf_encoding_of_a_reanalysis_like_file(tmp_path: Path) -> None:
    ds = make_dataset(n_time=5)
    ds["TEM"] = ds["TEM"].astype(np.float64)  # stored as float32 all the same
    path = write_netcdf(ds, tmp_path / "data.nc")
    assert path == tmp_path / "data.nc"
    variables = _filters(path)
    for name in ds.data_vars:
        got = variables[name]
        assert got["dtype"] == np.float32 and {key: got[key] for key in ZLIB_1} == ZLIB_1, name
        assert "_FillValue" not in got["attrs"], name  # nothing is missing
    for name in ("time", "level", "lat", "lon"):
        assert "_FillValue" not in variables[name]["attrs"], name
    with netCDF4.Dataset(path) as nc:
        assert nc.data_model == "NETCDF4"
        assert nc.getncattr("Conventions") == "CF-1.8"
        time = nc["time"]
        assert (time.calendar, time.dtype) == ("proleptic_gregorian", np.int64)
        assert _decode(time, [0, 12, 24, 36, 48]) == list(ds["time"].to_index())
    with xr.open_dataset(path) as back:
        for name in ds.variables:
            np.testing.assert_array_equal(back[name].values, ds[name].values.astype(back[name].dtype), err_msg=name)
    assert "Conventions" not in ds.attrs  # the caller's dataset is left as it was


def test_predictions_share_one_time_unit_and_round_trip(tmp_path: Path, predictions: xr.Dataset) -> None:
    path = write_netcdf(predictions, tmp_path / "predictions.nc")
    with netCDF4.Dataset(path) as nc:
        reference = nc["forecast_reference_time"]
        assert reference.units == nc["time"].units  # one unit, as a CF reader expects of related times
        assert reference.calendar == "proleptic_gregorian" and reference.dtype == np.int64
        assert _decode(reference, [-12, 0, 12, 24, 36, 48]) == list(predictions["forecast_reference_time"].to_index())
        assert "_FillValue" not in reference.ncattrs()
    with xr.open_dataset(path) as back:
        xr.testing.assert_identical(back, predictions.assign_attrs(Conventions="CF-1.8"))
        assert back["precipitation"].dtype == np.float32


def test_missing_values_get_a_fill_value_and_conventions_are_kept(tmp_path: Path, predictions: xr.Dataset) -> None:
    predictions["precipitation"][0, 0, 0] = np.nan
    predictions.attrs["Conventions"] = "CF-1.10"
    path = write_netcdf(predictions, tmp_path / "gappy.nc", compress=False)
    with netCDF4.Dataset(path) as nc:
        assert np.isnan(nc["precipitation"].getncattr("_FillValue"))
        assert not nc["precipitation"].filters()["zlib"]
        assert nc.getncattr("Conventions") == "CF-1.10"
    with xr.open_dataset(path) as back:
        assert np.isnan(back["precipitation"].values[0, 0, 0]) and int(back["precipitation"].isnull().sum()) == 1


def test_chunks_of_about_four_mib_along_time(tmp_path: Path) -> None:
    """One time chunk for every variable, sized so that the largest variable's chunks hold about 4 MiB."""
    times = pd.date_range("2000-01-01", periods=5, freq="12h")
    ds = xr.Dataset({"big": (("time", "y", "x"), np.zeros((5, 512, 1024), np.float32)),  # 2 MiB a step
                     "small": (("time", "x"), np.zeros((5, 1024), np.float32)),
                     "static": (("y",), np.zeros(512, np.float32))}, coords={"time": times})
    variables = _filters(write_netcdf(ds, tmp_path / "chunked.nc"))
    assert variables["big"]["chunking"] == [2, 512, 1024]
    assert variables["small"]["chunking"] == [2, 1024]
    assert variables["static"]["zlib"]


def test_write_is_atomic_with_the_usual_permissions(tmp_path: Path, predictions: xr.Dataset, umask_022: None) -> None:
    path = write_netcdf(predictions, tmp_path / "sub" / "out.nc")
    assert [p.name for p in path.parent.iterdir()] == ["out.nc"]  # no temporary left beside it
    assert path.stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_the_previous_file(tmp_path: Path, predictions: xr.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "predictions.nc"
    target.write_bytes(b"previous")

    def broken(self: xr.Dataset, path: object, *args: object, **kwargs: object) -> None:
        Path(str(path)).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(OSError, match="disk full"):
        write_netcdf(predictions, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.nc"]


def test_a_directory_is_refused(tmp_path: Path, predictions: xr.Dataset) -> None:
    with pytest.raises(ConfigError, match="is a directory") as info:
        write_netcdf(predictions, tmp_path)
    assert info.value.setting == "output"
    assert not list(tmp_path.iterdir())

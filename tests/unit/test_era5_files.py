"""benchmarks/era5_files.py writes input laid out as the Climate Data Store delivers ERA5."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from convlstm.data.schema import open_dataset
from tests.helpers import REPO


@pytest.fixture(scope="module")
def era5_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "benchmarks"))  # the script imports harness as its siblings do
        module = importlib.import_module("era5_files")
    directory = tmp_path_factory.mktemp("era5")
    return directory, module.write_era5_like_files(directory, 1, resolution=2.0, levels=(1000, 500, 200), months=2)


def test_one_file_per_month_and_kind(era5_files: tuple[Path, list[Path]]) -> None:
    directory, paths = era5_files
    names = ["era5_pressure-levels_2001-01.nc", "era5_single-levels_2001-01.nc",
             "era5_pressure-levels_2001-02.nc", "era5_single-levels_2001-02.nc"]
    assert [p.name for p in paths] == names
    assert sorted(p.name for p in directory.iterdir()) == sorted(names)  # no temporary file left


def test_files_have_the_cds_layout(era5_files: tuple[Path, list[Path]]) -> None:
    _, paths = era5_files
    with xr.open_dataset(paths[0]) as levels, xr.open_dataset(paths[1]) as single:
        assert set(levels.data_vars) == {"t", "z", "q", "u", "v"} and set(single.data_vars) == {"tp"}
        for var in levels.data_vars.values():
            assert var.dims == ("valid_time", "pressure_level", "latitude", "longitude")
            assert var.dtype == np.float32 and var.attrs["long_name"]
        assert single["tp"].dims == ("valid_time", "latitude", "longitude")
        units = {name: levels[name].attrs["units"] for name in levels.data_vars} | {"tp": single["tp"].attrs["units"]}
        assert units == {"t": "K", "z": "m2 s-2", "q": "kg kg-1", "u": "m s-1", "v": "m s-1", "tp": "m"}
        assert np.all(np.diff(levels["latitude"].values) < 0)
        assert np.all(np.diff(levels["longitude"].values) > 0)
        assert list(levels["pressure_level"].values) == [1000, 500, 200]
        assert levels.sizes["latitude"] == 18 and levels.sizes["longitude"] == 31  # 65..31 N, 30 W..30 E every 2°
        assert (levels["t"].sel(pressure_level=1000) > levels["t"].sel(pressure_level=200)).all()
        assert (levels["z"].sel(pressure_level=200) > levels["z"].sel(pressure_level=500)).all()
        assert float(levels["q"].min()) >= 1e-5 and float(levels["q"].max()) <= 1.5e-2
        assert float(single["tp"].min()) >= 0 and 0 < float((single["tp"] > 0).mean()) < 0.5


def test_times_are_continuous_across_the_monthly_files(era5_files: tuple[Path, list[Path]]) -> None:
    _, paths = era5_files
    times = {kind: np.concatenate([xr.open_dataset(p)["valid_time"].values for p in paths if kind in p.name])
             for kind in ("pressure-levels", "single-levels")}
    expected = np.arange(np.datetime64("2001-01-01T00"), np.datetime64("2001-03-01T00"), np.timedelta64(12, "h"))
    for kind_times in times.values():
        np.testing.assert_array_equal(kind_times, expected.astype(kind_times.dtype))


def test_the_library_opens_the_files(era5_files: tuple[Path, list[Path]]) -> None:
    _, paths = era5_files
    with xr.open_mfdataset(paths) as files:
        data = open_dataset(files)
        assert data.sizes["time"] == 118 and data["precipitation"].attrs["units"] == "mm"
        assert float(data["GPH"].sel(level=500).mean()) == pytest.approx(5500, rel=0.1)

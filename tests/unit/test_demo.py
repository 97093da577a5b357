"""The synthetic demo atmosphere: its settings, layout, determinism, pinned contents, files and cache.

The statistics of the default two-year dataset (realism, and the upstream signal the project studies)
take a two-year run and live in ``tests/integration/test_demo_statistics.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm.config import DEMO_LEVELS, DemoAtmosphere
from convlstm.data.demo import CACHE_ENV_VAR, demo_data_path, generate_demo_dataset, write_demo_dataset
from convlstm.data.demo import atmosphere as physics
from convlstm.data.schema import open_dataset
from convlstm.errors import ConfigError

SUMMER = {"years": 0.05, "start": "2000-06-01"}  # 37 steps on the default 1° grid, in the rainy season
TINY = {"years": 0.02, "resolution": 5.0}  # 15 steps on a 4 × 12 grid


@pytest.fixture(scope="module")
def summer() -> xr.Dataset:
    return generate_demo_dataset(**SUMMER)


# ----------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"years": 0}, "years"),
        ({"years": 0.0001}, "years"),  # less than one 12-hour step
        ({"years": float("nan")}, "years"),
        ({"resolution": -1.0}, "resolution"),
        ({"resolution": 0.7}, "lat_range"),  # 15° is not a whole number of 0.7° cells
        ({"levels": [500, 850]}, "levels"),
        ({"levels": []}, "levels"),
        ({"levels": [1000, 20]}, "levels"),
        ({"lat_range": (40, 25)}, "lat_range"),
        ({"lat_range": (-30, 10)}, "lat_range"),
        ({"lon_range": (0, 400)}, "lon_range"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"start": "2000-01-01T06"}, "start"),
        ({"start": "2000-01-01T12:30"}, "start"),
        ({"start": "not a date"}, "start"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(values: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name) as info:
        DemoAtmosphere(**values)
    assert info.value.setting == name


def test_every_entry_point_takes_settings_whole_or_as_keywords(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        generate_demo_dataset(years=0)
    assert info.value.setting == "years"
    with pytest.raises(ConfigError, match="colour"):
        write_demo_dataset(tmp_path / "x.nc", colour="blue")
    with pytest.raises(ConfigError, match="not both") as info:
        demo_data_path(tmp_path, DemoAtmosphere(), years=1.0)
    assert info.value.setting == "years"
    with pytest.raises(ConfigError, match="DemoAtmosphere"):
        generate_demo_dataset("2000-01-01")  # type: ignore[arg-type] - the old first argument, start
    assert not list(tmp_path.iterdir())


def test_start_has_one_spelling_so_equal_settings_share_a_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert DemoAtmosphere(start="2000-01-01").start == "2000-01-01T00:00"
    assert DemoAtmosphere(start="2000-01-01 12:00") == DemoAtmosphere(start="2000-01-01T12")
    monkeypatch.setattr("convlstm.data.demo.cache.write_demo_dataset", lambda *args, **kwargs: None)
    assert demo_data_path(tmp_path, start="2000-01-01T00") == demo_data_path(tmp_path, years=2)
    # The default file keeps the name it had before the settings moved to DemoAtmosphere: caches stay valid.
    assert demo_data_path(tmp_path).name == "demo-6f11a420a24b.nc"


# ----------------------------------------------------------------------------------------- layout


def test_layout_dims_coords_dtypes_and_cf_attrs(summer: xr.Dataset) -> None:
    ds = summer
    assert set(ds.data_vars) == {"DPT", "GPH", "TEM", "U", "V", "precipitation"}
    for var in ("DPT", "GPH", "TEM", "U", "V"):
        assert ds[var].dims == ("time", "level", "lat", "lon")
    assert ds["precipitation"].dims == ("time", "lat", "lon")
    for var in ds.data_vars:
        assert ds[var].dtype == np.float32, var
    assert ds.sizes == {"time": 37, "level": 11, "lat": 16, "lon": 56}
    assert list(ds["level"].values) == DEMO_LEVELS
    np.testing.assert_allclose(ds["lat"].values, np.arange(25.0, 40.5, 1.0))
    np.testing.assert_allclose(ds["lon"].values, np.arange(70.0, 125.5, 1.0))
    times = ds["time"].to_index()
    assert times[0] == np.datetime64("2000-06-01T00:00")
    assert (np.diff(times.values) == np.timedelta64(12, "h")).all()

    expected = {
        "DPT": ("dew_point_temperature", "K"),
        "GPH": ("geopotential_height", "m"),
        "TEM": ("air_temperature", "K"),
        "U": ("eastward_wind", "m s-1"),
        "V": ("northward_wind", "m s-1"),
        "precipitation": ("lwe_thickness_of_precipitation_amount", "mm"),
        "lat": ("latitude", "degrees_north"),
        "lon": ("longitude", "degrees_east"),
        "level": ("air_pressure", "hPa"),
    }
    for name, (standard_name, units) in expected.items():
        assert (ds[name].attrs["standard_name"], ds[name].attrs["units"]) == (standard_name, units)
        assert ds[name].attrs["long_name"]
    assert {ds[name].attrs["axis"] for name in ("time", "level", "lat", "lon")} == {"T", "Z", "Y", "X"}
    assert ds["level"].attrs["positive"] == "down"
    assert ds["precipitation"].attrs["cell_methods"] == "time: sum"
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert "start='2000-06-01T00:00'" in ds.attrs["source"] and "seed=0" in ds.attrs["source"]
    assert ds.attrs["history"].startswith("created by convlstm.data.demo.generate_demo_dataset(")


def test_library_schema_accepts_it_unchanged(summer: xr.Dataset) -> None:
    opened = open_dataset(summer)
    for var in summer.data_vars:
        np.testing.assert_array_equal(opened[var].values, summer[var].values)


def test_custom_grid_and_levels() -> None:
    atmosphere = DemoAtmosphere(years=0.02, resolution=0.5, levels=[850, 500], lat_range=(30, 35),
                                lon_range=(100, 110), start="2001-03-01T12")
    ds = generate_demo_dataset(atmosphere)
    assert ds.sizes == {"time": 15, "level": 2, "lat": 11, "lon": 21}
    assert ds["time"].to_index()[0].hour == 12
    assert (ds["GPH"].sel(level=500) > ds["GPH"].sel(level=850)).all()


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    lat_min=st.sampled_from([10.0, 25.0, 45.0, 60.0]),
    lat_cells=st.integers(1, 6),
    lon_min=st.sampled_from([-20.0, 70.0, 170.0]),
    lon_cells=st.integers(1, 12),
    start=st.sampled_from(["2000-01-01", "2003-07-15T12", "1999-12-31T12"]),
)
def test_any_seed_and_domain_gives_valid_fields(
    seed: int, lat_min: float, lat_cells: int, lon_min: float, lon_cells: int, start: str
) -> None:
    ds = generate_demo_dataset(
        start=start, years=0.03, resolution=2.5, levels=[1000.0, 700.0, 300.0], seed=seed,
        lat_range=(lat_min, lat_min + 2.5 * lat_cells), lon_range=(lon_min, lon_min + 2.5 * lon_cells),
    )
    for var in ds.data_vars:
        assert np.isfinite(ds[var].values).all(), var
    assert (ds["precipitation"] >= 0).all()
    assert (ds["DPT"] <= ds["TEM"]).all()
    assert (ds["GPH"].diff("level") > 0).all()
    assert (ds["TEM"] > 150).all() and (ds["TEM"] < 330).all()
    assert (np.abs(ds["U"]) < 200).all() and (np.abs(ds["V"]) < 200).all()


# ----------------------------------------------------------------------------------------- contents


def test_same_settings_are_bit_identical_and_another_seed_differs(summer: xr.Dataset) -> None:
    xr.testing.assert_identical(summer, generate_demo_dataset(DemoAtmosphere(**SUMMER)))
    other = generate_demo_dataset(**SUMMER, seed=1)
    for var in summer.data_vars:
        assert not np.array_equal(summer[var].values, other[var].values), var


def test_contents_are_those_of_the_published_generator() -> None:
    """The demo results were published from these fields: a change to them needs a new GENERATOR_VERSION.

    Sums (float64) and maxima of the test workspace's file (0.2 years at 5°), recorded from generator
    version 1; the tolerance allows for rounding differences between machines, not for a changed model.
    """
    pinned = {
        "DPT": (18017031.494995117, 297.3135681152344),
        "GPH": (467219330.8983078, 13920.5810546875),
        "TEM": (19088978.24055481, 298.560302734375),
        "U": (1507088.8329734458, 99.40711975097656),
        "V": (-43728.35786205171, 64.81269836425781),
        "precipitation": (5194.479589824274, 29.482236862182617),
    }
    ds = generate_demo_dataset(years=0.2, resolution=5.0)
    for var, (total, peak) in pinned.items():
        values = ds[var].values.astype(np.float64)
        np.testing.assert_allclose([values.sum(), values.max()], [total, peak], rtol=1e-6, err_msg=var)


def test_finer_resolution_samples_the_same_weather() -> None:
    """Everything is defined in degrees: a 0.5° grid holds the 1° grid's rain at the shared points."""
    coarse = generate_demo_dataset(years=0.05, lat_range=(25, 35), lon_range=(90, 120))
    fine = generate_demo_dataset(years=0.05, resolution=0.5, lat_range=(25, 35), lon_range=(90, 120))
    shared = fine.sel(lat=coarse["lat"], lon=coarse["lon"])
    np.testing.assert_allclose(shared["precipitation"], coarse["precipitation"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(shared["TEM"], coarse["TEM"], atol=1e-3)


def test_convection_is_a_minority_but_present(summer: xr.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    total = summer["precipitation"].values
    original = physics._convective_rain
    monkeypatch.setattr(physics, "_convective_rain", lambda *args: 0.0 * original(*args))
    without = generate_demo_dataset(**SUMMER)["precipitation"].values
    share = 1.0 - without.sum() / total.sum()
    assert 0.05 <= share <= 0.45, share


# ----------------------------------------------------------------------------------------- files and cache


def test_write_round_trip(tmp_path: Path, summer: xr.Dataset) -> None:
    path = write_demo_dataset(tmp_path / "sub" / "demo.nc", DemoAtmosphere(**SUMMER))
    assert path == tmp_path / "sub" / "demo.nc"
    with xr.open_dataset(path) as back:
        xr.testing.assert_identical(back, summer)
        assert back["precipitation"].encoding["zlib"]
    plain = write_demo_dataset(tmp_path / "plain.nc", compress=False, **SUMMER)
    with xr.open_dataset(plain) as back:
        assert not back["TEM"].encoding["zlib"]
        np.testing.assert_array_equal(back["TEM"].values, summer["TEM"].values)


def test_demo_data_path_generates_once_then_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    caplog.set_level(logging.INFO, logger="convlstm.data.demo")
    first = demo_data_path(**TINY)
    assert first.parent == tmp_path / "env-cache" and first.is_file()
    assert first.name.startswith("demo-") and first.suffix == ".nc" and len(first.stem) == len("demo-") + 12
    assert "Generating" in caplog.text
    with xr.open_dataset(first) as back:
        assert back.sizes["time"] == 15 and back.sizes["lat"] == 4
    mtime = first.stat().st_mtime_ns
    caplog.clear()
    calls = []
    monkeypatch.setattr("convlstm.data.demo.cache.write_demo_dataset", lambda *a, **k: calls.append(a))
    second = demo_data_path(atmosphere=DemoAtmosphere(**TINY))
    assert second == first and first.stat().st_mtime_ns == mtime and not calls
    assert "Reusing" in caplog.text
    # Other settings, another file; an explicit cache_dir wins over the environment.
    assert demo_data_path(**TINY, seed=1) != first and len(calls) == 1
    other = demo_data_path(tmp_path / "explicit", **TINY)
    assert other.parent == tmp_path / "explicit" and other.name == first.name and len(calls) == 2

"""The synthetic demo atmosphere: layout, determinism, realism, and above all that upstream weather
really carries information about downstream rain a step later (the project's research question)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm.data import synthetic
from convlstm.data.schema import open_dataset

REPO = Path(__file__).resolve().parents[1]
SHORT = {"years": 90 / 365.25, "start": "2000-06-01"}  # 180 steps in the rainy season
DOWNSTREAM = slice(110.0, 125.0)
UPSTREAM = slice(70.0, 110.0)


@pytest.fixture(scope="module")
def short() -> xr.Dataset:
    return synthetic.generate_demo_dataset(**SHORT)


@pytest.fixture(scope="module")
def two_years() -> xr.Dataset:
    """The default demo data (2 years at 1°): ~2 s, shared by the statistical tests."""
    return synthetic.generate_demo_dataset()


def _cli():
    spec = importlib.util.spec_from_file_location("make_data", REPO / "entrypoints" / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# ----------------------------------------------------------------------------------------- layout


def test_layout_dims_coords_dtypes_and_cf_attrs(short: xr.Dataset) -> None:
    ds = short
    assert set(ds.data_vars) == {"DPT", "GPH", "TEM", "U", "V", "precipitation"}
    for var in ("DPT", "GPH", "TEM", "U", "V"):
        assert ds[var].dims == ("time", "level", "lat", "lon")
    assert ds["precipitation"].dims == ("time", "lat", "lon")
    for var in ds.data_vars:
        assert ds[var].dtype == np.float32, var
    assert ds.sizes == {"time": 180, "level": 11, "lat": 16, "lon": 56}
    assert tuple(ds["level"].values) == synthetic.DEMO_LEVELS
    assert np.all(np.diff(ds["level"].values) < 0)
    np.testing.assert_allclose(ds["lat"].values, np.arange(25.0, 40.5, 1.0))
    np.testing.assert_allclose(ds["lon"].values, np.arange(70.0, 125.5, 1.0))
    times = ds["time"].to_index()
    assert times[0] == np.datetime64("2000-06-01T00:00")
    assert (np.diff(times.values) == np.timedelta64(12, "h")).all()
    assert set(times.hour) == {0, 12}

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
        assert ds[name].attrs["standard_name"] == standard_name
        assert ds[name].attrs["units"] == units
        assert ds[name].attrs["long_name"]
    assert ds["time"].attrs["standard_name"] == "time"
    assert ds["level"].attrs["positive"] == "down"
    assert ds["precipitation"].attrs["cell_methods"] == "time: sum"
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert ds.attrs["title"] and ds.attrs["history"]
    assert "synthetic" in ds.attrs["source"] and "convlstm" in ds.attrs["source"] and "seed=0" in ds.attrs["source"]


def test_library_schema_accepts_it_unchanged(short: xr.Dataset) -> None:
    opened = open_dataset(short)
    for var in short.data_vars:
        np.testing.assert_array_equal(opened[var].values, short[var].values)


def test_custom_grid_and_levels() -> None:
    ds = synthetic.generate_demo_dataset(
        years=0.02, resolution=0.5, levels=(850, 500), lat_range=(30, 35), lon_range=(100, 110), start="2001-03-01T12"
    )
    assert ds.sizes == {"time": 15, "level": 2, "lat": 11, "lon": 21}
    assert ds["time"].to_index()[0].hour == 12
    assert (ds["GPH"].sel(level=500) > ds["GPH"].sel(level=850)).all()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"years": 0}, "years"),
        ({"years": float("nan")}, "years"),
        ({"resolution": -1.0}, "resolution"),
        ({"resolution": 0.7}, "lat_range"),  # 15° is not a whole number of 0.7° cells
        ({"levels": (500, 850)}, "levels"),
        ({"levels": ()}, "levels"),
        ({"lat_range": (40, 25)}, "lat_range"),
        ({"lat_range": (-30, 10)}, "lat_range"),
        ({"lon_range": (0, 400)}, "lon_range"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"start": "2000-01-01T06"}, "start"),
        ({"start": "not a date"}, "start"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=argument) as info:
        synthetic.generate_demo_dataset(**kwargs)
    assert info.value.argument == argument


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
    ds = synthetic.generate_demo_dataset(
        start=start, years=0.03, resolution=2.5, levels=(1000.0, 700.0, 300.0), seed=seed,
        lat_range=(lat_min, lat_min + 2.5 * lat_cells), lon_range=(lon_min, lon_min + 2.5 * lon_cells),
    )
    for var in ds.data_vars:
        assert np.isfinite(ds[var].values).all(), var
    assert (ds["precipitation"] >= 0).all()
    assert (ds["DPT"] <= ds["TEM"]).all()
    assert (ds["GPH"].diff("level") > 0).all()
    assert (ds["TEM"] > 150).all() and (ds["TEM"] < 330).all()
    assert (np.abs(ds["U"]) < 200).all() and (np.abs(ds["V"]) < 200).all()


# ----------------------------------------------------------------------------------------- determinism


def test_same_seed_is_bit_identical_and_another_seed_differs(short: xr.Dataset) -> None:
    again = synthetic.generate_demo_dataset(**SHORT)
    xr.testing.assert_identical(short, again)
    other = synthetic.generate_demo_dataset(**SHORT, seed=1)
    for var in short.data_vars:
        assert not np.array_equal(short[var].values, other[var].values), var


def test_finer_resolution_samples_the_same_weather() -> None:
    """Everything is defined in degrees: a 0.5° grid holds the 1° grid's rain at the shared points."""
    coarse = synthetic.generate_demo_dataset(years=0.05, lat_range=(25, 35), lon_range=(90, 120))
    fine = synthetic.generate_demo_dataset(years=0.05, resolution=0.5, lat_range=(25, 35), lon_range=(90, 120))
    shared = fine.sel(lat=coarse["lat"], lon=coarse["lon"])
    np.testing.assert_allclose(shared["precipitation"], coarse["precipitation"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(shared["TEM"], coarse["TEM"], atol=1e-3)


# ----------------------------------------------------------------------------------------- precipitation


def test_precipitation_is_skewed_mostly_dry_and_plausible(two_years: xr.Dataset) -> None:
    rain = two_years["precipitation"].values
    assert not np.isnan(rain).any()
    assert rain.min() >= 0.0
    dry = (rain == 0.0).mean()
    assert 0.5 <= dry <= 0.75, dry
    wet = rain[rain > 0.0]
    median, q90, q99 = np.percentile(wet, [50, 90, 99])
    assert 1.0 <= median <= 8.0, median
    assert 5.0 <= q90 <= 30.0, q90
    assert 20.0 <= q99 <= 80.0, q99
    assert 50.0 <= rain.max() <= 160.0, rain.max()
    assert wet.mean() > median  # right-skewed
    # Monsoon: summer (JJA) rains more than winter (DJF).
    season = two_years["time"].dt.season
    by_season = two_years["precipitation"].groupby(season).mean(...)
    assert by_season.sel(season="JJA") > 2.0 * by_season.sel(season="DJF")


def test_convection_is_a_minority_but_present(monkeypatch: pytest.MonkeyPatch) -> None:
    total = synthetic.generate_demo_dataset(**SHORT)["precipitation"].values
    original = synthetic._convective_rain
    monkeypatch.setattr(synthetic, "_convective_rain", lambda *args: 0.0 * original(*args))
    without = synthetic.generate_demo_dataset(**SHORT)["precipitation"].values
    share = 1.0 - without.sum() / total.sum()
    assert 0.05 <= share <= 0.45, share


# ----------------------------------------------------------------------------------------- physics


def test_vertical_structure_and_moisture_are_physical(two_years: xr.Dataset) -> None:
    ds = two_years
    tem = ds["TEM"].mean(["time", "lat", "lon"]).values
    gph = ds["GPH"].mean(["time", "lat", "lon"]).values
    assert np.all(np.diff(tem) < 0), tem  # colder with height (levels run up from the surface)
    lapse = (tem[0] - ds["TEM"].sel(level=500).mean().item()) / (gph[5] - gph[0]) * 1000.0
    assert 5.0 <= lapse <= 8.0, lapse  # K per km, near the standard 6.5
    assert np.all(np.diff(gph) > 0), gph
    assert 0.0 <= gph[0] <= 250.0 and 12_500 <= gph[-1] <= 15_000, gph
    assert (ds["GPH"].diff("level") > 0).all()  # every column, not just on average
    assert (ds["DPT"] <= ds["TEM"]).all()
    depression = (ds["TEM"] - ds["DPT"]).mean(["time", "lat", "lon"]).values
    assert depression[0] < depression[5]  # moister near the surface
    # Colder poleward; westerlies aloft, strongest near 200-250 hPa and in winter.
    t850 = ds["TEM"].sel(level=850).mean(["time", "lon"])
    assert t850.isel(lat=0) > t850.isel(lat=-1) + 5.0
    u = ds["U"].mean(["time", "lat", "lon"])
    assert u.sel(level=250) > 15.0 and u.sel(level=250) > u.sel(level=850) + 10.0
    assert float(u["level"][int(np.argmax(u.values))]) in (300.0, 250.0, 200.0)
    u250 = ds["U"].sel(level=250).groupby(ds["time"].dt.season).mean(...)
    assert u250.sel(season="DJF") > u250.sel(season="JJA")
    assert abs(float(ds["V"].mean())) < 1.0
    wind = np.hypot(ds["U"], ds["V"])
    assert float(wind.max()) < 150.0


def test_lows_have_cyclonic_winds(two_years: xr.Dataset) -> None:
    """Geostrophic balance: where the 500-hPa height is anomalously low, air turns anticlockwise."""
    inner = {"lat": slice(27.0, 38.0), "lon": slice(72.0, 123.0)}  # away from one-sided edge differences
    z = two_years["GPH"].sel(level=500)
    u = two_years["U"].sel(level=500)
    v = two_years["V"].sel(level=500)
    vorticity = (v.differentiate("lon") - u.differentiate("lat")).sel(inner).values.ravel()
    zonal_anomaly = (z - z.mean("lon")).sel(inner).values.ravel()
    laplacian = z.differentiate("lon").differentiate("lon") + z.differentiate("lat").differentiate("lat")
    laplacian = laplacian.sel(inner).values.ravel()
    assert np.corrcoef(zonal_anomaly, vorticity)[0, 1] < -0.5  # cyclonic around lows
    assert np.corrcoef(laplacian, vorticity)[0, 1] > 0.8  # close to geostrophic vorticity


def test_weather_moves_east(two_years: xr.Dataset) -> None:
    """Rain along longitude at t+1 resembles rain at t shifted east by roughly 5-10 degrees."""
    profile = two_years["precipitation"].mean("lat").values
    profile = profile - profile.mean(axis=0)
    n_lon = profile.shape[1]
    shifts = np.arange(-12, 13)
    corr = []
    for k in shifts:
        now, later = (profile[:-1, : n_lon - k], profile[1:, k:]) if k >= 0 else (profile[:-1, -k:], profile[1:, : n_lon + k])
        corr.append(np.corrcoef(now.ravel(), later.ravel())[0, 1])
    best = shifts[int(np.argmax(corr))]
    assert 4 <= best <= 10, (best, corr)
    assert corr[list(shifts).index(best)] > corr[list(shifts).index(-best)] + 0.3


# ----------------------------------------------------------------------------------------- the research signal


def _region_mean(da: xr.DataArray, lon: slice) -> np.ndarray:
    return da.sel(lon=lon).mean(["lat", "lon"]).values


def test_upstream_weather_predicts_downstream_rain(two_years: xr.Dataset) -> None:
    """Least squares for downstream-mean rain at t+1: adding upstream features at t must clearly help.

    (a) downstream rain, low-level dew point and 500-hPa height at t; (b) the same plus upstream rain
    in longitude bands and upstream moisture/height. Trained on the first 70 %, scored on the rest.
    """
    ds = two_years
    rain = ds["precipitation"]
    dew = ds["DPT"].sel(level=850)
    height = ds["GPH"].sel(level=500)
    target = _region_mean(rain, DOWNSTREAM)
    downstream = [target, _region_mean(dew, DOWNSTREAM), _region_mean(height, DOWNSTREAM)]
    upstream = [_region_mean(rain, slice(lo, lo + 5.0)) for lo in (80.0, 85.0, 90.0, 95.0, 100.0, 105.0)]
    upstream += [_region_mean(dew, slice(95.0, 110.0)), _region_mean(height, slice(95.0, 110.0))]

    def score(features: list[np.ndarray]) -> tuple[float, float]:
        x = np.column_stack([np.ones(len(target) - 1)] + [f[:-1] for f in features])
        y = target[1:]
        n_train = int(0.7 * len(y))
        coef, *_ = np.linalg.lstsq(x[:n_train], y[:n_train], rcond=None)
        error = x[n_train:] @ coef - y[n_train:]
        mse = float(np.mean(error**2))
        return mse, 1.0 - mse / float(np.var(y[n_train:]))

    mse_down, r2_down = score(downstream)
    mse_up, r2_up = score(downstream + upstream)
    logging.getLogger(__name__).info(
        "MSE downstream-only %.3f (R² %.3f), with upstream %.3f (R² %.3f)", mse_down, r2_down, mse_up, r2_up
    )
    assert mse_up <= 0.8 * mse_down, (mse_down, mse_up)
    assert r2_up < 0.98, r2_up  # convection and growth/decay keep it from being trivially solvable
    assert r2_down > 0.1  # persistence alone carries some skill, as in real weather


def test_upstream_rain_leads_downstream_rain(two_years: xr.Dataset) -> None:
    """Rain at 95-105 °E reaches the downstream region 1-2 steps later; the reverse does not hold."""

    def weather(x: np.ndarray) -> np.ndarray:  # remove the seasonal cycle (30-day running mean)
        return x - np.convolve(x, np.ones(61) / 61, mode="same")

    rain = two_years["precipitation"]
    target = weather(_region_mean(rain, DOWNSTREAM))
    band = weather(_region_mean(rain, slice(95.0, 105.0)))
    lag1 = np.corrcoef(band[:-1], target[1:])[0, 1]
    lag2 = np.corrcoef(band[:-2], target[2:])[0, 1]
    lead = np.corrcoef(band[1:], target[:-1])[0, 1]  # downstream now vs upstream later
    assert lag1 > 0.15 and lag2 > 0.4, (lag1, lag2)
    assert lead < 0.15, lead


# ----------------------------------------------------------------------------------------- files


def test_write_round_trip_and_no_temporary_left(tmp_path: Path, short: xr.Dataset) -> None:
    path = synthetic.write_demo_dataset(tmp_path / "sub" / "demo.nc", **SHORT)
    assert path == tmp_path / "sub" / "demo.nc"
    assert [p.name for p in path.parent.iterdir()] == ["demo.nc"]
    with xr.open_dataset(path, engine="netcdf4") as back:
        for var in short.data_vars:
            assert back[var].dtype == np.float32
            np.testing.assert_array_equal(back[var].values, short[var].values)
            assert back[var].attrs == short[var].attrs
        np.testing.assert_array_equal(back["time"].values, short["time"].values)
        assert back.attrs["Conventions"] == "CF-1.8"
        assert back["precipitation"].encoding["zlib"]
    plain = synthetic.write_demo_dataset(tmp_path / "plain.nc", compress=False, **SHORT)
    with xr.open_dataset(plain) as back:
        assert not back["TEM"].encoding["zlib"]
        np.testing.assert_array_equal(back["TEM"].values, short["TEM"].values)


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "demo.nc"
    target.write_bytes(b"previous")

    def broken(self: xr.Dataset, path: object, *args: object, **kwargs: object) -> None:
        Path(str(path)).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    with pytest.raises(OSError, match="disk full"):
        synthetic.write_demo_dataset(target, years=0.02)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["demo.nc"]


def test_demo_data_path_generates_once_then_reuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(synthetic.CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    caplog.set_level(logging.INFO, logger=synthetic.__name__)
    first = synthetic.demo_data_path(**SHORT)
    assert first.parent == tmp_path / "env-cache"
    assert first.name.startswith("demo-") and first.suffix == ".nc" and len(first.stem) == len("demo-") + 12
    assert "Generating" in caplog.text
    mtime = first.stat().st_mtime_ns
    caplog.clear()
    calls = []
    monkeypatch.setattr(synthetic, "write_demo_dataset", lambda *a, **k: calls.append(a))
    second = synthetic.demo_data_path(**SHORT)
    assert second == first and first.stat().st_mtime_ns == mtime and not calls
    assert "Reusing" in caplog.text
    # Other parameters, other file; an explicit cache_dir wins over the environment.
    assert synthetic.demo_parameters_hash(**SHORT, seed=1) != synthetic.demo_parameters_hash(**SHORT)
    assert synthetic.demo_parameters_hash(years=2) == synthetic.demo_parameters_hash(years=2.0, resolution=1)
    other = synthetic.demo_data_path(tmp_path / "explicit", **SHORT)
    assert other.parent == tmp_path / "explicit" and calls
    with pytest.raises(ValueError, match="unknown"):
        synthetic.demo_data_path(tmp_path, colour="blue")


# ----------------------------------------------------------------------------------------- command line


def test_make_data_command(tmp_path: Path) -> None:
    main = _cli()
    runner = CliRunner()
    out = tmp_path / "demo.nc"
    args = ["--output", str(out), "--years", "0.02", "--resolution", "2.5", "--seed", "3", "--start", "2001-01-01"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    with xr.open_dataset(out) as ds:
        assert ds.sizes["lat"] == 7 and ds.sizes["time"] == 15 and "seed=3" in ds.attrs["source"]
    mtime = out.stat().st_mtime_ns

    refused = runner.invoke(main, args)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    assert out.stat().st_mtime_ns == mtime

    replaced = runner.invoke(main, [*args, "--overwrite", "--seed", "4"])
    assert replaced.exit_code == 0, replaced.output
    with xr.open_dataset(out) as ds:
        assert "seed=4" in ds.attrs["source"]

    bad = runner.invoke(main, ["--output", str(tmp_path / "x.nc"), "--years", "-1"])
    assert bad.exit_code == 2 and "--years" in bad.output
    bad_grid = runner.invoke(main, ["--output", str(tmp_path / "x.nc"), "--resolution", "0.7"])
    assert bad_grid.exit_code == 2 and "--lat-range" in bad_grid.output
    assert not (tmp_path / "x.nc").exists()

    help_text = runner.invoke(main, ["--help"])
    assert help_text.exit_code == 0 and "entrypoints.make_data --output demo.nc" in help_text.output

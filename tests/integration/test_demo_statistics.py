"""The default demo atmosphere (two years at 1°, as training uses it) is realistic and carries the
project's research signal: upstream weather tells something about downstream rain a step later.

One two-year run (about 10 s) is shared by these statistical tests, which is why they are not unit tests.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import xarray as xr

from convlstm.data.demo import generate_demo_dataset

DOWNSTREAM = slice(110.0, 125.0)


@pytest.fixture(scope="module")
def two_years() -> xr.Dataset:
    return generate_demo_dataset()


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

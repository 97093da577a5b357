"""The linear yardstick (``convlstm.evaluation.linear``) on synthetic data whose downstream rain is a known
function of the upstream rain: the upstream ridge regression recovers it and the baseline one cannot, the
penalty is the one validation prefers, and forecasts land on the networks' target times."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from convlstm.config import ConvLSTMConfig, RegionConfig
from convlstm.data.dataset import ConvLSTMDataset
from convlstm.data.schema import PRECIPITATION
from convlstm.data.split import select_split
from convlstm.errors import DataError
from convlstm.evaluation.linear import ALPHAS, ridge_forecast
from tests.helpers import make_dataset

N_TIME = 300
#: Downstream rain per downstream column: this much of the upstream rain in the column next to the boundary.
WEIGHTS = np.array([0.9, 0.7, 0.5, 0.3])
NOISE_MM = 0.05
REGIONS = RegionConfig()  # downstream 110–125 °E, upstream 70–110 °E: on the 5° grid 4 and 8 columns


def advected(lag: int = 1, seed: int = 1) -> xr.Dataset:
    """5° data (4 × 12 cells) whose downstream rain is ``WEIGHTS`` × the rain at 105 °E ``lag`` steps earlier, plus
    a little noise: upstream rain is independent from step to step, so only the upstream region predicts it."""
    data = make_dataset(n_time=N_TIME, lat=np.arange(25.0, 41.0, 5.0), lon=np.arange(70.0, 126.0, 5.0), seed=seed)
    rain, lon = data[PRECIPITATION].values, data["lon"].values
    noise = np.random.default_rng(seed).normal(0.0, NOISE_MM, rain[lag:, :, lon >= 110].shape)
    rain[lag:, :, lon >= 110] = np.clip(WEIGHTS * rain[:-lag, :, lon == 105] + noise, 0.0, None)
    return data


def rmse_against_data(fit, data: xr.Dataset) -> float:
    truth = data[PRECIPITATION].sel(time=fit.forecast["time"], lat=fit.forecast["lat"], lon=fit.forecast["lon"])
    return float(np.sqrt(((fit.forecast - truth) ** 2).mean()))


def test_the_upstream_ridge_recovers_advected_rain_and_the_baseline_one_cannot() -> None:
    data, config = advected(), ConvLSTMConfig(window_size=3)
    upstream, baseline = (ridge_forecast(data, REGIONS, include, config) for include in (True, False))
    assert rmse_against_data(upstream, data) < 2 * NOISE_MM
    assert rmse_against_data(baseline, data) > 1.0  # its own past rain says nothing about the next step's
    assert upstream.alpha < 100.0 and baseline.alpha >= 1000.0  # no signal: shrink towards the training mean
    assert upstream.forecast.dims == ("time", "lat", "lon") and (upstream.forecast >= 0).all()
    np.testing.assert_array_equal(upstream.forecast["lon"].values, [110.0, 115.0, 120.0, 125.0])
    assert len(upstream.features) == 6 and len(baseline.features) == 2 and upstream.lags == 2
    assert "upstream precipitation over 105 °E" in upstream.describe("ridge_upstream")
    assert "U at 850 hPa" in upstream.describe("ridge_upstream")


def test_the_penalty_is_the_one_validation_prefers() -> None:
    """The same training split twice; only the validation split differs. Where validation keeps the training
    relation a small penalty wins, where its rain is unrelated noise the largest one (the training mean) does."""
    config = ConvLSTMConfig(window_size=3)
    kept = advected()
    unrelated = kept.copy(deep=True)
    val_times = select_split(kept, "val", config)["time"].values
    rain = unrelated[PRECIPITATION]
    downstream = rain["lon"] >= 110
    noise = np.random.default_rng(7).gamma(1.0, 5.0, rain.sel(time=val_times, lon=downstream).shape)
    rain.loc[{"time": val_times, "lon": rain["lon"].values[downstream.values]}] = noise.astype(np.float32)

    small, large = (ridge_forecast(data, REGIONS, True, config) for data in (kept, unrelated))
    assert small.alpha < 100.0
    assert large.alpha == max(ALPHAS)
    for fit in (small, large):
        assert fit.alpha == min(fit.validation_rmse, key=fit.validation_rmse.get)
        assert list(fit.validation_rmse) == list(ALPHAS)


def test_forecasts_are_at_the_networks_target_times() -> None:
    data, config = advected(), ConvLSTMConfig(window_size=3)
    fit = ridge_forecast(data, REGIONS, True, config)
    windows = ConvLSTMDataset(select_split(data, "test", config), config.window_size, REGIONS, config.target_offset, True)
    np.testing.assert_array_equal(fit.forecast["time"].values, windows.target_times)

    # given times (the networks' after --nan-policy drop, say): exactly those, the same values (the fit is unchanged)
    some = windows.target_times[::3]
    given = ridge_forecast(data, REGIONS, True, config, some)
    np.testing.assert_array_equal(given.forecast["time"].values, some)
    np.testing.assert_allclose(given.forecast.values, fit.forecast.sel(time=some).values, rtol=1e-6)

    with pytest.raises(DataError, match="input steps"):  # the first time of the data has no inputs before it
        ridge_forecast(data, REGIONS, True, config, data["time"].values[:1])


def test_the_target_offset_and_a_one_step_window_are_honoured() -> None:
    """Rain arriving two steps later: with the last input two steps before the target (target_offset 2) a
    one-step window sees it; one step before, it cannot (a one-step window reads no earlier step)."""
    data = advected(lag=2)
    two, one = (ridge_forecast(data, REGIONS, True, ConvLSTMConfig(window_size=1, target_offset=offset))
                for offset in (2, 1))
    assert two.lags == one.lags == 1
    assert rmse_against_data(two, data) < 2 * NOISE_MM
    assert rmse_against_data(one, data) > 1.0
    windows = ConvLSTMDataset(select_split(data, "test", ConvLSTMConfig(window_size=1, target_offset=2)), 1, REGIONS, 2, True)
    np.testing.assert_array_equal(two.forecast["time"].values, windows.target_times)


def test_the_baseline_ridge_does_not_read_the_upstream_region() -> None:
    data, config = advected(), ConvLSTMConfig(window_size=3)
    changed = data.copy(deep=True)
    upstream = changed["lon"] < 110
    changed[PRECIPITATION].loc[{"lon": changed["lon"].values[upstream.values]}] = 0.0
    changed["U"].loc[{"lon": changed["lon"].values[upstream.values]}] = -30.0
    first, second = (ridge_forecast(d, REGIONS, False, config) for d in (data, changed))
    xr.testing.assert_identical(first.forecast, second.forecast)


def test_missing_values_in_a_forecasts_inputs_are_a_data_error_naming_the_time() -> None:
    data, config = advected(), ConvLSTMConfig(window_size=3)
    test_times = select_split(data, "test", config)["time"].values
    data[PRECIPITATION].loc[{"time": test_times[5]}] = np.nan
    with pytest.raises(DataError, match="missing values.*--nan-policy fill"):
        ridge_forecast(data, REGIONS, True, config)

"""Score accumulators: every score by hand on tiny arrays, and equal to the ``scores`` library on fixed
random data to 1e-12 however the data are split into batches; undefined ratios NaN, bad arguments refused."""

from __future__ import annotations

import math
import operator

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scores.categorical import ThresholdEventOperator
from scores.continuous import additive_bias, mae
from scores.continuous import rmse as scores_rmse
from scores.continuous.correlation import pearsonr
from scores.functions import create_latitude_weights
from scores.spatial import fss_2d

from convlstm.errors import ConfigError, DataError
from convlstm.evaluation.scores import (
    CATEGORICAL,
    DEFAULT_FSS_WINDOWS,
    DEFAULT_THRESHOLDS_MM,
    CategoricalScores,
    ContinuousScores,
    FractionsSkillScore,
    rmse,
    rmse_from_sums,
)


def field(values, lat=None, lon=None) -> xr.DataArray:
    """A (time, lat, lon) precipitation array with 12-hourly times."""
    values = np.asarray(values, dtype=np.float64)
    n_time, n_lat, n_lon = values.shape
    lat = np.arange(n_lat, dtype=np.float64) * 10.0 if lat is None else np.asarray(lat, dtype=np.float64)
    lon = 100.0 + np.arange(n_lon, dtype=np.float64) if lon is None else np.asarray(lon, dtype=np.float64)
    times = pd.date_range("2001-01-01", periods=n_time, freq="12h")
    return xr.DataArray(values, dims=("time", "lat", "lon"), coords={"time": times, "lat": lat, "lon": lon})


def categorical(forecast, observed, thresholds) -> dict[str, float]:
    """``{"csi_1mm": ...}`` from CategoricalScores, for short assertions."""
    ds = CategoricalScores(thresholds).accumulate(forecast, observed).compute()
    return {f"{name}_{t:g}mm": float(ds[name].sel(threshold=t)) for name in CATEGORICAL for t in thresholds}


def fss(forecast, observed, threshold: float, window: int) -> float:
    ds = FractionsSkillScore((threshold,), (window,)).accumulate(forecast, observed).compute()
    return float(ds["fss"].item())


# 2 times x 2 lat x 2 lon. At 1 mm (event: value >= threshold), cell by cell:
#   t0: (2 vs 1.5) hit, (0 vs 0) correct negative, (1 vs 0.2) false alarm, (3 vs 2) hit
#   t1: (0.5 vs 1) miss, (1 vs 0) false alarm, (0 vs 0) correct negative, (4 vs 5) hit
# so hits 3, misses 1, false alarms 2, correct negatives 2 (values equal to the threshold are events).
FCST = np.array([[[2.0, 0.0], [1.0, 3.0]], [[0.5, 1.0], [0.0, 4.0]]])
OBS = np.array([[[1.5, 0.0], [0.2, 2.0]], [[1.0, 0.0], [0.0, 5.0]]])


# ------------------------------------------------------------------------------------------ by hand


def test_continuous_scores_of_a_known_error():
    obs = np.arange(8.0).reshape(2, 2, 2)
    error = np.array([1.0, -1.0, 1.0, -1.0, 2.0, -2.0, 0.0, 0.0]).reshape(2, 2, 2)
    got = ContinuousScores(lat=[0.0, 60.0]).accumulate(obs + error, obs).compute()
    assert got["rmse_mm"] == pytest.approx(math.sqrt(12.0 / 8.0))
    assert got["mae_mm"] == pytest.approx(1.0)
    assert got["bias_mm"] == pytest.approx(0.0, abs=1e-12)
    # Weights 1 (lat 0) and 0.5 (lat 60): squared errors 1,1,4,4 at lat 0 and 1,1,0,0 at lat 60.
    assert got["rmse_latw_mm"] == pytest.approx(math.sqrt((1 * 10.0 + 0.5 * 2.0) / (4 * 1 + 4 * 0.5)))
    shifted = ContinuousScores().accumulate(obs - 2.0, obs).compute()
    assert (shifted["bias_mm"], shifted["rmse_mm"], shifted["mae_mm"]) == pytest.approx((-2.0, 2.0, 2.0))
    assert shifted["correlation"] == pytest.approx(1.0)
    assert math.isnan(shifted["rmse_latw_mm"])  # no latitudes given


def test_correlation_by_hand_and_undefined_for_a_constant_forecast():
    # x = 1,2,3; y = 1,3,2: cov 1, var 2 and 2 -> r = 0.5; split over two batches
    got = ContinuousScores().accumulate([[1.0, 2.0]], [[1.0, 3.0]]).accumulate([[3.0]], [[2.0]]).compute()
    assert got["correlation"] == pytest.approx(0.5)
    assert math.isnan(ContinuousScores().accumulate(np.ones((2, 2, 2)), OBS).compute()["correlation"])


def test_nothing_accumulated_gives_nan_not_an_error():
    assert all(math.isnan(v) for v in ContinuousScores().compute().values())
    assert math.isnan(rmse(np.zeros((0, 3)), np.zeros((0, 3))))


def test_categorical_scores_by_hand():
    got = categorical(FCST, OBS, (1.0, 0.1))
    hits, misses, false_alarms, total = 3.0, 1.0, 2.0, 8.0
    hits_random = (hits + misses) * (hits + false_alarms) / total
    assert got["pod_1mm"] == pytest.approx(0.75)
    assert got["far_1mm"] == pytest.approx(0.4)
    assert got["csi_1mm"] == pytest.approx(0.5)
    assert got["ets_1mm"] == pytest.approx((hits - hits_random) / (hits + misses + false_alarms - hits_random))
    assert got["ets_1mm"] == pytest.approx(1.0 / 7.0)
    assert got["fbias_1mm"] == pytest.approx(1.25)
    # At 0.1 mm: hits 5, misses 0, false alarms 1, correct negatives 2.
    assert (got["pod_0.1mm"], got["far_0.1mm"], got["csi_0.1mm"], got["fbias_0.1mm"]) == pytest.approx((1.0, 1 / 6, 5 / 6, 6 / 5))
    assert got["ets_0.1mm"] == pytest.approx((5.0 - 3.75) / (6.0 - 3.75))


def test_categorical_result_is_a_dataset_on_threshold():
    ds = CategoricalScores((0.1, 10.0)).accumulate(FCST, OBS).compute()
    assert set(ds.data_vars) == set(CATEGORICAL)
    assert all(ds[name].dims == ("threshold",) for name in CATEGORICAL)
    assert ds["threshold"].values.tolist() == [0.1, 10.0] and ds["threshold"].dtype == np.float64


def test_threshold_zero_is_an_event_everywhere():
    got = categorical(FCST, OBS, (0.0,))
    assert (got["pod_0mm"], got["csi_0mm"], got["far_0mm"], got["fbias_0mm"]) == (1.0, 1.0, 0.0, 1.0)


def test_undefined_ratios_are_nan_never_inf():
    rain, dry = np.full((2, 2, 2), 3.0), np.zeros((2, 2, 2))
    got = categorical(rain, dry, (1.0,))  # 8 false alarms, nothing observed
    assert math.isnan(got["pod_1mm"]) and math.isnan(got["fbias_1mm"])  # x/0 would be inf
    assert got["far_1mm"] == 1.0 and got["csi_1mm"] == 0.0
    nothing = categorical(dry, dry, (1.0,))
    assert all(math.isnan(v) for v in nothing.values())
    assert math.isnan(fss(dry, dry, 1.0, 1))


def test_per_time_statistics_by_hand():
    counts = CategoricalScores((1.0,), per_time=True).accumulate(FCST[:1], OBS[:1]).accumulate(FCST[1:], OBS[1:]).per_time()
    np.testing.assert_array_equal(counts[:, 0], [[2, 0, 1, 1], [1, 1, 1, 1]])  # hits, misses, false alarms, negatives
    sums = ContinuousScores(per_time=True).accumulate(FCST, OBS).per_time()
    np.testing.assert_allclose(sums, [[0.25 + 0.64 + 1.0, 4], [0.25 + 1.0 + 1.0, 4]])
    with pytest.raises(ConfigError, match="per_time=True"):
        ContinuousScores().accumulate(FCST, OBS).per_time()


def test_fss_by_hand():
    rng = np.random.default_rng(1)
    wet = rng.gamma(0.5, 4.0, (3, 6, 6))
    assert all(fss(wet, wet, t, w) == pytest.approx(1.0) for t in (1.0, 5.0) for w in (1, 3, 5))
    f, o = np.zeros((1, 3, 4)), np.zeros((1, 3, 4))
    f[0, 1, 0] = o[0, 1, 2] = 5.0
    assert fss(f, o, 1.0, 1) == 0.0  # disjoint single cells
    # 3x3 windows fit at columns 0-2 and 1-3: forecast counts (1, 0), observed (1, 1)
    # -> FSS = 1 - mean((0, 1)^2) / (mean(1, 0) + mean(1, 1)) = 2/3.
    assert fss(f, o, 1.0, 3) == pytest.approx(2.0 / 3.0)
    edge = np.zeros((1, 2, 2))
    edge[0, 0, 0] = 1.0  # exactly 1 mm: an event, as in the categorical scores (scores' default is >)
    assert fss(edge, edge, 1.0, 1) == 1.0
    assert math.isnan(fss(np.full((2, 3, 3), 2.0), np.full((2, 3, 3), 2.0), 1.0, 5))  # window > grid


def test_fss_aggregates_over_times_not_a_mean_of_per_time_values():
    # Window 1 on 2x2. t0: identical single events (FSS 1). t1: 3 forecast events, 1 other observed (FSS 0).
    # Aggregated: mean sq. difference (0 + 4/4)/2 = 0.5; references (1/4 + 3/4)/2 + (1/4 + 1/4)/2 = 0.75.
    f = np.array([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]])
    o = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    assert fss(f, o, 1.0, 1) == pytest.approx(1.0 - 0.5 / 0.75)  # 1/3, not (1 + 0) / 2


def test_rmse_helper_by_hand():
    obs = np.arange(8.0).reshape(2, 2, 2)
    error = np.array([1.0, -1.0, 1.0, -1.0, 2.0, -2.0, 0.0, 0.0]).reshape(2, 2, 2)
    assert rmse(field(obs + error), obs) == pytest.approx(math.sqrt(1.5))
    by_time = rmse_from_sums(ContinuousScores(per_time=True).accumulate(obs + error, obs).per_time())
    np.testing.assert_allclose(by_time, [1.0, math.sqrt(2.0)])


# ------------------------------------------------------------------------------------------ against `scores`


@pytest.fixture(scope="module")
def sample() -> tuple[xr.DataArray, xr.DataArray]:
    rng = np.random.default_rng(7)
    shape = (23, 7, 9)
    obs = np.where(rng.random(shape) < 0.45, 0.0, rng.gamma(0.7, 6.0, shape))
    fcst = np.clip(obs + rng.normal(0.3, 2.5, shape), 0.0, None).astype(np.float32)
    lat, lon = np.linspace(-20.0, 65.0, shape[1]), 100.0 + 2.5 * np.arange(shape[2])
    return field(fcst, lat, lon), field(obs, lat, lon)


SPLITS = {"one batch": [23], "uneven batches": [1, 9, 2, 11]}


def in_batches(accumulator, f: xr.DataArray, o: xr.DataArray, sizes: list[int]):
    start = 0
    for size in sizes:
        accumulator.accumulate(f[start:start + size], o.values[start:start + size])  # DataArray and numpy alike
        start += size
    assert start == f.sizes["time"]
    return accumulator.compute()


@pytest.mark.parametrize("split", SPLITS)
def test_continuous_scores_equal_the_scores_library(sample, split):
    f, o = sample
    got = in_batches(ContinuousScores(lat=f["lat"]), f, o, SPLITS[split])
    f64 = f.astype(np.float64)
    weights = xr.DataArray(create_latitude_weights(f["lat"].values), dims="lat", coords={"lat": f["lat"]})
    expected = {"rmse_mm": scores_rmse(f64, o), "mae_mm": mae(f64, o), "bias_mm": additive_bias(f64, o),
                "correlation": pearsonr(f64, o), "rmse_latw_mm": scores_rmse(f64, o, weights=weights)}
    for key, value in expected.items():
        assert got[key] == pytest.approx(float(value), rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("split", SPLITS)
def test_categorical_scores_equal_the_scores_library(sample, split):
    f, o = sample
    thresholds = (0.0, *DEFAULT_THRESHOLDS_MM)
    got = in_batches(CategoricalScores(thresholds), f, o, SPLITS[split])
    for t in thresholds:
        # make_contingency_manager treats a falsy threshold (0.0) as "use the default": pass it as the default.
        table = ThresholdEventOperator(default_event_threshold=t, default_op_fn=operator.ge).make_contingency_manager(
            f.astype(np.float64), o)
        expected = {"pod": table.probability_of_detection(), "far": table.false_alarm_ratio(),
                    "csi": table.critical_success_index(), "ets": table.equitable_threat_score(),
                    "fbias": table.frequency_bias()}
        for name, value in expected.items():
            assert float(got[name].sel(threshold=t)) == pytest.approx(float(value), rel=1e-12, abs=1e-12, nan_ok=True), (name, t)


@pytest.mark.parametrize("split", SPLITS)
def test_fss_equals_the_scores_library(sample, split):
    f, o = sample
    got = in_batches(FractionsSkillScore(DEFAULT_THRESHOLDS_MM, DEFAULT_FSS_WINDOWS), f, o, SPLITS[split])
    assert got["fss"].dims == ("threshold", "window") and got["window"].values.tolist() == [1, 3, 5]
    for t in DEFAULT_THRESHOLDS_MM:
        for w in DEFAULT_FSS_WINDOWS:
            expected = fss_2d(f.astype(np.float64), o, event_threshold=t, window_size=(w, w), spatial_dims=("lat", "lon"),
                              reduce_dims=["time", "lat", "lon"], threshold_operator=np.greater_equal)
            assert float(got["fss"].sel(threshold=t, window=w)) == pytest.approx(float(expected), abs=1e-12), (t, w)


# ------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("thresholds", [(), (1.0, float("nan")), (1.0, 1.0), ("abc",)])
def test_bad_thresholds_are_config_errors(thresholds):
    with pytest.raises(ConfigError, match="thresholds"):
        CategoricalScores(thresholds)


@pytest.mark.parametrize("windows", [(), (0,), (2.5,), (True,), (3, 3)])
def test_bad_windows_are_config_errors(windows):
    with pytest.raises(ConfigError, match="fss_windows"):
        FractionsSkillScore((1.0,), windows)


def test_data_problems_are_data_errors():
    with pytest.raises(DataError, match="shape"):
        ContinuousScores().accumulate(FCST, OBS[:, :1])
    with pytest.raises(DataError, match="latitudes"):
        ContinuousScores(lat=[0.0, 10.0, 20.0]).accumulate(FCST, OBS)
    with pytest.raises(DataError, match="Latitudes"):
        ContinuousScores(lat=[0.0, 95.0])
    with pytest.raises(DataError, match="one grid"):
        FractionsSkillScore((1.0,), (1,)).accumulate(FCST, OBS).accumulate(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)))

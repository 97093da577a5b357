"""Forecast verification: every score against values computed by hand on tiny arrays, undefined
ratios as NaN, alignment refused when it differs, and the paired block bootstrap."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scores.continuous import rmse

from convlstm.errors import DataError
from convlstm.verification import (
    DEFAULT_FSS_WINDOWS,
    DEFAULT_THRESHOLDS_MM,
    BootstrapResult,
    all_scores,
    block_bootstrap_ci,
    bootstrap_csi_difference,
    bootstrap_rmse_difference,
    categorical_scores,
    check_aligned,
    contingency_per_time,
    continuous_scores,
    default_block_length,
    errors_by_time,
    fss_scores,
    latitude_weights,
    moving_block_indices,
    rmse_map,
    skill_score,
)


def field(values, lat=None, lon=None, start: str = "2001-01-01") -> xr.DataArray:
    """A (time, lat, lon) precipitation array with 12-hourly times."""
    values = np.asarray(values, dtype=np.float64)
    n_time, n_lat, n_lon = values.shape
    lat = np.arange(n_lat, dtype=np.float64) * 10.0 if lat is None else np.asarray(lat, dtype=np.float64)
    lon = 100.0 + np.arange(n_lon, dtype=np.float64) if lon is None else np.asarray(lon, dtype=np.float64)
    times = pd.date_range(start, periods=n_time, freq="12h")
    return xr.DataArray(values, dims=("time", "lat", "lon"), coords={"time": times, "lat": lat, "lon": lon}, name="precipitation")


# 2 times x 2 lat x 2 lon. At 1 mm (event: value >= threshold), cell by cell:
#   t0: (2 vs 1.5) hit, (0 vs 0) correct negative, (1 vs 0.2) false alarm, (3 vs 2) hit
#   t1: (0.5 vs 1) miss, (1 vs 0) false alarm, (0 vs 0) correct negative, (4 vs 5) hit
# so hits 3, misses 1, false alarms 2, correct negatives 2 (values equal to the threshold are events).
FCST = [[[2.0, 0.0], [1.0, 3.0]], [[0.5, 1.0], [0.0, 4.0]]]
OBS = [[[1.5, 0.0], [0.2, 2.0]], [[1.0, 0.0], [0.0, 5.0]]]


# ------------------------------------------------------------------------------------------ alignment


def test_check_aligned_accepts_identical_coordinates():
    check_aligned(field(FCST), field(OBS))


@pytest.mark.parametrize(
    ("change", "word"),
    [
        (lambda da: da.assign_coords(time=da["time"] + np.timedelta64(12, "h")), "times"),
        (lambda da: da.assign_coords(lat=da["lat"] + 0.25), "lat"),
        (lambda da: da.assign_coords(lon=da["lon"] - 1.0), "lon"),
        (lambda da: da.isel(lon=[0]), "shape"),
        (lambda da: da.transpose("time", "lon", "lat"), "dims"),
    ],
)
def test_check_aligned_names_what_differs(change, word):
    with pytest.raises(DataError, match=word):
        check_aligned(field(FCST), change(field(OBS)))


def test_scores_refuse_misaligned_inputs_instead_of_intersecting():
    shifted = field(OBS, start="2001-01-01T12")
    with pytest.raises(DataError, match="times"):
        continuous_scores(field(FCST), shifted)
    with pytest.raises(DataError, match="xarray.DataArray"):
        continuous_scores(np.asarray(FCST), field(OBS))


def test_missing_values_are_refused():
    bad = np.array(FCST)
    bad[1, 0, 1] = np.nan
    with pytest.raises(DataError, match="missing or infinite"):
        all_scores(field(bad), field(OBS))


# ------------------------------------------------------------------------------------------ continuous


def test_latitude_weights_are_cosine_normalised_to_mean_one():
    weights = latitude_weights(np.array([0.0, 60.0]))  # cos = 1 and 0.5, mean 0.75
    np.testing.assert_allclose(weights.values, [4.0 / 3.0, 2.0 / 3.0])
    assert weights.dims == ("lat",)
    assert float(weights.mean()) == pytest.approx(1.0)
    with pytest.raises(DataError):
        latitude_weights([0.0, 95.0])


def test_continuous_scores_of_a_known_error():
    obs = np.arange(8.0).reshape(2, 2, 2)
    error = np.array([1.0, -1.0, 1.0, -1.0, 2.0, -2.0, 0.0, 0.0]).reshape(2, 2, 2)
    got = continuous_scores(field(obs + error, lat=[0.0, 60.0]), field(obs, lat=[0.0, 60.0]))
    assert got["rmse_mm"] == pytest.approx(math.sqrt(12.0 / 8.0))
    assert got["mae_mm"] == pytest.approx(8.0 / 8.0)
    assert got["bias_mm"] == pytest.approx(0.0, abs=1e-12)
    # Weights 1 (lat 0) and 0.5 (lat 60): squared errors 1,1,4,4 at lat 0 and 1,1,0,0 at lat 60.
    assert got["rmse_latw_mm"] == pytest.approx(math.sqrt((1 * 10.0 + 0.5 * 2.0) / (4 * 1 + 4 * 0.5)))
    assert set(got) == {"rmse_mm", "mae_mm", "bias_mm", "correlation", "rmse_latw_mm"}


def test_bias_sign_is_forecast_minus_observed():
    obs = np.arange(8.0).reshape(2, 2, 2)
    got = continuous_scores(field(obs - 2.0), field(obs))
    assert got["bias_mm"] == pytest.approx(-2.0)
    assert got["rmse_mm"] == pytest.approx(2.0)
    assert got["mae_mm"] == pytest.approx(2.0)
    assert got["correlation"] == pytest.approx(1.0)


def test_correlation_by_hand_and_undefined_for_a_constant_forecast():
    # x = 1,2,3; y = 1,3,2: cov 1, var 2 and 2 -> r = 0.5
    got = continuous_scores(field([[[1.0, 2.0, 3.0]]]), field([[[1.0, 3.0, 2.0]]]))
    assert got["correlation"] == pytest.approx(0.5)
    assert math.isnan(continuous_scores(field(np.ones((2, 2, 2))), field(OBS))["correlation"])


def test_errors_by_time_and_rmse_map_by_hand():
    obs = np.arange(8.0).reshape(2, 2, 2)
    error = np.array([1.0, -1.0, 1.0, -1.0, 2.0, -2.0, 0.0, 0.0]).reshape(2, 2, 2)
    by_time = errors_by_time(field(obs + error), field(obs))
    assert by_time.dims == ("time",)
    np.testing.assert_allclose(by_time.values, [1.0, math.sqrt(2.0)])
    np.testing.assert_array_equal(by_time["time"].values, field(obs)["time"].values)
    cells = rmse_map(field(obs + error), field(obs))
    assert cells.dims == ("lat", "lon")
    np.testing.assert_allclose(cells.values, np.sqrt([[2.5, 2.5], [0.5, 0.5]]))


# ------------------------------------------------------------------------------------------ categorical


def test_categorical_scores_by_hand_at_1mm():
    got = categorical_scores(field(FCST), field(OBS), thresholds=(1.0,))
    hits, misses, false_alarms, total = 3.0, 1.0, 2.0, 8.0
    hits_random = (hits + misses) * (hits + false_alarms) / total  # 2.5
    assert got["pod_1mm"] == pytest.approx(hits / (hits + misses))  # 0.75
    assert got["far_1mm"] == pytest.approx(false_alarms / (hits + false_alarms))  # 0.4
    assert got["csi_1mm"] == pytest.approx(hits / (hits + misses + false_alarms))  # 0.5
    assert got["ets_1mm"] == pytest.approx((hits - hits_random) / (hits + misses + false_alarms - hits_random))  # 1/7
    assert got["ets_1mm"] == pytest.approx(1.0 / 7.0)
    assert got["fbias_1mm"] == pytest.approx((hits + false_alarms) / (hits + misses))  # 1.25
    assert set(got) == {"pod_1mm", "far_1mm", "csi_1mm", "ets_1mm", "fbias_1mm"}


def test_categorical_scores_by_hand_at_0_1mm_and_key_format():
    # At 0.1 mm: hits 5, misses 0, false alarms 1, correct negatives 2.
    got = categorical_scores(field(FCST), field(OBS), thresholds=(0.1, 10.0))
    assert got["pod_0.1mm"] == pytest.approx(1.0)
    assert got["far_0.1mm"] == pytest.approx(1.0 / 6.0)
    assert got["csi_0.1mm"] == pytest.approx(5.0 / 6.0)
    assert got["ets_0.1mm"] == pytest.approx((5.0 - 3.75) / (6.0 - 3.75))
    assert got["fbias_0.1mm"] == pytest.approx(6.0 / 5.0)
    assert "pod_10mm" in got and "pod_10.0mm" not in got


def test_threshold_zero_is_not_replaced_by_a_default():
    # scores' make_contingency_manager treats event_threshold=0 as "not given" (0.001 mm); at 0 mm
    # every value is an event, so the forecast is perfect.
    got = categorical_scores(field(FCST), field(OBS), thresholds=(0.0,))
    assert got["pod_0mm"] == 1.0 and got["csi_0mm"] == 1.0 and got["far_0mm"] == 0.0 and got["fbias_0mm"] == 1.0


def test_undefined_ratios_are_nan_never_inf():
    rain = field(np.full((2, 2, 2), 3.0))
    dry = field(np.zeros((2, 2, 2)))
    got = categorical_scores(rain, dry, thresholds=(1.0,))  # 8 false alarms, nothing observed
    assert math.isnan(got["pod_1mm"]) and math.isnan(got["fbias_1mm"])  # x/0 would be inf
    assert got["far_1mm"] == 1.0 and got["csi_1mm"] == 0.0
    nothing = all_scores(dry, dry, thresholds=(1.0,), windows=(1,))
    assert all(not math.isinf(v) for v in nothing.values())
    assert all(math.isnan(nothing[k]) for k in ("pod_1mm", "far_1mm", "csi_1mm", "ets_1mm", "fbias_1mm", "fss_1mm_w1"))


def test_contingency_per_time_by_hand():
    per_time = contingency_per_time(field(FCST), field(OBS), 1.0)
    np.testing.assert_array_equal(per_time, [[2, 0, 1], [1, 1, 1]])  # hits, misses, false alarms


# ------------------------------------------------------------------------------------------ FSS


def test_fss_identical_fields_is_one():
    rng = np.random.default_rng(1)
    obs = field(rng.gamma(0.5, 4.0, (3, 6, 6)))
    got = fss_scores(obs, obs, thresholds=(1.0, 5.0), windows=(1, 3, 5))
    assert set(got) == {f"fss_{t}mm_w{w}" for t in ("1", "5") for w in (1, 3, 5)}
    assert all(v == pytest.approx(1.0) for v in got.values())


def test_fss_disjoint_single_cells_at_window_one_is_zero():
    f, o = np.zeros((1, 3, 3)), np.zeros((1, 3, 3))
    f[0, 0, 0], o[0, 2, 2] = 2.0, 2.0
    assert fss_scores(field(f), field(o), thresholds=(1.0,), windows=(1,))["fss_1mm_w1"] == 0.0


def test_fss_of_a_near_miss_by_hand():
    # 3 x 4 grid, forecast rain at (1, 0), observed at (1, 2); 3x3 windows fit at columns 0-2 and 1-3:
    # forecast counts (1, 0), observed (1, 1) -> FSS = 1 - mean((0, 1)^2) / (mean(1, 0) + mean(1, 1)) = 2/3.
    f, o = np.zeros((1, 3, 4)), np.zeros((1, 3, 4))
    f[0, 1, 0], o[0, 1, 2] = 5.0, 5.0
    got = fss_scores(field(f), field(o), thresholds=(1.0,), windows=(1, 3))
    assert got["fss_1mm_w3"] == pytest.approx(2.0 / 3.0)
    assert got["fss_1mm_w1"] == 0.0


def test_fss_aggregates_over_times_not_a_mean_of_per_time_values():
    # Window 1 on 2x2. t0: identical single events (FSS 1). t1: 3 forecast events, 1 other observed (FSS 0).
    # Aggregated: mean sq. difference (0 + 4/4)/2 = 0.5; references (1/4 + 3/4)/2 + (1/4 + 1/4)/2 = 0.75.
    f = np.array([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]])
    o = np.array([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    got = fss_scores(field(f), field(o), thresholds=(1.0,), windows=(1,))["fss_1mm_w1"]
    assert got == pytest.approx(1.0 - 0.5 / 0.75)  # 1/3, not (1 + 0) / 2


def test_fss_event_includes_the_threshold_value():
    f = np.zeros((1, 2, 2))
    f[0, 0, 0] = 1.0  # exactly 1 mm: an event, as in the categorical scores (scores' default is >)
    assert fss_scores(field(f), field(f), thresholds=(1.0,), windows=(1,))["fss_1mm_w1"] == 1.0


def test_fss_undefined_cases_are_nan():
    dry = field(np.zeros((2, 3, 3)))
    assert math.isnan(fss_scores(dry, dry, thresholds=(1.0,), windows=(1,))["fss_1mm_w1"])
    wet = field(np.full((2, 3, 3), 2.0))
    assert math.isnan(fss_scores(wet, wet, thresholds=(1.0,), windows=(5,))["fss_1mm_w5"])  # window > grid


def test_all_scores_merges_everything_with_defaults():
    rng = np.random.default_rng(2)
    obs = field(rng.gamma(0.5, 6.0, (4, 5, 5)))
    fcst = field(obs.values + rng.normal(0, 1, obs.shape).clip(0))
    got = all_scores(fcst, obs)
    assert len(got) == 5 + 5 * len(DEFAULT_THRESHOLDS_MM) + len(DEFAULT_THRESHOLDS_MM) * len(DEFAULT_FSS_WINDOWS)
    assert DEFAULT_THRESHOLDS_MM == (0.1, 1.0, 5.0, 10.0, 20.0) and DEFAULT_FSS_WINDOWS == (1, 3, 5)
    assert {"rmse_mm", "pod_0.1mm", "ets_20mm", "fss_1mm_w3", "fss_0.1mm_w5"} <= set(got)
    assert got == {**continuous_scores(fcst, obs), **categorical_scores(fcst, obs), **fss_scores(fcst, obs)}


def test_skill_score():
    assert skill_score(1.0, 2.0) == pytest.approx(0.5)  # RMSE halved vs the reference
    assert skill_score(2.0, 2.0) == 0.0
    assert skill_score(3.0, 2.0) == pytest.approx(-0.5)
    assert skill_score(0.6, 0.2, perfect=1.0) == pytest.approx(0.5)  # CSI: perfect is 1
    assert math.isnan(skill_score(1.0, 0.0))  # the reference is already perfect
    assert math.isnan(skill_score(float("nan"), 1.0))


# ------------------------------------------------------------------------------------------ bootstrap


def noisy_case(n_time: int = 30, n_cell: int = 4, seed: int = 0, noise_a: float = 2.0, noise_b: float = 1.0):
    rng = np.random.default_rng(seed)
    obs = rng.gamma(0.5, 4.0, (n_time, n_cell, n_cell))
    a = (obs + rng.normal(0, noise_a, obs.shape)).clip(0)
    b = (obs + rng.normal(0, noise_b, obs.shape)).clip(0)
    return field(a), field(b), field(obs)


def test_default_block_length_is_cube_root():
    assert [default_block_length(n) for n in (1, 2, 8, 27, 200)] == [1, 1, 2, 3, 6]


def test_moving_block_indices_are_blocks_of_consecutive_times():
    idx = moving_block_indices(10, 50, 3, seed=4)
    assert idx.shape == (50, 10) and idx.min() >= 0 and idx.max() <= 9
    blocks = idx[:, :9].reshape(50, 3, 3)  # the 4th block is cut to one index
    assert (np.diff(blocks, axis=2) == 1).all()
    np.testing.assert_array_equal(idx, moving_block_indices(10, 50, 3, seed=4))
    assert not np.array_equal(idx, moving_block_indices(10, 50, 3, seed=5))


def test_bootstrap_resamples_by_hand():
    a, b, obs = noisy_case()
    got = bootstrap_rmse_difference(a, b, obs, n_boot=200, block_length=4, seed=7)
    idx = moving_block_indices(30, 200, 4, seed=7)
    diffs = [np.sqrt(np.mean((b.values[i] - obs.values[i]) ** 2)) - np.sqrt(np.mean((a.values[i] - obs.values[i]) ** 2)) for i in idx]
    low, high = np.percentile(diffs, [2.5, 97.5])
    assert (got.low, got.high) == (pytest.approx(low), pytest.approx(high))
    assert (got.n_boot, got.block_length, got.n_valid) == (200, 4, 200)


def test_rmse_bootstrap_estimate_equals_scores_and_generic_path():
    a, b, obs = noisy_case()
    fast = bootstrap_rmse_difference(a, b, obs, n_boot=100, seed=3)
    expected = continuous_scores(b, obs)["rmse_mm"] - continuous_scores(a, obs)["rmse_mm"]
    assert fast.estimate == pytest.approx(expected, rel=1e-12)
    generic = block_bootstrap_ci(lambda f, o: float(rmse(f, o)), a, b, obs, n_boot=100, seed=3)
    assert generic.block_length == fast.block_length == default_block_length(30)
    for name in ("estimate", "low", "high"):
        assert getattr(generic, name) == pytest.approx(getattr(fast, name), rel=1e-10)


def test_csi_bootstrap_estimate_equals_scores_and_generic_path():
    a, b, obs = noisy_case()
    fast = bootstrap_csi_difference(a, b, obs, 5.0, n_boot=60, seed=1)
    expected = categorical_scores(b, obs, (5.0,))["csi_5mm"] - categorical_scores(a, obs, (5.0,))["csi_5mm"]
    assert fast.estimate == pytest.approx(expected, rel=1e-12)
    generic = block_bootstrap_ci(lambda f, o: categorical_scores(f, o, (5.0,))["csi_5mm"], a, b, obs, n_boot=60, seed=1)
    for name in ("estimate", "low", "high"):
        assert getattr(generic, name) == pytest.approx(getattr(fast, name), rel=1e-10)


def test_identical_forecasts_have_a_zero_interval():
    # Unpaired resampling would give a non-zero spread; paired resampling gives exactly zero.
    a, _, obs = noisy_case()
    got = bootstrap_rmse_difference(a, a.copy(), obs, n_boot=200)
    assert (got.estimate, got.low, got.high) == (0.0, 0.0, 0.0)
    assert not got.excludes_zero


def test_clearly_better_forecast_excludes_zero():
    a, b, obs = noisy_case(noise_a=3.0, noise_b=0.5)
    rmse_diff = bootstrap_rmse_difference(a, b, obs, n_boot=300)
    assert rmse_diff.estimate < 0 and rmse_diff.low <= rmse_diff.estimate <= rmse_diff.high < 0
    assert rmse_diff.excludes_zero
    csi_diff = bootstrap_csi_difference(a, b, obs, 1.0, n_boot=300)
    assert csi_diff.estimate > 0 and csi_diff.low > 0 and csi_diff.excludes_zero


def test_one_block_spanning_all_times_reproduces_the_sample():
    a, b, obs = noisy_case(n_time=12)
    got = bootstrap_rmse_difference(a, b, obs, n_boot=20, block_length=12)
    assert got.low == pytest.approx(got.estimate) and got.high == pytest.approx(got.estimate)


def test_bootstrap_is_deterministic_for_a_seed():
    a, b, obs = noisy_case()
    first = bootstrap_rmse_difference(a, b, obs, n_boot=100, seed=11)
    assert first == bootstrap_rmse_difference(a, b, obs, n_boot=100, seed=11)
    assert first != bootstrap_rmse_difference(a, b, obs, n_boot=100, seed=12)


def test_csi_resamples_without_events_are_left_out():
    a, b, obs = (da * 0.0 for da in noisy_case(n_time=20))
    obs[0, 0, 0] = b[0, 0, 0] = 3.0  # one event, at the first time only
    got = bootstrap_csi_difference(a, b, obs, 1.0, n_boot=200, block_length=2)
    assert got.estimate == 1.0  # b hits the one event, a never rains
    assert 0 < got.n_valid < 200 and got.low == got.high == 1.0


def test_bootstrap_argument_checks():
    a, b, obs = noisy_case(n_time=10)
    for kwargs in ({"n_boot": 0}, {"block_length": 11}, {"block_length": 0}, {"confidence": 1.0}):
        with pytest.raises(DataError):
            bootstrap_rmse_difference(a, b, obs, **kwargs)
    with pytest.raises(DataError, match="times"):
        bootstrap_rmse_difference(a, b.assign_coords(time=b["time"] + np.timedelta64(1, "D")), obs)


def test_bootstrap_result_interface():
    result = BootstrapResult(estimate=-0.2, low=-0.3, high=-0.1, n_boot=1000, block_length=6)
    assert result.excludes_zero
    assert not BootstrapResult(0.1, -0.1, 0.3, 1000, 6).excludes_zero
    assert not BootstrapResult(math.nan, math.nan, math.nan, 1000, 6).excludes_zero


def test_thousand_resamples_of_200_times_are_fast():
    a, b, obs = noisy_case(n_time=200, n_cell=16)
    start = time.perf_counter()
    rmse_diff = bootstrap_rmse_difference(a, b, obs, n_boot=1000)
    csi_diff = bootstrap_csi_difference(a, b, obs, 1.0, n_boot=1000)
    assert time.perf_counter() - start < 3.0
    assert rmse_diff.n_boot == csi_diff.n_boot == 1000 and rmse_diff.block_length == 6

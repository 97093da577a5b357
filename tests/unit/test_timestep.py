"""aggregate_time: fields sampled at the model's step, precipitation summed over complete intervals only."""

from __future__ import annotations

import logging

import dask.array
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm.data.dataset import window_starts
from convlstm.data.schema import LEVEL_VARIABLES, PRECIPITATION
from convlstm.data.timestep import STEP_ATTR, aggregate_time, data_spacing_hours
from convlstm.errors import ConfigError, DataError
from tests.helpers import make_dataset

HOUR = pd.Timedelta(hours=1)


def at_spacing(hours: int, days: float, start: str = "2000-01-01T00:00") -> xr.Dataset:
    """``make_dataset`` at ``hours`` spacing, precipitation = hours since 2000-01-01 (so sums are exact)."""
    n_time = int(days * 24 / hours)
    data = make_dataset(n_time=n_time, lat=np.array([30.0, 33.0]), lon=np.array([70.0, 75.0, 80.0]))
    times = pd.date_range(start, periods=n_time, freq=f"{hours}h")
    data = data.assign_coords(time=times)
    index = ((times - pd.Timestamp("2000-01-01")) / HOUR).to_numpy(np.float32)
    data[PRECIPITATION] = data[PRECIPITATION].copy(data=np.broadcast_to(index[:, None, None], data[PRECIPITATION].shape).copy())
    return data


def expected_total(end: pd.Timestamp, step: int, spacing: int) -> float:
    """The sum of the index over the times ``end - step + spacing .. end``."""
    hours = (end - pd.Timestamp("2000-01-01")) / HOUR
    return float(sum(hours - k * spacing for k in range(step // spacing)))


@pytest.mark.parametrize("spacing", [1, 3, 6])
def test_precipitation_is_the_sum_over_each_step(spacing: int) -> None:
    data = at_spacing(spacing, days=3)
    out = aggregate_time(data, 12)
    times = pd.DatetimeIndex(out["time"].values)
    # 00 UTC of the first day has no interval before it; every later 00 and 12 UTC is complete.
    assert list(times) == list(pd.date_range("2000-01-01T12:00", "2000-01-03T12:00", freq="12h"))
    for t in times:
        values = out[PRECIPITATION].sel(time=t).values
        assert np.all(values == expected_total(t, 12, spacing)), (t, values.ravel()[0])
    assert out[PRECIPITATION].dtype == np.float32
    assert out[PRECIPITATION].dims == ("time", "lat", "lon")
    assert out[PRECIPITATION].attrs == data[PRECIPITATION].attrs
    assert out[PRECIPITATION].attrs["cell_methods"] == "time: sum"
    assert out.attrs[STEP_ATTR] == 12 and isinstance(out.attrs[STEP_ATTR], int)
    assert list(out.data_vars) == list(data.data_vars)


def test_hourly_to_12h_sums_the_12_hours_ending_at_the_time() -> None:
    out = aggregate_time(at_spacing(1, days=2), 12)
    # 12 UTC on the first day: hours 1 .. 12 (hour 0 belongs to the interval ending at 00 UTC).
    assert out[PRECIPITATION].isel(time=0, lat=0, lon=0).item() == sum(range(1, 13))
    assert out[PRECIPITATION].isel(time=1, lat=0, lon=0).item() == sum(range(13, 25))


def test_instantaneous_fields_are_sampled_at_the_step_times() -> None:
    data = at_spacing(3, days=2)
    out = aggregate_time(data, 12)
    assert set(pd.DatetimeIndex(out["time"].values).hour) == {0, 12}
    for var in LEVEL_VARIABLES:
        xr.testing.assert_identical(out[var], data[var].sel(time=out["time"].values))
        assert out[var].dtype == np.float32
    assert out["time"].attrs == data["time"].attrs


def test_the_first_incomplete_interval_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    data = at_spacing(1, days=1, start="2000-01-01T05:00")  # 05 UTC .. 04 UTC next day
    with caplog.at_level(logging.INFO, logger="convlstm.data.timestep"):
        out = aggregate_time(data, 12)
    # 12 UTC lacks 01..04 UTC: left out; 00 UTC next day is complete (13..24 UTC).
    assert list(pd.DatetimeIndex(out["time"].values)) == [pd.Timestamp("2000-01-02T00:00")]
    assert out[PRECIPITATION].isel(time=0, lat=0, lon=0).item() == sum(range(13, 25))
    assert "left out 1 of 2 12-h steps" in caplog.text


def test_a_gap_drops_only_the_incomplete_intervals_and_windows_never_span_it() -> None:
    data = at_spacing(1, days=6)
    gap = (data["time"] >= np.datetime64("2000-01-03T07:00")) & (data["time"] < np.datetime64("2000-01-04T05:00"))
    data = data.sel(time=~gap)  # 07 UTC on the 3rd to 04 UTC on the 4th are missing
    out = aggregate_time(data, 12)
    times = pd.DatetimeIndex(out["time"].values)
    missing = {pd.Timestamp(t) for t in ["2000-01-03T12:00", "2000-01-04T00:00", "2000-01-04T12:00"]}
    expected = [t for t in pd.date_range("2000-01-01T12:00", "2000-01-06T12:00", freq="12h") if t not in missing]
    assert list(times) == expected
    assert out[PRECIPITATION].sel(time="2000-01-05T00:00").isel(lat=0, lon=0).item() == expected_total(
        pd.Timestamp("2000-01-05T00:00"), 12, 1)

    window, offset = 2, 1
    starts = window_starts(out["time"].values, window, offset)
    assert len(starts) > 0
    for start in starts:
        span = np.diff(out["time"].values[start:start + window + offset])
        assert np.all(span == np.timedelta64(12, "h")), times[start]


@pytest.mark.parametrize(("spacing", "step"), [(5, 12), (12, 6)])
def test_a_step_that_is_not_a_multiple_of_the_spacing_is_refused(spacing: int, step: int) -> None:
    data = at_spacing(spacing, days=4).assign_attrs(convlstm_source="era5.nc")
    with pytest.raises(ConfigError, match="era5.nc") as caught:
        aggregate_time(data, step)
    assert caught.value.setting == "time_step"
    message = str(caught.value)
    assert "--time-step" in message and f"{spacing}-h spacing" in message
    assert f"{spacing}, {2 * spacing}" in message  # the steps that would work


def test_a_step_equal_to_the_spacing_returns_the_data() -> None:
    data = at_spacing(12, days=3)
    out = aggregate_time(data, 12)
    xr.testing.assert_identical(out.drop_attrs(deep=False), data.drop_attrs(deep=False))
    assert np.shares_memory(out[PRECIPITATION].values, data[PRECIPITATION].values)
    assert out.attrs[STEP_ATTR] == 12 and STEP_ATTR not in data.attrs


def test_lazy_input_stays_lazy_and_gives_the_eager_numbers() -> None:
    data = at_spacing(1, days=4)
    data["TEM"] = data["TEM"] + np.float32(0.5) * data[PRECIPITATION]  # any difference in sampling shows
    lazy = data.chunk({"time": 17})
    out = aggregate_time(lazy, 12)
    for var in out.data_vars:
        assert isinstance(out[var].data, dask.array.Array), var
    xr.testing.assert_identical(out.compute(), aggregate_time(data, 12))


def test_a_file_with_no_complete_step_is_refused() -> None:
    data = at_spacing(3, days=1, start="2000-01-01T01:00")  # 01, 04, ... UTC: never at 00 or 12 UTC
    with pytest.raises(DataError, match="no complete 12-h interval"):
        aggregate_time(data, 12)


def test_spacing_is_the_most_common_difference() -> None:
    times = pd.to_datetime(["2000-01-01T00", "2000-01-01T03", "2000-01-01T06", "2000-01-02T00", "2000-01-02T03"])
    assert data_spacing_hours(times.values) == 3.0
    with pytest.raises(DataError):
        data_spacing_hours(times.values[:1])


@settings(max_examples=25, deadline=None)
@given(spacing=st.sampled_from([1, 2, 3, 4, 6]), step_multiple=st.sampled_from([1, 2]),
       start_hour=st.integers(0, 23), n_days=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_total_precipitation_over_complete_intervals_is_preserved(
        spacing: int, step_multiple: int, start_hour: int, n_days: int, seed: int) -> None:
    step = 12 * step_multiple
    start = pd.Timestamp("2000-01-01") + pd.Timedelta(hours=start_hour - start_hour % spacing)
    data = at_spacing(spacing, days=n_days, start=str(start))
    rng = np.random.default_rng(seed)
    data[PRECIPITATION] = data[PRECIPITATION].copy(data=rng.integers(0, 5, data[PRECIPITATION].shape).astype(np.float32))
    try:
        out = aggregate_time(data, step)
    except DataError:  # too short a stretch for one complete interval
        return
    ends = pd.DatetimeIndex(out["time"].values)
    inside = np.zeros(data.sizes["time"], dtype=bool)
    times = pd.DatetimeIndex(data["time"].values)
    for end in ends:
        inside |= (times > end - pd.Timedelta(hours=step)) & (times <= end)
    assert np.all(out[PRECIPITATION].sum("time").values == data[PRECIPITATION].isel(time=inside).sum("time").values)
    assert inside.sum() == len(ends) * step // spacing

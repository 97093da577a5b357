"""Train / validation / test split by time: ordered, disjoint, complete."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from tests.helpers import make_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm.data.split import create_train_val_test_split
from convlstm.errors import ConfigError, DataError


def _time_only(times: pd.DatetimeIndex) -> xr.Dataset:
    """A dataset with just a time axis (the split looks at nothing else)."""
    return xr.Dataset({"x": ("time", np.arange(len(times), dtype=np.float32))}, coords={"time": times})


def _assert_partition(data: xr.Dataset, splits) -> None:
    parts = [s["time"].values for s in splits]
    for a, b in zip(parts, parts[1:]):
        if len(a) and len(b):
            assert a[-1] < b[0], "splits must be in time order"
    np.testing.assert_array_equal(np.concatenate(parts), data["time"].values)


def test_default_ratios_leave_a_test_split():
    data = make_dataset(n_time=100, lat=np.array([30.0]), lon=np.array([110.0]))
    train, val, test = create_train_val_test_split(data)
    assert (train.sizes["time"], val.sizes["time"], test.sizes["time"]) == (70, 15, 15)
    _assert_partition(data, (train, val, test))
    np.testing.assert_array_equal(train["TEM"].values, data["TEM"].values[:70])  # the fields travel with their times


def test_custom_ratios():
    data = _time_only(pd.date_range("2000-01-01", periods=40, freq="D"))
    train, val, test = create_train_val_test_split(data, train_ratio=0.5, val_ratio=0.25)
    assert (train.sizes["time"], val.sizes["time"], test.sizes["time"]) == (20, 10, 10)


def test_year_strategy():
    data = _time_only(pd.date_range("2000-01-01", "2004-12-31", freq="MS"))
    train, val, test = create_train_val_test_split(data, train_end_year=2002, val_end_year=2003)
    assert set(pd.DatetimeIndex(train["time"].values).year) == {2000, 2001, 2002}
    assert set(pd.DatetimeIndex(val["time"].values).year) == {2003}
    assert set(pd.DatetimeIndex(test["time"].values).year) == {2004}
    assert (train.sizes["time"], val.sizes["time"], test.sizes["time"]) == (36, 12, 12)
    _assert_partition(data, (train, val, test))


def test_years_take_precedence_over_ratios():
    data = _time_only(pd.date_range("2000-01-01", "2003-12-31", freq="MS"))
    train, _, _ = create_train_val_test_split(data, train_end_year=2000, val_end_year=2001, train_ratio=0.9, val_ratio=0.05)
    assert train.sizes["time"] == 12


def test_test_start_date_strategy():
    data = _time_only(pd.date_range("2000-01-01", periods=100, freq="D"))
    cutoff = pd.Timestamp("2000-03-11")  # day 70
    train, val, test = create_train_val_test_split(data, test_start_date="2000-03-11", train_ratio=0.6, val_ratio=0.1)
    assert pd.Timestamp(test["time"].values[0]) == cutoff
    assert test.sizes["time"] == 30
    assert (train.sizes["time"], val.sizes["time"]) == (60, 10)  # 70 earlier steps split 6 : 1
    assert pd.Timestamp(val["time"].values[-1]) < cutoff
    _assert_partition(data, (train, val, test))


def test_test_start_date_allows_ratios_summing_to_one():
    data = _time_only(pd.date_range("2000-01-01", periods=50, freq="D"))
    train, val, test = create_train_val_test_split(data, test_start_date="2000-02-10", train_ratio=0.8, val_ratio=0.2)
    assert (train.sizes["time"], val.sizes["time"], test.sizes["time"]) == (32, 8, 10)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 300),
    train_ratio=st.floats(0.01, 0.98),
    val_fraction=st.floats(0.01, 0.99),
)
def test_ratio_split_is_an_ordered_partition(n, train_ratio, val_fraction):
    val_ratio = (1.0 - train_ratio) * val_fraction * 0.999  # keeps train + val < 1
    data = _time_only(pd.date_range("2001-01-01", periods=n, freq="6h"))
    expected_train, expected_val = round(n * train_ratio), round(n * val_ratio)
    if expected_train == 0 or expected_val == 0:
        with pytest.raises(DataError, match="split empty"):
            create_train_val_test_split(data, train_ratio=train_ratio, val_ratio=val_ratio)
        return
    splits = create_train_val_test_split(data, train_ratio=train_ratio, val_ratio=val_ratio)
    sizes = [s.sizes["time"] for s in splits]
    assert sizes[0] == expected_train and sizes[1] == expected_val
    assert sum(sizes) == n
    _assert_partition(data, splits)
    assert not set(splits[0]["time"].values) & set(splits[1]["time"].values)
    assert not set(splits[1]["time"].values) & set(splits[2]["time"].values)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(10, 400), cut=st.floats(0.2, 1.2))
def test_test_start_date_split_is_an_ordered_partition(n, cut):
    times = pd.date_range("2001-01-01", periods=n, freq="12h")
    cutoff = times[0] + (times[-1] - times[0]) * cut
    data = _time_only(times)
    n_before = int((times < cutoff).sum())
    n_train = round(n_before * 0.7 / (0.7 + 0.15))  # the default ratios
    if n_train == 0 or n_before - n_train == 0:
        with pytest.raises(DataError, match="split empty"):
            create_train_val_test_split(data, test_start_date=str(cutoff))
        return
    splits = create_train_val_test_split(data, test_start_date=str(cutoff))
    assert [s.sizes["time"] for s in splits] == [n_train, n_before - n_train, n - n_before]
    _assert_partition(data, splits)
    assert all(t >= cutoff for t in pd.DatetimeIndex(splits[2]["time"].values))
    assert all(t < cutoff for t in pd.DatetimeIndex(splits[1]["time"].values))


@pytest.mark.parametrize(
    "train_ratio,val_ratio",
    [(0.85, 0.15), (0.9, 0.2), (0.0, 0.15), (0.7, 0.0), (1.0, 0.1), (-0.1, 0.2), (0.7, -0.1)],
)
def test_bad_ratios_refused(train_ratio, val_ratio):
    data = _time_only(pd.date_range("2000-01-01", periods=20, freq="D"))
    with pytest.raises(ConfigError, match=r"train_ratio .* and val_ratio .* must each lie in \(0, 1\)"):
        create_train_val_test_split(data, train_ratio=train_ratio, val_ratio=val_ratio)


@pytest.mark.parametrize("train_end_year,val_end_year", [(2001, None), (None, 2002), (2002, 2002), (2003, 2001)])
def test_bad_years_refused(train_end_year, val_end_year):
    data = _time_only(pd.date_range("2000-01-01", "2004-12-31", freq="MS"))
    with pytest.raises(ConfigError, match="Year split needs both"):
        create_train_val_test_split(data, train_end_year=train_end_year, val_end_year=val_end_year)


def test_years_leaving_validation_empty_refused():
    data = _time_only(pd.date_range("2000-01-01", "2002-12-31", freq="MS"))
    data.attrs["convlstm_source"] = "short.nc"
    with pytest.raises(DataError, match=r"short\.nc \(36 time steps, 2000-01-01 00:00 to 2002-12-01 00:00\) leaves the validation split empty"):
        create_train_val_test_split(data, train_end_year=2005, val_end_year=2006)


def test_bad_test_start_date_refused():
    data = _time_only(pd.date_range("2000-01-01", periods=20, freq="D"))
    with pytest.raises(ConfigError, match="test_start_date must be a date"):
        create_train_val_test_split(data, test_start_date="the day after tomorrow")


def test_test_start_date_before_data_leaves_train_empty():
    data = _time_only(pd.date_range("2000-01-01", periods=20, freq="D"))
    with pytest.raises(DataError, match="leaves the train split empty"):
        create_train_val_test_split(data, test_start_date="1999-01-01")


def test_unsorted_times_refused():
    data = _time_only(pd.DatetimeIndex(["2000-01-02", "2000-01-01", "2000-01-03"]))
    with pytest.raises(DataError, match="time must be strictly increasing"):
        create_train_val_test_split(data)

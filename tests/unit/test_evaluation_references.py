"""Reference forecasts: persistence shifts observations exactly; climatology is the hand-computed
monthly and hourly mean, with the documented all-month fallback."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from convlstm.errors import DataError
from convlstm.evaluation.references import climatology_forecast, persistence_forecast

LAT = np.array([30.0, 31.0])
LON = np.array([100.0, 101.0, 102.0])


def precip(times, values) -> xr.DataArray:
    """Precipitation on (time, lat, lon); ``values`` per time are spread over the grid as value + cell/100."""
    times = pd.DatetimeIndex(times)
    cells = np.arange(LAT.size * LON.size, dtype=np.float64).reshape(LAT.size, LON.size) / 100.0
    data = np.asarray(values, dtype=np.float64)[:, None, None] + cells[None]
    return xr.DataArray(data, dims=("time", "lat", "lon"), coords={"time": times, "lat": LAT, "lon": LON},
                        name="precipitation", attrs={"units": "mm"})


CELLS = np.arange(6.0).reshape(2, 3) / 100.0


# ------------------------------------------------------------------------------------------ persistence


def test_persistence_is_the_observation_one_lead_earlier():
    times = pd.date_range("2001-01-01", periods=6, freq="12h")
    observed = precip(times, np.arange(6.0))  # value k at step k
    targets = times[2:]
    one_step = persistence_forecast(observed, targets, np.timedelta64(12, "h"))
    assert one_step.dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(one_step["time"].values, targets.values)
    np.testing.assert_array_equal(one_step.values, observed.values[1:5])
    np.testing.assert_array_equal(one_step["lat"].values, LAT)
    two_steps = persistence_forecast(observed, targets.values, pd.Timedelta("1D"))
    np.testing.assert_array_equal(two_steps.values, observed.values[0:4])
    assert one_step.attrs["units"] == "mm"


def test_persistence_refuses_a_missing_earlier_time():
    times = pd.date_range("2001-01-01", periods=4, freq="12h")
    observed = precip(times, np.arange(4.0))
    with pytest.raises(DataError, match="missing"):
        persistence_forecast(observed, times, np.timedelta64(12, "h"))  # the first target has no predecessor
    gappy = observed.drop_sel(time=times[1])
    with pytest.raises(DataError, match="2001-01-01 12:00"):
        persistence_forecast(gappy, times[2:], np.timedelta64(12, "h"))


def test_persistence_refuses_a_non_positive_lead():
    times = pd.date_range("2001-01-01", periods=4, freq="12h")
    with pytest.raises(DataError, match="positive"):
        persistence_forecast(precip(times, np.arange(4.0)), times, np.timedelta64(0, "h"))


# ------------------------------------------------------------------------------------------ climatology


def training_record() -> xr.DataArray:
    # Jan and Feb 2001 and Jan 2002, at 00 and 12 UTC; values chosen so the means are easy:
    times = ["2001-01-05T00", "2001-01-05T12", "2001-01-20T00", "2001-01-20T12",
             "2001-02-10T00", "2001-02-10T12", "2002-01-15T00", "2002-01-15T12"]
    values = [1.0, 10.0, 2.0, 20.0, 5.0, 50.0, 6.0, 60.0]
    return precip(times, values)


def test_climatology_is_the_monthly_mean_at_the_same_hour():
    train = training_record()
    targets = pd.DatetimeIndex(["2003-01-02T00", "2003-01-02T12", "2003-02-01T00", "2003-02-01T12"])
    clim = climatology_forecast(train, targets)
    assert clim.dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(clim["time"].values, targets.values)
    np.testing.assert_array_equal(clim["lat"].values, LAT)
    np.testing.assert_array_equal(clim["lon"].values, LON)
    np.testing.assert_allclose(clim.values[0], (1.0 + 2.0 + 6.0) / 3.0 + CELLS)  # January 00 UTC
    np.testing.assert_allclose(clim.values[1], (10.0 + 20.0 + 60.0) / 3.0 + CELLS)  # January 12 UTC
    np.testing.assert_allclose(clim.values[2], 5.0 + CELLS)  # February 00 UTC
    np.testing.assert_allclose(clim.values[3], 50.0 + CELLS)  # February 12 UTC


def test_climatology_falls_back_to_the_hour_mean_when_the_month_is_missing(caplog):
    train = training_record()
    with caplog.at_level(logging.INFO, logger="convlstm.evaluation.references"):
        clim = climatology_forecast(train, pd.DatetimeIndex(["2003-07-01T00", "2003-07-01T12", "2003-01-01T00"]))
    np.testing.assert_allclose(clim.values[0], (1.0 + 2.0 + 5.0 + 6.0) / 4.0 + CELLS)  # all 00 UTC times
    np.testing.assert_allclose(clim.values[1], (10.0 + 20.0 + 50.0 + 60.0) / 4.0 + CELLS)  # all 12 UTC times
    np.testing.assert_allclose(clim.values[2], 3.0 + CELLS)  # January exists: no fallback
    assert "all-month mean" in caplog.text and "(7, 0)" in caplog.text


def test_climatology_refuses_an_hour_absent_from_training():
    train = training_record()
    with pytest.raises(DataError, match="hour"):
        climatology_forecast(train, pd.DatetimeIndex(["2003-01-01T06"]))


def test_reference_forecasts_refuse_bad_input():
    train = training_record()
    with pytest.raises(DataError, match="dims"):
        climatology_forecast(train.expand_dims(level=[1000.0]), pd.DatetimeIndex(["2003-01-01"]))
    with pytest.raises(DataError, match="empty"):
        climatology_forecast(train, [])

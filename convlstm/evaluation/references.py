"""Reference forecasts that every model must beat, because skill is measured against what costs
nothing: persistence ("it will rain as it rained ``lead`` ago") is hard to beat at short leads,
climatology ("the usual rain for this month and time of day") at long ones."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from convlstm.errors import DataError

logger = logging.getLogger(__name__)

DIMS: tuple[str, str, str] = ("time", "lat", "lon")

TimesLike = Sequence[np.datetime64] | np.ndarray | pd.DatetimeIndex | xr.DataArray


def _target_index(target_times: TimesLike) -> pd.DatetimeIndex:
    values = target_times.values if isinstance(target_times, xr.DataArray) else target_times
    try:
        index = pd.DatetimeIndex(np.asarray(values).ravel()).as_unit("ns")
    except (TypeError, ValueError) as exc:
        raise DataError(f"target_times must be datetimes, got {type(target_times).__name__} ({exc}).") from exc
    if len(index) == 0:
        raise DataError("target_times is empty: give at least one time to forecast.")
    if index.hasnans:
        raise DataError("target_times contains NaT; give valid times only.")
    return index


def _check_field(da: xr.DataArray, name: str) -> xr.DataArray:
    if not isinstance(da, xr.DataArray):
        raise DataError(f"{name} must be an xarray.DataArray of precipitation on dims {DIMS}, got {type(da).__name__}.")
    if set(map(str, da.dims)) != set(DIMS):
        raise DataError(f"{name} has dims {tuple(map(str, da.dims))}; expected {DIMS} (precipitation, no level).")
    times = pd.DatetimeIndex(da["time"].values) if np.issubdtype(da["time"].dtype, np.datetime64) else None
    if times is None or len(times) == 0:
        raise DataError(f"{name} needs time steps on a datetime64 'time' coordinate.")
    if not times.is_unique:
        raise DataError(f"{name} has duplicate times, e.g. {times[times.duplicated()][0]}; remove them first.")
    return da.transpose(*DIMS)


def _labelled(values: np.ndarray, times: pd.DatetimeIndex, like: xr.DataArray) -> xr.DataArray:
    coords = {"time": times.values, "lat": like["lat"].values, "lon": like["lon"].values}
    return xr.DataArray(values, dims=DIMS, coords=coords, name=like.name, attrs=dict(like.attrs))


def persistence_forecast(observed_full: xr.DataArray, target_times: TimesLike,
                         lead: np.timedelta64 | pd.Timedelta | dt.timedelta) -> xr.DataArray:
    """The observed precipitation at ``target_time − lead``: the reference that is hard to beat at short leads.

    Parameters
    ----------
    observed_full : xarray.DataArray
        Observed precipitation on ``(time, lat, lon)`` holding every needed earlier time (usually the
        whole record, not just the test split, so the first test time has its predecessor).
    target_times : array-like of datetime64
        The times to forecast.
    lead : timedelta-like
        The forecast lead, positive.

    Returns
    -------
    xarray.DataArray
        On ``(time, lat, lon)``, labelled with the target times. Missing earlier times raise
        :class:`DataError` naming them, rather than silently forecasting fewer times than the models.
    """
    observed = _check_field(observed_full, "observed_full")
    targets = _target_index(target_times)
    try:
        step = pd.Timedelta(lead)
    except (TypeError, ValueError) as exc:
        raise DataError(f"lead must be a time interval such as np.timedelta64(12, 'h'), got {lead!r}.") from exc
    if pd.isna(step) or step <= pd.Timedelta(0):
        raise DataError(f"lead must be positive (persistence uses an earlier observation), got {lead!r}.")
    needed = targets - step
    available = pd.DatetimeIndex(observed["time"].values).as_unit("ns")
    missing = needed[~needed.isin(available)]
    if len(missing):
        raise DataError(
            f"Persistence at lead {step} needs observations at {len(missing)} time(s) that are missing, "
            f"e.g. {[str(t) for t in missing[:3]]}; observations cover {available[0]} to {available[-1]}. "
            "Pass the full observed record (including the times before the first target)."
        )
    values = observed.sel(time=needed.values).values
    return _labelled(values, targets, observed)


def climatology_forecast(train_precip: xr.DataArray, target_times: TimesLike) -> xr.DataArray:
    """Per grid cell, the training mean for the target's calendar month and hour (UTC): the seasonal
    and diurnal cycle as a reference.

    When training has no time in the target's month at that hour (a short record), the cell's mean
    for that hour over all training months is used instead (logged); when the hour never occurs in
    training, the climatology is undefined and :class:`DataError` is raised.

    Parameters
    ----------
    train_precip : xarray.DataArray
        Training-split precipitation on ``(time, lat, lon)``.
    target_times : array-like of datetime64
        The times to forecast.

    Returns
    -------
    xarray.DataArray
        On ``(time, lat, lon)``, labelled with the target times, on the training grid.
    """
    train = _check_field(train_precip, "train_precip")
    targets = _target_index(target_times)
    times = pd.DatetimeIndex(train["time"].values)
    values = np.asarray(train.values, dtype=np.float64)
    train_month, train_hour = times.month.to_numpy(), times.hour.to_numpy()

    missing_hours = sorted(set(targets.hour) - set(train_hour))
    if missing_hours:
        raise DataError(
            f"Climatology: the training data have no time at hour(s) {missing_hours} UTC of the target times "
            f"(training hours: {sorted(set(train_hour.tolist()))}); use training data with the same time steps."
        )
    means: dict[tuple[int, int], np.ndarray] = {}
    fallback_months = set()
    for key in set(zip(targets.month, targets.hour)):
        same = (train_month == key[0]) & (train_hour == key[1])
        if not same.any():
            same = train_hour == key[1]
            fallback_months.add((int(key[0]), int(key[1])))
        means[key] = values[same].mean(axis=0)
    out = np.stack([means[key] for key in zip(targets.month, targets.hour)])
    if fallback_months:
        logger.info("Climatology: no training data for (month, hour) %s; used the all-month mean for that hour.",
                    sorted(fallback_months))
    dtype = train.dtype if np.issubdtype(train.dtype, np.floating) else np.float64
    return _labelled(out.astype(dtype, copy=False), targets, train)

"""Bring data at its own spacing (hourly, 3-hourly, ...) to the model's time step (12 h by default).

Instantaneous fields (every variable but precipitation) are sampled at the step's times; precipitation
is summed over each step's interval ``(T - step, T]``, since ERA5's ``tp`` at ``T`` is the accumulation
over the spacing ending at ``T``. A step whose interval is not completely in the data (the file's first
times, or next to a gap) is left out, never summed partially: a partial sum would look like a dry
spell. Completeness is read from the time coordinate only, so dask-backed data stays lazy.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from convlstm.checks import require_positive_int
from convlstm.data.names import PRECIPITATION, describe_source
from convlstm.errors import ConfigError, DataError
from convlstm.settings import flag_of

logger = logging.getLogger(__name__)

#: Where the model's step is recorded, so that later code can say "mm per 12 h".
STEP_ATTR = "time_step_hours"
_HOUR = np.timedelta64(3600, "s")
_EPOCH = np.datetime64("1970-01-01T00:00", "s")  # steps are counted from 00 UTC


def regular_step(times: np.ndarray) -> Any:
    """The most common difference of consecutive times: the axis's regular step (gaps and odd steps do not count).

    Parameters
    ----------
    times : numpy.ndarray
        The time axis ``[T]`` (T >= 2), increasing; datetime64 or plain numbers.

    Returns
    -------
    numpy.timedelta64 or number
        The step, in the axis's own units.
    """
    values, counts = np.unique(np.diff(times), return_counts=True)
    return values[np.argmax(counts)]


def data_spacing_hours(times: np.ndarray | pd.Index | xr.DataArray) -> float:
    """The data's spacing in hours: the most common difference of consecutive times (gaps do not count).

    Parameters
    ----------
    times : array-like of datetime64
        The time axis, increasing.

    Returns
    -------
    float
        Hours between consecutive times, e.g. ``1.0`` for hourly ERA5.
    """
    seconds = np.asarray(times, dtype="datetime64[s]")
    if len(seconds) < 2:
        raise DataError("The data has fewer than two times, so its time spacing cannot be told.")
    return float(regular_step(seconds) / _HOUR)


def aggregate_time(data: xr.Dataset, step_hours: int = 12) -> xr.Dataset:
    """``data`` (the library layout, any spacing) at the model's step: fields sampled, precipitation summed.

    Parameters
    ----------
    data : xarray.Dataset
        The library layout (``open_dataset``), eager or dask-backed.
    step_hours : int
        The model's time step; a whole multiple of the data's spacing.

    Returns
    -------
    xarray.Dataset
        The times that are whole multiples of the step from 00 UTC and whose precipitation interval is
        complete; precipitation in mm per step; float32 and attributes kept; ``attrs["time_step_hours"]``
        set. At a step equal to the spacing, the same data (only that attribute added). Lazy stays lazy.
    """
    step_hours = require_positive_int("time_step", step_hours)
    source = describe_source(data)
    times = pd.DatetimeIndex(data["time"].values)
    spacing = data_spacing_hours(times.values)
    per_step = step_hours / spacing
    if not np.isclose(per_step, round(per_step)):
        multiples = ", ".join(f"{k * spacing:g}" for k in range(1, 5))
        raise ConfigError(
            f"{flag_of('time_step')} {step_hours} h is not a whole multiple of the {spacing:g}-h spacing of {source}: "
            f"a step's precipitation must be a sum of whole intervals. Use one of {multiples}, … h.", "time_step")
    attrs = {**data.attrs, STEP_ATTR: step_hours}
    if round(per_step) == 1:
        return data.assign_attrs(attrs)

    seconds = (times.values.astype("datetime64[s]") - _EPOCH).astype(np.int64)
    candidates = times[seconds % (step_hours * 3600) == 0]
    # Position in the data of each spacing-long piece of every candidate's interval: -1 where missing.
    pieces = np.stack([times.get_indexer(candidates - pd.Timedelta(hours=k * spacing)) for k in range(round(per_step))])
    complete = (pieces >= 0).all(axis=0)
    if not complete.any():
        raise DataError(
            f"{source} has no complete {step_hours}-h interval ending at a multiple of {step_hours} h from 00 UTC "
            f"({len(candidates)} such time(s) in {len(times)}, spacing {spacing:g} h). Check its times, or pass a "
            f"{flag_of('time_step')} its times fit.")
    if not complete.all():
        logger.info("%s: left out %d of %d %d-h steps whose precipitation interval is not completely in the data "
                    "(the first time, or next to a gap).", source, int((~complete).sum()), len(candidates), step_hours)
    kept = pieces[:, complete]

    out = data.drop_vars(PRECIPITATION).isel(time=kept[0])
    precipitation = data[PRECIPITATION].variable
    total = precipitation.isel(time=kept[0])
    for positions in kept[1:]:
        total = total + precipitation.isel(time=positions)
    out[PRECIPITATION] = (precipitation.dims, total.data.astype(precipitation.dtype, copy=False), precipitation.attrs)
    return out[list(data.data_vars)].assign_attrs(attrs)

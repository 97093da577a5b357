"""Flatten (variable, level) into channels: the 2-D layout the ConvLSTM eats.

Channel order is variable-major, precipitation last: all levels of DPT, then GPH, TEM, U, V, then
precipitation, so ``C = 5 × n_levels + 1`` (56 for 11 levels). Levels follow the dataset's order
(``open_dataset`` sorts them from the surface up).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from convlstm.data.schema import LEVEL_VARIABLES, PRECIPITATION, VARIABLES, describe_source
from convlstm.errors import ConfigError, DataError


def n_channels(n_levels: int) -> int:
    """Number of stacked channels for a given number of pressure levels: the model's ``input_channels``.

    Parameters
    ----------
    n_levels : int
        How many pressure levels (11 in the demo data).

    Returns
    -------
    int
        ``5 × n_levels + 1``.
    """
    return len(LEVEL_VARIABLES) * n_levels + 1


def channel_names(levels: np.ndarray | list[float]) -> list[str]:
    """Readable names of the stacked channels, e.g. ``DPT@850hPa``, in stacking order.

    Parameters
    ----------
    levels : array-like of float
        Pressure levels (hPa), in the data's order.

    Returns
    -------
    list of str
        One name per channel, ``precipitation`` last.
    """
    return [f"{var}@{level:g}hPa" for var in LEVEL_VARIABLES for level in levels] + [PRECIPITATION]


def stack_channels(data: xr.Dataset, time_idx: int | None = None, time_slice: slice | None = None, *,
                   allow_missing: bool = False) -> np.ndarray:
    """Stack a dataset into a float32 array ``[T, C, H, W]`` (or ``[C, H, W]`` for one ``time_idx``).

    Built in one pre-allocated contiguous array; lazily opened data is read here, once.

    Parameters
    ----------
    data : xarray.Dataset
        Data in the library's layout (usually a region cut-out).
    time_idx : int, optional
        Stack only this time step.
    time_slice : slice, optional
        Stack only these time steps (default: all); not together with ``time_idx``.
    allow_missing : bool
        Keep non-finite values, for a caller that decides per time step (:func:`missing_steps`) what
        to do with them; by default they are refused.

    Returns
    -------
    numpy.ndarray
        float32, channels in the order of the module docstring.
    """
    if time_idx is not None and time_slice is not None:
        raise ConfigError("Give either time_idx or time_slice, not both.")
    selected = data.isel(time=[time_idx] if time_idx is not None else (time_slice or slice(None)))
    n_time, n_levels = selected.sizes["time"], selected.sizes["level"]
    height, width = selected.sizes["lat"], selected.sizes["lon"]
    out = np.empty((n_time, n_channels(n_levels), height, width), dtype=np.float32)
    for k, var in enumerate(LEVEL_VARIABLES):
        out[:, k * n_levels:(k + 1) * n_levels] = selected[var].transpose("time", "level", "lat", "lon").values
    out[:, -1] = selected[PRECIPITATION].transpose("time", "lat", "lon").values
    if not allow_missing and missing_steps(out).any():
        raise DataError(
            f"{describe_source(data)} has {int((~np.isfinite(out)).sum())} non-finite values after stacking; "
            "fill them first with open_dataset(nan_policy='fill')."
        )
    return out[0] if time_idx is not None else out


def missing_steps(stacked: np.ndarray) -> np.ndarray:
    """Which time steps of a stacked array hold a NaN or infinite value anywhere (one pass over it).

    Parameters
    ----------
    stacked : numpy.ndarray
        ``[T, C, H, W]`` from :func:`stack_channels`.

    Returns
    -------
    numpy.ndarray
        bool ``[T]``.
    """
    return ~np.isfinite(stacked).reshape(len(stacked), -1).all(axis=1)


def missing_steps_lazily(data: xr.Dataset) -> np.ndarray:
    """Which time steps hold a NaN or infinite value in any variable, without stacking the data: lazily
    opened data is reduced chunk by chunk (bounded memory), so a store of any length can be checked.

    Parameters
    ----------
    data : xarray.Dataset
        Data in the library's layout (usually a region cut-out).

    Returns
    -------
    numpy.ndarray
        bool ``[T]``, as :func:`missing_steps` gives for the stacked data.
    """
    flags = xr.Dataset({var: (~np.isfinite(data[var])).any([dim for dim in data[var].dims if dim != "time"])
                        for var in VARIABLES}).compute()  # one pass over the chunks the variables share
    return np.logical_or.reduce([flags[var].values for var in VARIABLES])

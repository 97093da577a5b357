"""The names reanalysis data uses for the library's variables and dimensions, in one table.

Kept apart from :mod:`convlstm.data.schema` so that both the schema (which maps the names) and
:mod:`convlstm.data.sources` (which opens and merges files, and keeps only the variables the library
reads before anything else touches them) can use it without importing each other.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

PRECIPITATION = "precipitation"
#: Where the library records the input a dataset came from (see :func:`describe_source`).
SOURCE_ATTR = "convlstm_source"

#: Accepted names for each variable, in order of preference: standard, descriptive, ERA5/CF, ARCO-ERA5.
VARIABLE_ALIASES: dict[str, tuple[str, ...]] = {
    "DPT": ("DPT", "dew_point", "dewpoint", "dew_point_temperature"),
    "GPH": ("GPH", "geopotential_height", "gh", "hgt", "z", "geopotential"),
    "TEM": ("TEM", "temperature", "air_temperature", "t", "ta"),
    "U": ("U", "u_wind", "eastward_wind", "u", "ua", "u_component_of_wind"),
    "V": ("V", "v_wind", "northward_wind", "v", "va", "v_component_of_wind"),
    PRECIPITATION: ("precipitation", "tp", "total_precipitation", "precip", "lwe_thickness_of_precipitation_amount"),
}
#: Humidity variables from which the dew point is derived when the file has none (ERA5 style).
HUMIDITY_ALIASES: dict[str, tuple[str, ...]] = {
    "relative": ("r", "relative_humidity", "hur"),
    "specific": ("q", "specific_humidity", "hus"),
}
DIM_ALIASES: dict[str, tuple[str, ...]] = {
    "time": ("time", "valid_time"),
    "level": ("level", "pressure_level", "isobaricInhPa", "plev", "lev"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "longitude"),
}
#: Names of geopotential (m2 s-2, divided by g to give a height) when the units do not say so.
GEOPOTENTIAL_NAMES: tuple[str, ...] = ("z", "geopotential")


def find_variable(ds: xr.Dataset, aliases: tuple[str, ...]) -> str | None:
    """The first variable named like one of the aliases, or else carrying one as its CF standard_name."""
    for alias in aliases:
        if alias in ds.data_vars:
            return alias
    for var in ds.data_vars:
        if ds[var].attrs.get("standard_name") in aliases:
            return str(var)
    return None


def known_variables(ds: xr.Dataset) -> list[str]:
    """The variables of ``ds`` the library would read, so that a store of hundreds of fields is cut to those first.

    One per variable and humidity kind, chosen as the schema chooses, so that a second field sharing a
    standard_name (2 m temperature beside temperature) is not carried along.
    """
    groups = (*VARIABLE_ALIASES.values(), *HUMIDITY_ALIASES.values())
    return list(dict.fromkeys(var for aliases in groups if (var := find_variable(ds, aliases)) is not None))


def library_chunks(chunks: object) -> object:
    """``chunks`` given in library dimension names (time, level, lat, lon), spelled in every accepted name.

    xarray ignores names a file does not have, so one mapping fits files of any naming.
    """
    if not isinstance(chunks, dict):
        return chunks
    return {alias: size for key, size in chunks.items() for alias in DIM_ALIASES.get(key, (key,))}


def describe_source(data: xr.Dataset) -> str:
    """The input a dataset came from, for error messages (or a neutral name for in-memory data).

    Parameters
    ----------
    data : xarray.Dataset
        A dataset, opened by :func:`open_dataset` or not.

    Returns
    -------
    str
        What ``open_dataset`` recorded: a file's or store's path, or for several files e.g.
        ``12 files matching era5/*.nc (era5/a.nc … era5/l.nc)``; else ``"the dataset"``.
    """
    return str(data.attrs.get(SOURCE_ATTR, "the dataset"))


def format_time(value: object) -> str:
    """A time for messages, to the minute (any other value as it prints).

    Parameters
    ----------
    value : object
        A ``numpy.datetime64``, or a plain coordinate value.

    Returns
    -------
    str
        E.g. ``2000-01-02T12:00``.
    """
    return str(np.datetime_as_string(value, unit="m")) if isinstance(value, np.datetime64) else str(value)

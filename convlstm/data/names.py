"""The names reanalysis data uses for the library's variables and dimensions, in one table.

Kept apart from :mod:`convlstm.data.schema` so that both the schema (which maps the names) and
:mod:`convlstm.data.sources` (which opens and merges files, and keeps only the variables the library
reads before anything else touches them) can use it without importing each other.
"""

from __future__ import annotations

import xarray as xr

#: Accepted names for each variable, in order of preference: standard, descriptive, ERA5/CF, ARCO-ERA5.
VARIABLE_ALIASES: dict[str, tuple[str, ...]] = {
    "DPT": ("DPT", "dew_point", "dewpoint", "dew_point_temperature"),
    "GPH": ("GPH", "geopotential_height", "gh", "hgt", "z", "geopotential"),
    "TEM": ("TEM", "temperature", "air_temperature", "t", "ta"),
    "U": ("U", "u_wind", "eastward_wind", "u", "ua", "u_component_of_wind"),
    "V": ("V", "v_wind", "northward_wind", "v", "va", "v_component_of_wind"),
    "precipitation": ("precipitation", "tp", "total_precipitation", "precip", "lwe_thickness_of_precipitation_amount"),
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
#: Every name a variable the library reads may have (as its name or its CF standard_name).
KNOWN_NAMES: frozenset[str] = frozenset(
    name for table in (VARIABLE_ALIASES, HUMIDITY_ALIASES) for aliases in table.values() for name in aliases
)


def known_variables(ds: xr.Dataset) -> list[str]:
    """The variables of ``ds`` the library can read, so that a store of hundreds of fields is cut to those first."""
    return [str(var) for var in ds.data_vars if var in KNOWN_NAMES or ds[var].attrs.get("standard_name") in KNOWN_NAMES]


def library_chunks(chunks: object) -> object:
    """``chunks`` given in library dimension names (time, level, lat, lon), spelled in every accepted name.

    xarray ignores names a file does not have, so one mapping fits files of any naming.
    """
    if not isinstance(chunks, dict):
        return chunks
    return {alias: size for key, size in chunks.items() for alias in DIM_ALIASES.get(key, (key,))}

"""Open reanalysis input in any common naming and return it in the one layout the library uses.

Every later step (split, normalizer, regions, stacking) relies on this layout, so all the mapping of
names, units and orientation lives here, in one table, and bad input is refused here with a message
that names the file and the fix:

- variables ``DPT, GPH, TEM, U, V`` on ``(time, level, lat, lon)`` and ``precipitation`` on
  ``(time, lat, lon)``; temperatures in K, heights in m, winds in m s-1, precipitation in mm per step;
- latitude ascending, longitude ascending (in the file's own convention, 0..360 or -180..180),
  pressure levels descending from the surface, time strictly increasing;
- lazily opened (dask-backed) data stays lazy: only reductions for validation are computed.

Finding and merging the input (several files, GRIB, Zarr stores) is :mod:`convlstm.data.sources`;
the names accepted are in :mod:`convlstm.data.names`.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import xarray as xr

from convlstm.data.names import (
    DIM_ALIASES,
    GEOPOTENTIAL_NAMES,
    HUMIDITY_ALIASES,
    PRECIPITATION,
    SOURCE_ATTR,
    VARIABLE_ALIASES,
    describe_source,
    find_variable,
    format_time,
)
from convlstm.data.sources import Source, open_source, to_library_dims
from convlstm.data.timestep import aggregate_time
from convlstm.data.thermo import dew_point_from_relative_humidity, dew_point_from_specific_humidity
from convlstm.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

LEVEL_VARIABLES: tuple[str, ...] = ("DPT", "GPH", "TEM", "U", "V")
VARIABLES: tuple[str, ...] = (*LEVEL_VARIABLES, PRECIPITATION)
DIMS: tuple[str, ...] = ("time", "level", "lat", "lon")

STANDARD_GRAVITY = 9.80665  # m s-2: geopotential (m2 s-2) / g = geopotential height (m)
_KELVIN = 273.15

CF_ATTRS: dict[str, dict[str, str]] = {
    "DPT": {"standard_name": "dew_point_temperature", "long_name": "dew point temperature", "units": "K"},
    "GPH": {"standard_name": "geopotential_height", "long_name": "geopotential height", "units": "m"},
    "TEM": {"standard_name": "air_temperature", "long_name": "air temperature", "units": "K"},
    "U": {"standard_name": "eastward_wind", "long_name": "eastward wind", "units": "m s-1"},
    "V": {"standard_name": "northward_wind", "long_name": "northward wind", "units": "m s-1"},
    PRECIPITATION: {
        "standard_name": "lwe_thickness_of_precipitation_amount",
        "long_name": "precipitation accumulated over the time step",
        "units": "mm",
        "cell_methods": "time: sum",
    },
    "time": {"standard_name": "time", "long_name": "time"},
    "level": {"standard_name": "air_pressure", "long_name": "pressure level", "units": "hPa", "positive": "down"},
    "lat": {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north"},
    "lon": {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east"},
}

NanPolicy = Literal["raise", "drop", "fill"]
#: Marks a dataset ``open_dataset`` returned, so that opening it again costs nothing.
LAYOUT_ATTR, LAYOUT_VERSION = "convlstm_layout", 1


def open_dataset(
    source: Source | xr.Dataset,
    *,
    chunks: dict[str, int] | Literal["auto"] | None = None,
    nan_policy: NanPolicy = "raise",
    member: int | None = None,
    time_step: int | None = None,
) -> xr.Dataset:
    """Open and validate reanalysis input (or a dataset) and return it in the library's layout.

    Parameters
    ----------
    source : path-like, str, list of them, or xarray.Dataset
        In standard, descriptive, ERA5/CF or ARCO-ERA5 naming: a netCDF or GRIB file; several of them
        (a list, a comma-separated string, a glob pattern or a directory), merged on time by
        :func:`convlstm.data.sources.open_source`; a Zarr store (path or fsspec URL); or a dataset
        already open.
    chunks : dict or "auto", optional
        Passed to xarray to open lazily with dask (e.g. ``{"time": 100}``, library dimension names);
        the result then stays lazy until it is stacked. Several inputs and Zarr stores are always
        opened lazily (their own chunks when ``None``).
    nan_policy : {"raise", "drop", "fill"}
        ``"fill"`` interpolates missing values linearly in time and fills the ends with the nearest
        value. ``"raise"`` and ``"drop"`` leave them in place: only those inside the regions a model
        reads matter, so ``ConvLSTMDataset`` refuses them, or drops the windows that touch them, when it
        cuts the regions out (``"drop"`` there).
    member : int, optional
        The ensemble member (``number``) to read from input holding several; such input is refused
        without it.
    time_step : int, optional
        The model's step in hours: data at a finer spacing is brought to it by
        :func:`~convlstm.data.timestep.aggregate_time` (fields sampled, precipitation summed); None keeps
        the data's own spacing.

    Returns
    -------
    xarray.Dataset
        The six variables in the layout and units of the module docstring, float32, its source
        recorded for :func:`describe_source`. A dataset this function returned (or a selection of it)
        comes back as it is: it is in the layout already, so it is not checked twice.
    """
    if nan_policy not in ("raise", "drop", "fill"):
        raise ConfigError(f"nan_policy must be 'raise', 'drop' or 'fill', got {nan_policy!r}.", "nan_policy")
    if isinstance(source, xr.Dataset) and source.attrs.get(LAYOUT_ATTR) == LAYOUT_VERSION:
        return source
    from convlstm.data.store import is_prepared_store, open_store  # the store module builds on this one

    if is_prepared_store(source):
        stored = open_store(source)  # type: ignore[arg-type]
        return aggregate_time(stored, time_step) if time_step is not None else stored
    if isinstance(source, xr.Dataset):
        ds, name, count = source, describe_source(source), 1
    else:
        opened = open_source(source, chunks=chunks, member=member)
        ds, name, count = opened.dataset, opened.name, opened.count
    ds = _rename_dims(ds, name)
    ds = _standard_variables(ds, name, several=count > 1)
    ds = _orient(ds, name)
    ds.attrs[SOURCE_ATTR] = name
    if time_step is not None:
        ds = aggregate_time(ds, time_step)
    if nan_policy == "fill":
        ds = _fill_missing_values(ds)
    ds.attrs.update({SOURCE_ATTR: name, LAYOUT_ATTR: LAYOUT_VERSION})
    return ds


def _rename_dims(ds: xr.Dataset, name: str) -> xr.Dataset:
    for dim, aliases in DIM_ALIASES.items():
        if not any(alias in ds.dims or alias in ds.coords for alias in aliases):
            raise DataError(
                f"{name} has no '{dim}' dimension (accepted names: {', '.join(aliases)}); "
                f"its dimensions are {sorted(map(str, ds.dims))}. Rename the dimension to one of the accepted names."
            )
    ds = to_library_dims(ds)
    for dim in ds.dims:
        if dim not in DIMS:
            raise DataError(
                f"{name} has an extra dimension '{dim}' of size {ds.sizes[dim]}; expected only {', '.join(DIMS)}. "
                f"Select one member first, e.g. ds.isel({dim}=0)."
            )
    return ds


def _units(da: xr.DataArray) -> str:
    return str(da.attrs.get("units", "")).strip().replace("**", "").replace("^", "")


def _to_kelvin(da: xr.DataArray) -> xr.DataArray:
    celsius = ("degC", "C", "°C", "celsius", "Celsius", "deg_C", "degree_Celsius", "degrees_Celsius", "degree_C", "degrees_C")
    return da + _KELVIN if _units(da) in celsius else da


def _to_mm(da: xr.DataArray, var: str) -> xr.DataArray:
    units = _units(da)
    if units in ("m", "metre", "meter", "meters", "metres") or (not units and var in ("tp", "total_precipitation")):
        return da * 1000.0
    return da


def _to_height(da: xr.DataArray, var: str) -> xr.DataArray:
    units = _units(da).replace(" ", "")
    if units in ("m2s-2", "m2/s2", "m2.s-2") or (var in GEOPOTENTIAL_NAMES and not units):
        return da / STANDARD_GRAVITY
    return da


def _standard_variables(ds: xr.Dataset, name: str, several: bool = False) -> xr.Dataset:
    found = {var: find_variable(ds, aliases) for var, aliases in VARIABLE_ALIASES.items()}
    fields: dict[str, xr.DataArray] = {}
    if found["TEM"]:
        fields["TEM"] = _to_kelvin(ds[found["TEM"]])
    if found["DPT"]:
        fields["DPT"] = _to_kelvin(ds[found["DPT"]])
    elif "TEM" in fields:
        derived = _derive_dew_point(ds, fields["TEM"])
        if derived is not None:
            fields["DPT"] = derived
    if found["GPH"]:
        fields["GPH"] = _to_height(ds[found["GPH"]], found["GPH"])
    for var in ("U", "V"):
        if found[var]:
            fields[var] = ds[found[var]]
    if found[PRECIPITATION]:
        fields[PRECIPITATION] = _to_mm(ds[found[PRECIPITATION]], found[PRECIPITATION])

    missing = [var for var in VARIABLES if var not in fields]
    humidity = find_variable(ds, HUMIDITY_ALIASES["relative"]) or find_variable(ds, HUMIDITY_ALIASES["specific"])
    derivable = "DPT" in missing and "TEM" in missing and humidity is not None
    if derivable:  # not missing itself: it follows from the humidity once the temperature is there
        missing.remove("DPT")
    if missing:
        accepted = "; ".join(
            f"{var}: {', '.join(VARIABLE_ALIASES[var])}"
            + (" (or TEM with relative humidity r / specific humidity q)" if var == "DPT" else "")
            for var in missing
        )
        subject, verb, has = (f"the {name}", "lack", "They have") if several else (name, "is missing", "It has")
        derived = f" DPT will be derived from {humidity} once TEM (t) is added." if derivable else ""
        raise DataError(
            f"{subject} {verb} variable(s) {', '.join(missing)}. {has}: {', '.join(map(str, ds.data_vars)) or 'no variables'}. "
            f"Accepted names — {accepted}.{derived} Rename the variables or add them{' as another file' if several else ' to the file'}."
        )
    out = {}
    for var in VARIABLES:
        out[var] = _check_dims(fields[var], var, name).astype(np.float32, copy=False).assign_attrs(CF_ATTRS[var])
    return xr.Dataset(out, attrs=dict(ds.attrs))


def _derive_dew_point(ds: xr.Dataset, temperature: xr.DataArray) -> xr.DataArray | None:
    relative = find_variable(ds, HUMIDITY_ALIASES["relative"])
    if relative:
        logger.info("Deriving dew point from temperature and relative humidity '%s'.", relative)
        rh = ds[relative] * (100.0 if _units(ds[relative]) in ("1", "fraction", "0-1") else 1.0)
        return dew_point_from_relative_humidity(temperature, rh)
    specific = find_variable(ds, HUMIDITY_ALIASES["specific"])
    if specific:
        logger.info("Deriving dew point from pressure and specific humidity '%s'.", specific)
        q = ds[specific] / (1000.0 if _units(ds[specific]) in ("g kg-1", "g/kg") else 1.0)
        return dew_point_from_specific_humidity(_level_hpa(ds), q)
    return None


def _level_hpa(ds: xr.Dataset) -> xr.DataArray:
    level = ds["level"]
    return level / 100.0 if _units(level) in ("Pa", "pa") else level


def _check_dims(da: xr.DataArray, var: str, name: str) -> xr.DataArray:
    expected = DIMS if var in LEVEL_VARIABLES else ("time", "lat", "lon")
    if var == PRECIPITATION and "level" in da.dims and da.sizes["level"] == 1:
        da = da.squeeze("level", drop=True)
    if set(da.dims) != set(expected):
        raise DataError(
            f"{name}: variable {var} has dimensions {tuple(map(str, da.dims))}, expected {expected}. "
            f"{'Precipitation is a surface field: it must not have a level dimension.' if var == PRECIPITATION else 'Each atmospheric variable needs time, pressure level, latitude and longitude.'}"
        )
    return da.transpose(*expected)


def _orient(ds: xr.Dataset, name: str) -> xr.Dataset:
    if _units(ds["level"]) in ("Pa", "pa"):
        ds = ds.assign_coords(level=ds["level"] / 100.0)
    for dim in ("lat", "lon", "level"):
        values = ds[dim].values
        if len(np.unique(values)) != len(values):
            raise DataError(f"{name}: coordinate '{dim}' has duplicate values. Remove them, e.g. ds.drop_duplicates('{dim}').")
    for dim, ascending in (("lat", True), ("lon", True), ("level", False)):
        index = ds.indexes[dim]
        # Sorting copies every variable; most files are already in order.
        if not (index.is_monotonic_increasing if ascending else index.is_monotonic_decreasing):
            ds = ds.sortby(dim, ascending=ascending)
    _check_time(ds["time"].values, name)
    for dim in DIMS:
        ds[dim].attrs = {**CF_ATTRS[dim], **({"axis": {"lat": "Y", "lon": "X", "level": "Z", "time": "T"}[dim]})}
    return ds


def _check_time(times: np.ndarray, name: str) -> None:
    if len(times) == 0:
        raise DataError(f"{name} has no time steps.")
    steps = np.diff(times)
    if np.any(steps == np.zeros_like(steps[:1])):
        first = times[1:][steps == np.zeros_like(steps[:1])][0]
        raise DataError(f"{name}: duplicate time {format_time(first)}. Remove duplicates first, e.g. ds.drop_duplicates('time').")
    if np.any(steps < np.zeros_like(steps[:1])):
        first = times[1:][steps < np.zeros_like(steps[:1])][0]
        raise DataError(f"{name}: times are not increasing (at {format_time(first)}). Sort them first, e.g. ds.sortby('time').")


def _fill_ends_in_time(da: xr.DataArray) -> xr.DataArray:
    """Fill leading and trailing NaNs along time with the nearest valid value (xarray's ffill/bfill need bottleneck)."""

    def fill_ends(values: np.ndarray) -> np.ndarray:
        index = np.arange(values.shape[-1])
        valid = ~np.isnan(values)
        first = np.where(valid, index, values.shape[-1]).min(axis=-1, keepdims=True)
        last = np.where(valid, index, -1).max(axis=-1, keepdims=True)
        return np.take_along_axis(values, np.clip(index, first, last), axis=-1)

    filled = xr.apply_ufunc(fill_ends, da, input_core_dims=[["time"]], output_core_dims=[["time"]],
                            dask="parallelized", output_dtypes=[da.dtype], keep_attrs=True)
    return filled.transpose(*da.dims)


def _fill_missing_values(ds: xr.Dataset) -> xr.Dataset:
    """Interpolate missing values linearly in time, the ends with the nearest value; lazy data stays lazy."""
    time_chunks = ds[VARIABLES[0]].chunksizes.get("time")
    if time_chunks is not None:  # dask interpolates along one chunk only; restore the caller's chunks after
        ds = ds.chunk({"time": -1})
    filled = ds.interpolate_na("time", method="linear").map(_fill_ends_in_time, keep_attrs=True)
    return filled.chunk({"time": time_chunks}) if time_chunks is not None else filled

"""Open reanalysis input in the forms users have it and merge it into one dataset on one time axis.

The Climate Data Store delivers one file per request: pressure-level and single-level fields apart,
often one file per variable or per month, as netCDF (two layouts) or GRIB; analysis-ready archives
are Zarr stores holding hundreds of fields. :func:`open_source` turns any of these into one lazy
dataset with the library's dimension names (``time, level, lat, lon``) and the variables' own names,
which :func:`convlstm.data.schema.open_dataset` then maps to the library layout. Input that cannot be
combined safely (different grids, levels or calendars, conflicting values at the same time) is
refused naming both files, because a silent regrid or a silently chosen value would corrupt training.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

import numpy as np
import xarray as xr

from convlstm.data.names import DIM_ALIASES, format_time, known_variables, library_chunks
from convlstm.errors import DataError

logger = logging.getLogger(__name__)

NETCDF_SUFFIXES: tuple[str, ...] = (".nc", ".nc4", ".netcdf")
GRIB_SUFFIXES: tuple[str, ...] = (".grib", ".grb", ".grib2", ".grb2")
DATA_SUFFIXES: tuple[str, ...] = NETCDF_SUFFIXES + GRIB_SUFFIXES
_ZARR_MARKERS: tuple[str, ...] = ("zarr.json", ".zgroup", ".zmetadata")
#: Calendars that agree on every date the data can hold (CF names for the proleptic Gregorian one).
_GREGORIAN = frozenset({"standard", "gregorian", "proleptic_gregorian"})
_LIBRARY_DIMS: tuple[str, ...] = ("time", "level", "lat", "lon")

Source = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass
class Opened:
    """What :func:`open_source` read: the merged dataset, a name for messages, and how many inputs made it."""

    dataset: xr.Dataset
    name: str
    count: int


@dataclass
class _Part:
    """One dataset read from one input (a GRIB file may give several), with what merging must compare."""

    dataset: xr.Dataset
    name: str
    calendar: str
    #: Per variable, the step of its int16 packing (0 if unpacked): files packed apart differ by up to it.
    packing: dict[str, float]


def is_zarr_source(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` is a Zarr store: any fsspec URL, or a local ``.zarr`` folder or one with Zarr metadata.

    The one place that decides, so that a prepared-store reader can hook in on the same test.
    """
    text = os.fspath(source)
    if "://" in text:
        return True
    path = Path(text)
    return path.is_dir() and (path.suffix == ".zarr" or any((path / marker).exists() for marker in _ZARR_MARKERS))


def open_source(source: Source, *, chunks: object = None, member: int | None = None) -> Opened:
    """Open one input, or several merged on time, lazily, with the library's dimension names.

    Parameters
    ----------
    source : path-like, str or sequence of them
        A netCDF or GRIB file, a Zarr store (path or fsspec URL), a directory of data files, a glob
        pattern, a comma-separated list of any of these, or a Python list of them.
    chunks : dict, "auto" or None
        Dask chunks in library dimension names. ``None`` opens one netCDF or GRIB file without dask (as
        xarray does) and everything else with the stores' own chunks, since merging needs dask to stay lazy.
    member : int, optional
        The ensemble member (``number``) to read from files holding several.

    Returns
    -------
    Opened
        The dataset (the variables the library can read, under their own names), its description for
        messages, and the number of inputs.
    """
    items, name = _expand(source)
    several = len(items) > 1
    parts = [part for item in items for part in _open_item(item, chunks if chunks is not None or not several else {}, member)]
    if not parts:
        raise DataError(f"{name} holds no data. Pass netCDF, GRIB or Zarr input with the atmospheric fields.")
    dataset = parts[0].dataset if len(parts) == 1 else _merge(parts, name)
    return Opened(dataset, name, len(items))


# ----------------------------------------------------------------------------------------- inputs


def input_paths(source: Source) -> list[str]:
    """Every input ``source`` names (files, Zarr stores), expanded as :func:`open_source` reads them.

    Parameters
    ----------
    source : path-like, str or sequence of them
        As for :func:`open_source`.

    Returns
    -------
    list of str
        Paths or URLs, in reading order: what a prepared store records as its provenance.
    """
    return _expand(source)[0]


def _expand(source: Source) -> tuple[list[str], str]:
    """The inputs ``source`` names, and a description of them for messages."""
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if "," in text and not Path(text).exists() and not is_zarr_source(text):
            items = [part.strip() for part in text.split(",") if part.strip()]
            return _describe([path for item in items for path in _expand_one(item)], None)
        return _describe(_expand_one(text), text)
    items = [os.fspath(item) for item in source]
    if not items:
        raise DataError("The list of data files is empty. Pass at least one netCDF, GRIB or Zarr input.")
    return _describe([path for item in items for path in _expand_one(item)], None)


def _expand_one(text: str) -> list[str]:
    """One input: a Zarr store or file as it is, a directory's data files, or a glob pattern's matches, sorted."""
    if is_zarr_source(text):
        return [text]
    path = Path(text)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
        if not files:
            raise DataError(f"Directory {text} holds no data files ({', '.join(DATA_SUFFIXES)}). Put the netCDF or GRIB files there or pass their paths.")
        return files
    if not path.exists() and glob.has_magic(text):
        files = sorted(p for p in glob.glob(text) if Path(p).is_file() or is_zarr_source(p))
        if not files:
            raise DataError(f"No files match {text}. Check the pattern (quote it so that the shell does not expand it).")
        return files
    return [text]


def _describe(paths: list[str], given: str | None) -> tuple[list[str], str]:
    """E.g. ``12 files matching era5/*.nc (era5/a.nc … era5/l.nc)``; one input is named by its path."""
    if len(paths) == 1:
        return paths, paths[0]
    if given is None:
        where = ""
    elif Path(given).is_dir():
        where = f" in {given}"
    else:
        where = f" matching {given}"
    ends = f"{paths[0]}, {paths[1]}" if len(paths) == 2 else f"{paths[0]} … {paths[-1]}"
    return paths, f"{len(paths)} files{where} ({ends})"


def _open_item(item: str, chunks: object, member: int | None) -> list[_Part]:
    """The datasets one input holds, each normalised to library dimension names and cut to known variables."""
    datasets = [_open_zarr(item, chunks)] if is_zarr_source(item) else _open_file(item, chunks)
    parts = []
    for ds in datasets:
        calendar = str(_time_coordinate(ds).encoding.get("calendar", "standard")) if _has_time(ds) else "standard"
        packing = {str(var): float(ds[var].encoding.get("scale_factor", 0.0)) for var in ds.data_vars}
        ds = _normalize(ds, item, member)
        if ds.data_vars:
            parts.append(_Part(ds, item, "standard" if calendar in _GREGORIAN else calendar, packing))
        else:
            logger.info("%s holds none of the variables the library reads; skipped.", item)
    return parts


def _open_zarr(url: str, chunks: object) -> xr.Dataset:
    try:
        ds = xr.open_zarr(url, chunks=library_chunks({} if chunks is None else chunks), consolidated=None)
    except Exception as exc:  # noqa: BLE001 - any store failure means "not a readable Zarr store"
        raise DataError(f"Cannot open {url} as a Zarr store ({type(exc).__name__}: {exc}). "
                        "Check the path or URL (netCDF and GRIB files must be local paths).") from exc
    return ds[known_variables(ds)]  # a store may hold hundreds of fields: touch only ours


def _open_file(path: str, chunks: object) -> list[xr.Dataset]:
    if not Path(path).exists():
        raise DataError(f"Data file {path} does not exist. Pass the path of a netCDF or GRIB file, a directory, "
                        "a glob pattern or a Zarr store (or omit it to use the demo data).")
    grib = Path(path).suffix.lower() in GRIB_SUFFIXES
    try:
        if grib:
            import cfgrib  # optional at import time: only GRIB input needs eccodes

            # open_datasets splits files mixing level types (which open_dataset would silently cut short);
            # no index files beside the user's data; squeeze=False keeps size-1 time and level axes.
            datasets = cfgrib.open_datasets(path, backend_kwargs={"indexpath": "", "squeeze": False}, chunks=library_chunks(chunks))
        else:
            datasets = [xr.open_dataset(path, chunks=library_chunks(chunks))]
    except Exception as exc:  # noqa: BLE001 - any backend failure means "not a readable file"
        kind = "a GRIB file" if grib else "a netCDF dataset"
        hint = "Check that it is a GRIB 1 or 2 file." if grib else "Check that it is a netCDF-4/HDF5 or netCDF-3 file."
        raise DataError(f"Cannot open {path} as {kind} ({type(exc).__name__}: {exc}). {hint}") from exc
    return [ds[known_variables(ds)] for ds in datasets]


# ----------------------------------------------------------------------------------------- one dataset


def _time_coordinate(ds: xr.Dataset) -> xr.DataArray:
    return ds["valid_time"] if "valid_time" in ds.coords and "time" not in ds.dims else ds["time"]


def _has_time(ds: xr.Dataset) -> bool:
    return "time" in ds.coords or "valid_time" in ds.coords


def _normalize(ds: xr.Dataset, name: str, member: int | None) -> xr.Dataset:
    """Resolve what differs between products (forecast steps, ensemble members, ERA5T expver) and rename the axes."""
    ds = _select_member(ds, name, member)
    if "step" in ds.dims and "valid_time" in ds.coords:
        ds = _valid_time_axis(ds)
    if "expver" in ds.dims:
        ds = _combine_expver(ds)
    ds = to_library_dims(ds)
    # Packed int16 decodes to float64 (or stays integer if not scaled): the library computes in float32.
    return ds.map(lambda da: da if da.dtype == np.float32 else da.astype(np.float32), keep_attrs=True)


def to_library_dims(ds: xr.Dataset) -> xr.Dataset:
    """Rename the axes a dataset has to ``time, level, lat, lon``, drop singleton extra axes and bookkeeping coordinates.

    Parameters
    ----------
    ds : xarray.Dataset
        A dataset in any accepted naming (:data:`convlstm.data.names.DIM_ALIASES`).

    Returns
    -------
    xarray.Dataset
        The same data; axes the dataset lacks, and extra axes longer than one, are left for the caller to judge.
    """
    renames: dict[str, str] = {}
    for dim, aliases in DIM_ALIASES.items():
        found = [alias for alias in aliases if alias in ds.dims or alias in ds.coords]
        if found and found[0] != dim:
            renames[found[0]] = dim
    ds = ds.rename(renames)
    # ERA5 carries bookkeeping coordinates (number, expver, surface) and singleton axes: drop them.
    singletons = [dim for dim in ds.dims if dim not in _LIBRARY_DIMS and ds.sizes[dim] == 1]
    ds = ds.squeeze(singletons, drop=True) if singletons else ds
    return ds.drop_vars([c for c in ds.coords if c not in _LIBRARY_DIMS])


def _select_member(ds: xr.Dataset, name: str, member: int | None) -> xr.Dataset:
    """One ensemble member: refuse to guess among several, and say which exist when the one asked for does not."""
    if "number" not in ds.coords:
        return ds
    members = np.atleast_1d(ds["number"].values)
    if member is None:
        if len(members) > 1:
            raise DataError(f"{name} holds {len(members)} ensemble members (number {_span(members)}). "
                            "Choose one with member= (command line: --member).")
        return ds
    if member not in members:
        raise DataError(f"{name} has no ensemble member {member}; it holds number {_span(members)}. Pass one of those as member=.")
    return ds.sel(number=member, drop=True) if "number" in ds.dims else ds


def _span(values: np.ndarray) -> str:
    return ", ".join(map(str, values)) if len(values) <= 5 else f"{values[0]} … {values[-1]}"


def _valid_time_axis(ds: xr.Dataset) -> xr.Dataset:
    """GRIB forecasts (accumulated precipitation) are indexed by start time × step: index them by valid time.

    Steps no message filled (all NaN, e.g. 00 UTC steps of a 06/18 UTC forecast file) are dropped.
    """
    stacked = ds.stack(_valid=("time", "step"))
    valid_time = stacked["valid_time"].values
    stacked = stacked.drop_vars(["_valid", "time", "step", "valid_time"]).assign_coords(time=("_valid", valid_time))
    stacked = stacked.swap_dims(_valid="time")
    if ds.sizes["step"] > 1:
        spatial = [dim for dim in stacked.dims if dim != "time"]
        filled = reduce(np.logical_or, [stacked[var].notnull().any(spatial).values for var in stacked.data_vars])
        stacked = stacked.isel(time=np.flatnonzero(filled))
    return stacked if stacked.indexes["time"].is_monotonic_increasing else stacked.sortby("time")


def _combine_expver(ds: xr.Dataset) -> xr.Dataset:
    """ERA5 delivered with final (expver 1) and preliminary (expver 5) data: each time has values in one of them."""
    versions = [ds.sel(expver=value, drop=True) for value in ds["expver"].values]
    return reduce(lambda merged, other: merged.combine_first(other), versions)


# ----------------------------------------------------------------------------------------- merging


def _merge(parts: list[_Part], name: str) -> xr.Dataset:
    """Concatenate each variable's pieces along time and merge the variables on the times they share."""
    parts = _check_alignment(parts)
    pieces: dict[str, list[_Piece]] = {}
    for part in parts:
        for var in map(str, part.dataset.data_vars):
            pieces.setdefault(var, []).append(_Piece(part.name, part.dataset[var], part.packing[var]))
    variables = {var: _concat_in_time(var, found) for var, found in pieces.items()}
    return _common_times(variables, name).assign_attrs(parts[0].dataset.attrs)


def _check_alignment(parts: list[_Part]) -> list[_Part]:
    """Refuse parts on other grids, levels or calendars than the first; give close grids the first's exact values."""
    for part in parts:
        if "time" not in part.dataset.dims:
            raise DataError(f"{part.name} has no time dimension (accepted names: {', '.join(DIM_ALIASES['time'])}). Only time series can be merged.")
    first = parts[0]
    with_levels = next((part for part in parts if "level" in part.dataset.dims), None)
    aligned = []
    for part in parts:
        if part.calendar != first.calendar:
            raise DataError(f"{first.name} and {part.name} use different calendars ({first.calendar} and {part.calendar}). "
                            "Convert one of them so that all files share one calendar.")
        ds = part.dataset
        for dim in ("lat", "lon"):
            ds = _align_axis(ds, first.dataset, dim, f"{first.name} and {part.name} are on different grids", "Regrid them to one grid")
        if with_levels is not None and "level" in ds.dims:
            ds = _align_axis(ds, with_levels.dataset, "level", f"{with_levels.name} and {part.name} have different pressure levels",
                             "Request the same levels for every file")
        aligned.append(_Part(ds, part.name, part.calendar, part.packing))
    return aligned


def _align_axis(ds: xr.Dataset, ref: xr.Dataset, dim: str, problem: str, fix: str) -> xr.Dataset:
    """``ds`` with the reference's values of ``dim`` (in its order) when they agree to 1e-4, else a DataError."""
    if dim not in ds.dims or dim not in ref.dims:
        raise DataError(f"{problem}: one has no '{dim}' axis. {fix}.")
    values, wanted = ds[dim].values.astype(np.float64), ref[dim].values.astype(np.float64)
    if values.shape == wanted.shape and np.allclose(values, wanted, rtol=0, atol=1e-4):
        return ds.assign_coords({dim: ref[dim].values})
    if values.shape == wanted.shape and np.allclose(np.sort(values), np.sort(wanted), rtol=0, atol=1e-4):
        order = np.argsort(values)[np.argsort(np.argsort(wanted))]  # positions in ds of the reference's values
        return ds.isel({dim: order}).assign_coords({dim: ref[dim].values})
    axis = {"lat": "latitude", "lon": "longitude", "level": "levels"}[dim]
    raise DataError(f"{problem}: {axis} {_axis_summary(wanted)} vs {_axis_summary(values)}. {fix}.")


def _axis_summary(values: np.ndarray) -> str:
    if len(values) <= 6:
        return "[" + ", ".join(f"{v:g}" for v in values) + "]"
    return f"{values[0]:g} … {values[-1]:g} ({len(values)} values, step {values[1] - values[0]:g})"


@dataclass
class _Piece:
    """One variable from one input: where it came from and how finely it was packed."""

    name: str
    data: xr.DataArray
    packing: float


def _concat_in_time(var: str, found: list[_Piece]) -> xr.DataArray:
    """One variable's pieces in order of first time; times two pieces share must hold the same values (kept once).

    "The same" allows the packing step of either file: the CDS packs each file with its own scale, so one
    field downloaded twice decodes to slightly different numbers.
    """
    kept: list[_Piece] = []
    for piece in sorted((p for p in found if p.data.sizes["time"]), key=lambda p: p.data["time"].values[0]):
        da = piece.data
        for earlier in kept:
            if da.sizes["time"] == 0 or earlier.data["time"].values[-1] < da["time"].values[0]:  # cheap test first
                continue
            common = np.intersect1d(earlier.data["time"].values, da["time"].values)
            if len(common) == 0:
                continue
            # Only the shared times are read, to compare them.
            before, now = earlier.data.sel(time=common).values, da.sel(time=common).values
            if not np.allclose(before, now, rtol=0, atol=max(earlier.packing, piece.packing), equal_nan=True):
                raise DataError(f"{earlier.name} and {piece.name} both hold {var} at {len(common)} time(s) from {format_time(common[0])} "
                                "with different values. Remove one of the files, or the overlapping times from one.")
            logger.info("%s repeats %d time(s) of %s from %s with the same values; kept once.", piece.name, len(common), var, earlier.name)
            da = da.isel(time=~np.isin(da["time"].values, common))
        if da.sizes["time"]:
            kept.append(_Piece(piece.name, da, piece.packing))
    if len(kept) <= 1:
        return kept[0].data if kept else found[0].data  # an empty time axis is for the schema to refuse
    merged = xr.concat([p.data for p in kept], dim="time", coords="minimal", compat="override", join="exact")
    return merged if merged.indexes["time"].is_monotonic_increasing else merged.sortby("time")


def _common_times(variables: dict[str, xr.DataArray], name: str) -> xr.Dataset:
    """The variables on the times all of them have: a field missing at a time makes the time unusable anyway."""
    axes = {var: da["time"].values for var, da in variables.items()}
    common = reduce(np.intersect1d, axes.values())
    if len(common) == 0:
        spans = "; ".join(f"{var} {format_time(t[0])} … {format_time(t[-1])}" for var, t in axes.items())
        raise DataError(f"{name}: the variables share no time ({spans}). Pass files covering the same period.")
    dropped = len(reduce(np.union1d, axes.values())) - len(common)
    if dropped:
        extra = ", ".join(f"{var} {len(t) - len(common)}" for var, t in axes.items() if len(t) > len(common))
        logger.warning("%s: the variables cover different times; %d time step(s) not held by all of them dropped (extra steps: %s).",
                       name, dropped, extra)
        variables = {var: da.isel(time=np.isin(da["time"].values, common)) for var, da in variables.items()}
    return xr.Dataset(variables)

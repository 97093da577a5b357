"""One CF netCDF-4 writer for the files convlstm makes (the demo atmosphere, ``predictions.nc``), so that
every file is encoded the same way and appears complete or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import xarray as xr

from convlstm.atomic import atomic_path
from convlstm.errors import ConfigError

CHUNK_BYTES = 4 << 20  # about 4 MiB a chunk, cut along time


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write ``ds`` as CF netCDF-4 atomically, with the one encoding every convlstm file shares.

    Floating data variables are stored as float32, with a ``_FillValue`` (NaN) only when they hold missing
    values, in chunks of about 4 MiB along ``time``. Coordinates get no ``_FillValue``. Every datetime
    variable (``time``, ``forecast_reference_time``) is stored as int64 ``hours since`` the first ``time``
    in the proleptic Gregorian calendar. ``Conventions = "CF-1.8"`` is added when missing; ``ds`` itself is
    not changed. The file is written under a temporary name beside ``path`` and renamed onto it, so an
    interrupted write leaves the previous file (or none); it gets the permissions of any new file (0o644
    under the usual umask 022).

    Parameters
    ----------
    ds : xarray.Dataset
        The data, with its CF attributes.
    path : path-like
        The file to write; its folder is created if needed.
    compress : bool
        zlib level 1 with byte shuffling: about a third smaller, a little slower to write.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass a file name such as {path / 'data.nc'}.", "output")
    out = ds if "Conventions" in ds.attrs else ds.assign_attrs(Conventions="CF-1.8")
    with atomic_path(path) as tmp:
        out.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=_encoding(out, compress))
    return path


def _encoding(ds: xr.Dataset, compress: bool) -> dict[str, dict[str, Any]]:
    """The encoding of every variable of ``ds`` (see :func:`write_netcdf`)."""
    per_step = [4 * var.size // var.sizes["time"] for var in ds.data_vars.values() if var.sizes.get("time")]
    time_chunk = max(1, min(ds.sizes["time"], CHUNK_BYTES // max(per_step))) if per_step else 0
    encoding: dict[str, dict[str, Any]] = {str(name): {"_FillValue": None} for name in ds.coords}
    for name, var in ds.data_vars.items():
        enc: dict[str, Any] = {}
        if compress and var.dtype.kind in "iufb":
            enc.update(zlib=True, shuffle=True, complevel=1)
        if var.dtype.kind == "f":
            enc["dtype"] = "float32"
            if not bool(var.isnull().any()):
                enc["_FillValue"] = None
        if time_chunk and "time" in var.dims:
            enc["chunksizes"] = tuple(time_chunk if dim == "time" else var.sizes[dim] for dim in var.dims)
        encoding[str(name)] = enc
    time = ds.variables.get("time")
    if time is not None and time.dtype.kind == "M" and time.size:
        units = "hours since " + str(time.values.ravel()[0].astype("datetime64[s]")).replace("T", " ")
        for name, var in ds.variables.items():
            if var.dtype.kind == "M":
                encoding[str(name)].update(units=units, calendar="proleptic_gregorian", dtype="int64")
    return encoding

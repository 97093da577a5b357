"""The downstream (target) region and the upstream region to its west, and how to cut them out.

Longitudes are handled as offsets east of the region's western edge, modulo 360, so a region given in
0..360 selects the same cells of a -180..180 file as of a 0..360 one (and may cross the seam of a
global file). The cut-out carries longitudes in the region's own convention, increasing eastward.

The bounds themselves, their defaults and their checks are ``convlstm.config.RegionConfig``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import xarray as xr

from convlstm.config import RegionConfig
from convlstm.data.schema import PRECIPITATION, describe_source
from convlstm.errors import DataError

_TOL = 1e-6  # degrees: grid coordinates are compared with this slack


class RegionCrop(NamedTuple):
    """The model's input grid and where the downstream target sits in it.

    Parameters
    ----------
    data : xarray.Dataset
        The cut-out, longitudes increasing eastward in the region's own convention.
    downstream_columns : slice
        The downstream region's columns of ``data`` (all of them without the upstream region).
    """

    data: xr.Dataset
    downstream_columns: slice


def crop_regions(data: xr.Dataset, regions: RegionConfig, include_upstream: bool) -> RegionCrop:
    """Cut out the downstream region, or upstream ⊕ downstream joined along longitude (upstream west).

    Parameters
    ----------
    data : xarray.Dataset
        Opened with ``open_dataset``; lazy data stays lazy.
    regions : RegionConfig
        Bounds of both regions.
    include_upstream : bool
        Whether to join the upstream region.

    Returns
    -------
    RegionCrop
        The cut-out and the downstream columns in it.
    """
    downstream, upstream = _region_crops(data, regions, include_upstream)
    if upstream is None:
        return RegionCrop(downstream, slice(0, downstream.sizes["lon"]))
    joined = xr.concat([upstream, downstream], dim="lon", data_vars="all", coords="minimal", compat="override", join="override")
    start = upstream.sizes["lon"]
    return RegionCrop(joined, slice(start, start + downstream.sizes["lon"]))


def crop_union(data: xr.Dataset, regions: RegionConfig) -> xr.Dataset:
    """The smallest lat/lon box holding both regions: what a prepared store keeps, so that either experiment
    (and its normalizer) can be cut from it with :func:`crop_regions`.

    Parameters
    ----------
    data : xarray.Dataset
        Data in the library's layout; lazy data stays lazy.
    regions : RegionConfig
        The region bounds; the upstream region lies west of the downstream one.

    Returns
    -------
    xarray.Dataset
        From ``upstream_lon_min`` east to ``downstream_lon_max`` (longitudes in the upstream region's
        convention, increasing eastward), over the latitudes of both regions.
    """
    check_regions(data, regions, include_upstream=True)  # each region's own message first
    lat_min = min(regions.downstream_lat_min, regions.upstream_lat_min)
    lat_max = max(regions.downstream_lat_max, regions.upstream_lat_max)
    span = (regions.downstream_lon_max - regions.upstream_lon_min) % 360.0
    return _crop(data, "combined upstream and downstream", lat_min, lat_max, regions.upstream_lon_min,
                 regions.upstream_lon_min + span, include_east=True)


def downstream_precipitation(data: xr.Dataset, regions: RegionConfig, times: np.ndarray) -> xr.DataArray:
    """Observed precipitation (mm) on the downstream grid at ``times``: the truth forecasts are set beside.

    Parameters
    ----------
    data : xarray.Dataset
        Data in the library's layout.
    regions : RegionConfig
        The region bounds.
    times : numpy.ndarray
        The times wanted (all present in ``data``).

    Returns
    -------
    xarray.DataArray
        ``(time, lat, lon)``, loaded.
    """
    return crop_regions(data, regions, include_upstream=False).data[PRECIPITATION].sel(time=times).load()


def check_regions(data: xr.Dataset, regions: RegionConfig, include_upstream: bool) -> None:
    """Refuse regions that lie outside ``data`` or select grids that cannot be joined (nothing is copied).

    Parameters
    ----------
    data : xarray.Dataset
        Data in the library's layout (``open_dataset``).
    regions : RegionConfig
        The region bounds.
    include_upstream : bool
        Whether the upstream region is used too.
    """
    _region_crops(data, regions, include_upstream)


def _region_crops(data: xr.Dataset, regions: RegionConfig, include_upstream: bool) -> tuple[xr.Dataset, xr.Dataset | None]:
    """The downstream crop and, with ``include_upstream``, the upstream one in the downstream's longitude frame.

    Checked to be joinable; views of ``data`` where the cells are contiguous (no copy yet).
    """
    downstream = _crop(data, "downstream", regions.downstream_lat_min, regions.downstream_lat_max,
                       regions.downstream_lon_min, regions.downstream_lon_max, include_east=True)
    if not include_upstream:
        return downstream, None
    regions.check_upstream()
    # Regions that touch share the boundary column: it belongs to the downstream region.
    touching = abs(regions.upstream_lon_max - regions.downstream_lon_min) <= _TOL
    upstream = _crop(data, "upstream", regions.upstream_lat_min, regions.upstream_lat_max,
                     regions.upstream_lon_min, regions.upstream_lon_max, include_east=not touching)
    if upstream.sizes["lat"] != downstream.sizes["lat"] or not np.allclose(upstream["lat"], downstream["lat"]):
        raise DataError(f"{describe_source(data)}: the upstream and downstream regions select different latitude rows.")
    # Express upstream longitudes in the downstream frame so the joined axis increases eastward.
    up_lon = upstream["lon"].values
    upstream = upstream.assign_coords(
        lon=xr.DataArray(_shift_to(up_lon, regions.downstream_lon_min - ((regions.downstream_lon_min - up_lon) % 360.0)),
                         dims="lon", attrs=upstream["lon"].attrs))
    return downstream, upstream


def data_bounds(data: xr.Dataset) -> str:
    """The data's extent, for error messages.

    Parameters
    ----------
    data : xarray.Dataset
        Data with ``lat`` and ``lon`` coordinates.

    Returns
    -------
    str
        E.g. ``'lat 25..40 °N, lon 70..125 °E'``.
    """
    lat, lon = data["lat"].values, data["lon"].values
    return f"lat {lat.min():g}..{lat.max():g} °N, lon {lon.min():g}..{lon.max():g} °E"


def _crop(data: xr.Dataset, region: str, lat_min: float, lat_max: float, lon_min: float, lon_max: float,
          include_east: bool) -> xr.Dataset:
    lat = data["lat"].values
    lon = data["lon"].values
    name = describe_source(data)
    if lat_min < lat.min() - _TOL or lat_max > lat.max() + _TOL or not _lon_covered(lon, lon_min, lon_max):
        raise DataError(
            f"The {region} region (lat {lat_min:g}..{lat_max:g}, lon {lon_min:g}..{lon_max:g}) lies outside {name}, which covers "
            f"{data_bounds(data)}. Choose bounds inside the data (--{region}-lat-min etc.) or use a file that covers the region."
        )
    lat_idx = np.flatnonzero((lat >= lat_min - _TOL) & (lat <= lat_max + _TOL))
    offsets = (lon - lon_min + _TOL) % 360.0 - _TOL
    span = lon_max - lon_min
    in_lon = offsets <= span + _TOL if include_east else offsets < span - _TOL
    lon_idx = np.flatnonzero(in_lon)
    lon_idx = lon_idx[np.argsort(offsets[lon_idx], kind="stable")]
    if len(lat_idx) == 0 or len(lon_idx) == 0:
        raise DataError(
            f"The {region} region (lat {lat_min:g}..{lat_max:g}, lon {lon_min:g}..{lon_max:g}) contains no grid cell of {name} "
            f"({data_bounds(data)}). Widen the region to at least one grid spacing."
        )
    out = data.isel(lat=_as_slice(lat_idx), lon=_as_slice(lon_idx))
    return out.assign_coords(lon=xr.DataArray(_shift_to(lon[lon_idx], lon_min + offsets[lon_idx]), dims="lon", attrs=data["lon"].attrs))


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A run of consecutive indices as a slice (``isel`` then gives a view, not a copy)."""
    if np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index


def _shift_to(lon: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``lon`` moved by whole turns to ``target`` (the same meridians in another convention), exactly, without rounding noise."""
    return lon + 360.0 * np.round((target - lon) / 360.0)


def _lon_covered(lon: np.ndarray, lon_min: float, lon_max: float) -> bool:
    """Whether the data's longitudes reach across the region, whatever conventions each uses."""
    if len(lon) > 1:
        spacing = float(np.min(np.diff(lon)))
        if lon.max() - lon.min() + spacing >= 360.0 - _TOL:
            return True  # global grid: every region is covered, across the seam too
    start = lon.min() + (lon_min - lon.min()) % 360.0
    if start > lon.max() + _TOL and (start - 360.0) >= lon.min() - _TOL:
        start -= 360.0
    return start + (lon_max - lon_min) <= lon.max() + _TOL

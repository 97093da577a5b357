"""The look every figure shares, as a meteorologist expects it: lon/lat maps in °E/°N with equal aspect, a
white-to-blue scale from 0 mm for precipitation (shared by a figure's panels, so colours compare), a diverging scale
centred on 0 for errors, the downstream box, notes, one colour and marker per forecast (:data:`FORECAST_STYLES`)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import Colormap, Normalize, TwoSlopeNorm
from matplotlib.patches import Rectangle

PRECIP_LABEL = "precipitation (mm per 12 h)"
ERROR_LABEL = "error (mm)"
PRECIP_CMAP = "Blues"  # sequential; its lowest colour is (almost) white, so dry cells read as blank
ERROR_CMAP = "RdBu_r"  # diverging: blue = too dry, red = too wet, white = right
_MIN_VMAX_MM = 1.0  # a dry sample still gets a readable 0..1 mm scale
_MIN_ERROR_MM = 0.5
_CELL_TOL = 1e-6  # degrees: a cell centre on the box's edge is inside
_NOTE_BBOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}

Box = tuple[float, float, float, float]  # (lat_min, lat_max, lon_min, lon_max)

#: Colour and marker per forecast, the same in every comparison figure; other names get the fallbacks in turn.
FORECAST_STYLES: dict[str, tuple[str, str]] = {
    "baseline": ("tab:orange", "o"),
    "upstream": ("tab:blue", "s"),
    "persistence": ("tab:gray", "^"),
    "climatology": ("tab:green", "D"),
    "ridge_baseline": ("darkgoldenrod", "v"),  # the ridge regressions: darker shades of their networks' colours
    "ridge_upstream": ("navy", "P"),
}
_FALLBACK_STYLES = [("tab:purple", "v"), ("tab:brown", "P"), ("tab:pink", "X"), ("tab:olive", "*"), ("tab:cyan", "h")]


def precip_panel(ax: Axes, field: xr.DataArray, norm: Normalize, title: str, box: Box | None = None) -> QuadMesh:
    """One precipitation map: white-to-blue from 0 mm, the shared ``norm``, optional downstream box.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    field : xarray.DataArray
        Precipitation (mm) on ``(lat, lon)``.
    norm : matplotlib.colors.Normalize
        The scale all panels of the figure share (top from :func:`precip_vmax`).
    title : str
        Panel title ('' for none).
    box : tuple of float, optional
        ``(lat_min, lat_max, lon_min, lon_max)`` of the downstream region to outline.

    Returns
    -------
    matplotlib.collections.QuadMesh
        The drawn field, for a colour bar.
    """
    return draw_field(ax, field, PRECIP_CMAP, norm, title, box=box)


def draw_field(
    ax: Axes, field: xr.DataArray, cmap: str | Colormap, norm: Normalize, title: str, box: Box | None = None
) -> QuadMesh:
    """Draw a 2-D (lat, lon) field as cell-centred pixels on a lon/lat map with equal aspect; NaN cells stay blank.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        Where to draw.
    field : xarray.DataArray
        Values on ``lat`` and ``lon`` (degrees), in any dim order.
    cmap : str or matplotlib.colors.Colormap
        The colour map.
    norm : matplotlib.colors.Normalize
        The colour scale.
    title : str
        Panel title ('' for none).
    box : tuple of float, optional
        ``(lat_min, lat_max, lon_min, lon_max)`` to outline, snapped to the cell edges.

    Returns
    -------
    matplotlib.collections.QuadMesh
        The drawn field, for a colour bar.
    """
    lon, lat = field["lon"].values, field["lat"].values
    mesh = ax.pcolormesh(lon, lat, np.ma.masked_invalid(field.transpose("lat", "lon").values),
                         cmap=cmap, norm=norm, shading="nearest", rasterized=True)
    ax.set_aspect("equal")
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    if title:
        ax.set_title(title, fontsize=11)
    if box is not None:
        _draw_box(ax, box, field)
    return mesh


def _draw_box(ax: Axes, box: Box, field: xr.DataArray) -> None:
    """Outline the downstream region (white under black dashes: visible on white and on deep blue).

    The outline follows the edges of the grid cells whose centres lie in the box, as ``pcolormesh``
    draws them, so on a coarse grid it encloses whole cells, the same ones the predicted panel shows.
    """
    lat_min, lat_max = _snap_to_cells(field["lat"].values, box[0], box[1])
    lon_min, lon_max = _snap_to_cells(field["lon"].values, box[2], box[3])
    for color, width, style in (("white", 3.5, "-"), ("black", 1.8, "--")):
        ax.add_patch(Rectangle((lon_min, lat_min), lon_max - lon_min, lat_max - lat_min, fill=False,
                               edgecolor=color, linewidth=width, linestyle=style, zorder=3, clip_on=False))
    ax.annotate("downstream", xy=(lon_min, lat_max), xytext=(3, -3), textcoords="offset points",
                ha="left", va="top", fontsize=8, zorder=4, bbox=_NOTE_BBOX)


def _snap_to_cells(centres: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Outer edges of the cells centred in ``[low, high]`` (the bounds themselves if none is)."""
    centres = np.asarray(centres, dtype=float)
    inside = centres[(centres >= low - _CELL_TOL) & (centres <= high + _CELL_TOL)]
    if inside.size == 0 or centres.size < 2:
        return low, high
    half = float(np.median(np.diff(centres))) / 2.0
    return float(inside.min()) - half, float(inside.max()) + half


def corner_note(ax: Axes, text: str) -> None:
    """A small note in the top-right corner of a map, readable on any colour.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The map.
    text : str
        The note, e.g. a score.
    """
    ax.annotate(text, xy=(1.0, 1.0), xycoords="axes fraction", xytext=(-3, -3), textcoords="offset points",
                ha="right", va="top", fontsize=8, zorder=4, bbox=_NOTE_BBOX)


def precip_vmax(*fields: np.ndarray) -> float:
    """Shared colour-scale top: the 99th percentile of all panels, at least 1 mm (outliers saturate).

    Parameters
    ----------
    *fields : numpy.ndarray
        The panels' values (mm), any shapes; NaNs are ignored.

    Returns
    -------
    float
        The top of the scale (mm).
    """
    values = np.concatenate([np.ravel(f) for f in fields])
    values = values[np.isfinite(values)]
    top = float(np.percentile(values, 99)) if values.size else 0.0
    return max(top, _MIN_VMAX_MM)


def error_norm(err: np.ndarray, floor: float = _MIN_ERROR_MM) -> TwoSlopeNorm:
    """Diverging scale centred on 0 to ± the 99th percentile of |error|, at least ``floor``.

    Parameters
    ----------
    err : numpy.ndarray
        Forecast minus observed (mm); NaNs are ignored.
    floor : float
        The smallest limit (mm), so a near-perfect forecast is not drawn in saturated colours.

    Returns
    -------
    matplotlib.colors.TwoSlopeNorm
        The symmetric scale.
    """
    values = np.abs(err[np.isfinite(err)])
    limit = max(float(np.percentile(values, 99)) if values.size else 0.0, floor)
    return TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)


def forecast_styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per forecast: the fixed ones for known names, the fallbacks in turn for others.

    Parameters
    ----------
    names : sequence of str
        The forecasts of one figure, e.g. ``["baseline", "upstream", "persistence"]``.

    Returns
    -------
    dict of str to tuple of str
        A matplotlib colour and marker per name.
    """
    unknown = iter(_FALLBACK_STYLES * (1 + len(names) // len(_FALLBACK_STYLES)))
    return {name: FORECAST_STYLES.get(name) or next(unknown) for name in names}


def extent(da: xr.DataArray, dim: str) -> float:
    """Width in degrees covered by the cells of ``dim`` (one cell spacing added for the cell edges).

    Parameters
    ----------
    da : xarray.DataArray
        A field with coordinate ``dim``.
    dim : str
        ``lat`` or ``lon``.

    Returns
    -------
    float
        The width (degrees); a single cell counts as 1°.
    """
    vals = da[dim].values.astype(float)
    step = float(np.median(np.diff(vals))) if len(vals) > 1 else 1.0
    return float(vals.max() - vals.min()) + step


def fmt_time(value: object) -> str:
    """'YYYY-MM-DD HH:MM UTC' for datetimes, the plain value otherwise: how titles show a time.

    Parameters
    ----------
    value : object
        A time (numpy, pandas, or a 0-d array of one) or anything else.

    Returns
    -------
    str
        The text.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (np.datetime64, pd.Timestamp)):
        return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def unit_of(label: str) -> str:
    """The unit in a label's trailing parentheses ('RMSE (mm)' -> 'mm'), '' if none.

    Parameters
    ----------
    label : str
        An axis or score label.

    Returns
    -------
    str
        The unit.
    """
    match = re.search(r"\(([^()]*)\)\s*$", label)
    return match.group(1) if match else ""

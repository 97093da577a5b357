"""Figures for training and inference: loss curve, observed / predicted / error maps, a forecast map.

Every figure is built on its own ``matplotlib.figure.Figure`` (never pyplot's global state), so calls
are independent, safe in threads and need no display; every file is written through
:func:`convlstm.atomic.atomic_path`, so a crash never leaves a half-written PNG in place of a good one.

Conventions a meteorologist expects: longitude/latitude axes in °E/°N with equal aspect, a sequential
colour map starting at white for precipitation (0 to a shared maximum across the observed and predicted
panels, so their colours compare), and a diverging map centred on zero for the error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import Colormap, Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from convlstm.atomic import atomic_path

__all__ = [
    "ERROR_LABEL",
    "PRECIP_LABEL",
    "plot_loss_curve",
    "plot_precipitation_maps",
    "plot_prediction_map",
]

PRECIP_LABEL = "precipitation (mm per 12 h)"
ERROR_LABEL = "error (mm)"
PRECIP_CMAP = "Blues"  # sequential; its lowest colour is (almost) white, so dry cells read as blank
ERROR_CMAP = "RdBu_r"  # diverging: blue = too dry, red = too wet, white = right
DPI = 120
_MIN_VMAX_MM = 1.0  # a dry sample still gets a readable 0..1 mm scale
_MIN_ERROR_MM = 0.5
_COORD_TOL = 1e-6  # degrees: grids are compared with this slack

Box = tuple[float, float, float, float]  # (lat_min, lat_max, lon_min, lon_max)


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def plot_loss_curve(history: Sequence[dict[str, float]], path: str | os.PathLike[str]) -> Path:
    """Write the training/validation loss and the validation RMSE (mm) per epoch; return ``path``.

    The best epoch (lowest validation loss, the one whose checkpoint is kept) is marked, so a reader
    sees at a glance whether training went on long past it.
    """
    return _save(_build_loss_curve(history), path)


def plot_precipitation_maps(
    observed: xr.DataArray,
    predicted: xr.DataArray,
    path: str | os.PathLike[str],
    downstream_box: Box,
    title: str = "",
    max_times: int = 4,
) -> Path:
    """Write observed (input grid) / predicted (downstream) / error maps for a few times; return ``path``.

    ``observed`` is precipitation (mm) on ``(time, lat, lon)`` over the model's input grid,
    ``predicted`` the same over the downstream region only; they are aligned on time labels. Up to
    ``max_times`` rows are shown: the common times are split into that many consecutive groups and
    the wettest time (observed mean over the downstream grid) of each is drawn, so the rows are spread
    over the period and show rain rather than empty maps. ``downstream_box`` is
    ``(lat_min, lat_max, lon_min, lon_max)`` and is outlined on the observed panels.
    Raises ``ValueError`` if the predicted grid is not inside the observed one or no time is shared.
    """
    return _save(_build_precipitation_maps(observed, predicted, downstream_box, title, max_times), path)


def plot_prediction_map(
    predicted: xr.DataArray,
    path: str | os.PathLike[str],
    observed: xr.DataArray | None = None,
    downstream_box: Box | None = None,
    title: str = "",
) -> Path:
    """Write one forecast map, alone or beside an observed map on the same colour scale; return ``path``.

    Both arrays are 2-D ``(lat, lon)`` or carry a single time. The box, if given, is outlined on the
    observed panel (or on the forecast when there is no observed one). Each panel is labelled with its
    own valid time, since inference may show the latest observed input next to the forecast.
    """
    return _save(_build_prediction_map(predicted, observed, downstream_box, title), path)


# ----------------------------------------------------------------------------------------------------
# Figure builders (private; they return the Figure so tests can inspect it)
# ----------------------------------------------------------------------------------------------------


def _build_loss_curve(history: Sequence[dict[str, float]]) -> Figure:
    """Losses on the left axis, validation RMSE (mm) on a twin right axis, best epoch marked."""
    if not history:
        raise ValueError("Cannot plot a loss curve from an empty history: train for at least one epoch first.")
    missing = {"epoch", "train_loss", "val_loss"} - set(history[0])
    if missing:
        raise ValueError(f"History rows need the keys epoch, train_loss, val_loss; missing {sorted(missing)}.")
    epochs = np.array([row["epoch"] for row in history], dtype=float)
    train = np.array([row["train_loss"] for row in history], dtype=float)
    val = np.array([row["val_loss"] for row in history], dtype=float)
    rmse = np.array([row.get("val_rmse_mm", np.nan) for row in history], dtype=float)
    marker = "o" if len(history) <= 30 else None  # a single epoch must still show as a point

    fig = Figure(figsize=(8.0, 4.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(epochs, train, marker=marker, color="tab:blue", label="training loss")
    ax.plot(epochs, val, marker=marker, color="tab:orange", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (normalised units)")
    ax.grid(True, alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)

    handles, labels = ax.get_legend_handles_labels()
    if np.isfinite(rmse).any():
        ax_rmse = ax.twinx()
        (line,) = ax_rmse.plot(epochs, rmse, marker=marker, linestyle="--", color="tab:green", label="validation RMSE (mm)")
        ax_rmse.set_ylabel("validation RMSE (mm)", color="tab:green")
        ax_rmse.tick_params(axis="y", colors="tab:green")
        handles.append(line)
        labels.append(line.get_label())

    if np.isfinite(val).any():
        best = int(np.nanargmin(val))
        vline = ax.axvline(epochs[best], color="grey", linestyle=":", linewidth=1.5,
                           label=f"best epoch {epochs[best]:g} (val loss {val[best]:.4g})")
        ax.plot(epochs[best], val[best], marker="*", markersize=14, color="tab:red", zorder=5)
        handles.append(vline)
        labels.append(vline.get_label())
    if len(epochs) == 1:
        ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        ax.set_xticks(epochs)
    ax.legend(handles, labels, loc="upper right", framealpha=0.9)
    ax.set_title("Training history")
    return fig


def _build_precipitation_maps(
    observed: xr.DataArray, predicted: xr.DataArray, box: Box, title: str, max_times: int
) -> Figure:
    """Grid of rows (times) x columns (observed, predicted, error); one colour bar per quantity."""
    if max_times < 1:
        raise ValueError(f"max_times must be at least 1, got {max_times}.")
    observed = _as_fields(observed, "observed", need_time=True)
    predicted = _as_fields(predicted, "predicted", need_time=True)
    obs_down = _on_grid_of(observed, predicted)  # observed cut to the downstream grid (raises if outside)

    common = np.intersect1d(observed["time"].values, predicted["time"].values)
    if common.size == 0:
        raise ValueError(
            f"observed and predicted share no time: observed covers {_time_range(observed)}, "
            f"predicted covers {_time_range(predicted)}. Pass predictions for times present in the observations."
        )
    wetness = obs_down.sel(time=common).mean(["lat", "lon"], skipna=True).values
    chosen = _spread_wettest(np.nan_to_num(wetness, nan=-np.inf), max_times)
    times = common[chosen]

    obs = observed.sel(time=times)
    pred = predicted.sel(time=times)
    err = pred - obs_down.sel(time=times)
    vmax = _precip_vmax(obs.values, pred.values)
    elim = _error_limit(err.values)

    n = len(times)
    obs_w, down_w, height = _extent(obs, "lon"), _extent(pred, "lon"), _extent(obs, "lat")
    fig_w = 15.0
    row_h = min(4.5, max(1.8, 0.8 * fig_w * height / (obs_w + 2 * down_w) + 0.7))
    fig = Figure(figsize=(fig_w, n * row_h + 1.6), dpi=DPI, layout="compressed")
    axes = fig.subplots(n, 3, squeeze=False, sharey=True,
                        gridspec_kw={"width_ratios": [obs_w, down_w, down_w]})
    precip_norm = Normalize(0.0, vmax)
    error_norm = TwoSlopeNorm(vcenter=0.0, vmin=-elim, vmax=elim)
    for row, time in enumerate(times):
        ax_obs, ax_pred, ax_err = axes[row]
        first, last = row == 0, row == n - 1
        precip_mesh = _precip_panel(ax_obs, obs.isel(time=row), precip_norm,
                                    "observed (input grid)" if first else "", box=box)
        _precip_panel(ax_pred, pred.isel(time=row), precip_norm, "predicted (downstream)" if first else "")
        error_mesh = _draw_field(ax_err, err.isel(time=row), ERROR_CMAP, error_norm,
                                 "error: predicted − observed" if first else "")
        ax_obs.set_ylabel(f"{_fmt_time(time)}\nlatitude (°N)", fontsize=10)
        ax_obs.yaxis.label.set_fontweight("bold")
        for ax in (ax_pred, ax_err):
            ax.set_ylabel("")
        if not last:
            for ax in (ax_obs, ax_pred, ax_err):
                ax.set_xlabel("")
                ax.tick_params(labelbottom=False)
    fig.colorbar(precip_mesh, ax=axes[:, :2].ravel().tolist(), location="bottom", shrink=0.6,
                 aspect=40, extend="max", label=PRECIP_LABEL)
    fig.colorbar(error_mesh, ax=axes[:, 2].ravel().tolist(), location="bottom", shrink=0.9,
                 aspect=20, extend="both", label=ERROR_LABEL)
    fig.suptitle(title or "Observed and predicted precipitation", fontsize=13)
    return fig


def _build_prediction_map(
    predicted: xr.DataArray, observed: xr.DataArray | None, box: Box | None, title: str
) -> Figure:
    """One or two panels sharing a precipitation scale, each labelled with its own time."""
    pred = _single_time(predicted, "predicted")
    obs = None if observed is None else _single_time(observed, "observed")
    fields = [pred] if obs is None else [obs, pred]
    vmax = _precip_vmax(*(f.values for f in fields))
    norm = Normalize(0.0, vmax)

    widths = [_extent(f, "lon") for f in fields]
    height = max(_extent(f, "lat") for f in fields)
    fig_w = 7.0 if obs is None else 13.0
    # map height at full width, plus room for titles, axis labels and the colour bar (a short figure
    # makes the layout engine overlap the suptitle with the panel titles)
    fig_h = min(9.0, max(4.5, 0.85 * fig_w * height / sum(widths) + 2.8))
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI, layout="compressed")
    axes = fig.subplots(1, len(fields), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    meshes: list[QuadMesh] = []
    for ax, field, name in zip(axes, fields, ["predicted"] if obs is None else ["observed", "predicted"]):
        label = f"{name}, {_fmt_time(field['time'].values)}" if "time" in field.coords else name
        draw_box = box if (name == "observed" or obs is None) else None
        meshes.append(_precip_panel(ax, field, norm, label, box=draw_box))
    fig.colorbar(meshes[-1], ax=list(axes), location="bottom", shrink=0.7, aspect=35, extend="max", label=PRECIP_LABEL)
    fig.suptitle(title or "Precipitation forecast", fontsize=13)
    return fig


# ----------------------------------------------------------------------------------------------------
# Drawing helpers shared by every map
# ----------------------------------------------------------------------------------------------------


def _precip_panel(ax: Axes, field: xr.DataArray, norm: Normalize, title: str, box: Box | None = None) -> QuadMesh:
    """One precipitation map: white-to-blue from 0 mm, the shared ``norm``, optional downstream box."""
    return _draw_field(ax, field, PRECIP_CMAP, norm, title, box=box)


def _draw_field(
    ax: Axes, field: xr.DataArray, cmap: str | Colormap, norm: Normalize, title: str, box: Box | None = None
) -> QuadMesh:
    """Draw a 2-D (lat, lon) field as cell-centred pixels on a lon/lat map with equal aspect."""
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
                ha="left", va="top", fontsize=8, zorder=4,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})


# ----------------------------------------------------------------------------------------------------
# Data helpers
# ----------------------------------------------------------------------------------------------------


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to PNG atomically (the temporary name ends in .tmp, so the format is explicit)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _as_fields(da: xr.DataArray, name: str, need_time: bool) -> xr.DataArray:
    """Check dims and return ``da`` as (time, lat, lon) (or (lat, lon)), computed if lazy."""
    expected = {"time", "lat", "lon"} if need_time else {"lat", "lon"}
    if not isinstance(da, xr.DataArray) or set(da.dims) != expected:
        dims = tuple(map(str, da.dims)) if isinstance(da, xr.DataArray) else type(da).__name__
        raise ValueError(f"{name} must be a DataArray on dims {tuple(sorted(expected, reverse=True))}, got {dims}.")
    for dim in ("lat", "lon"):
        if dim not in da.coords:
            raise ValueError(f"{name} has no '{dim}' coordinate values; assign them before plotting.")
    order = ("time", "lat", "lon") if need_time else ("lat", "lon")
    return da.transpose(*order).sortby("lat").sortby("lon").load()


def _single_time(da: xr.DataArray, name: str) -> xr.DataArray:
    """A 2-D (lat, lon) field from a 2-D array or one with a single time (kept as a scalar coordinate)."""
    if "time" in da.dims:
        if da.sizes["time"] != 1:
            raise ValueError(f"{name} must hold one time for a single map, got {da.sizes['time']}; select one with .isel(time=i).")
        da = da.isel(time=0)
    return _as_fields(da, name, need_time=False)


def _on_grid_of(observed: xr.DataArray, predicted: xr.DataArray) -> xr.DataArray:
    """``observed`` restricted to ``predicted``'s lat/lon cells; ValueError if any cell is missing."""
    indexers = {}
    for dim, unit in (("lat", "°N"), ("lon", "°E")):
        obs_vals, pred_vals = observed[dim].values.astype(float), predicted[dim].values.astype(float)
        nearest = np.abs(obs_vals[None, :] - pred_vals[:, None]).argmin(axis=1)
        off = np.abs(obs_vals[nearest] - pred_vals) > _COORD_TOL
        if off.any():
            raise ValueError(
                f"predicted grid is not inside the observed grid: predicted {dim} {pred_vals[off][:5].tolist()} {unit} "
                f"not among observed {dim} {obs_vals.min():g}..{obs_vals.max():g} {unit} ({len(obs_vals)} values). "
                "Pass observations on the model's input grid, which contains the downstream region."
            )
        indexers[dim] = nearest
    return observed.isel(**indexers).assign_coords(lat=predicted["lat"].values, lon=predicted["lon"].values)


def _spread_wettest(wetness: np.ndarray, k: int) -> np.ndarray:
    """Indices of the wettest time in each of ``k`` consecutive groups: spread out and rainy, in order."""
    groups = np.array_split(np.arange(len(wetness)), min(k, len(wetness)))
    return np.array([g[int(np.argmax(wetness[g]))] for g in groups])


def _precip_vmax(*fields: np.ndarray) -> float:
    """Shared colour-scale top: the 99th percentile of all panels, at least 1 mm (outliers saturate)."""
    values = np.concatenate([np.ravel(f) for f in fields])
    values = values[np.isfinite(values)]
    top = float(np.percentile(values, 99)) if values.size else 0.0
    return max(top, _MIN_VMAX_MM)


def _error_limit(err: np.ndarray) -> float:
    """Symmetric error limit: the 99th percentile of |error|, at least 0.5 mm."""
    values = np.abs(err[np.isfinite(err)])
    return max(float(np.percentile(values, 99)) if values.size else 0.0, _MIN_ERROR_MM)


def _snap_to_cells(centres: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Outer edges of the cells centred in ``[low, high]`` (the bounds themselves if none is)."""
    centres = np.asarray(centres, dtype=float)
    inside = centres[(centres >= low - _COORD_TOL) & (centres <= high + _COORD_TOL)]
    if inside.size == 0 or centres.size < 2:
        return low, high
    half = float(np.median(np.diff(centres))) / 2.0
    return float(inside.min()) - half, float(inside.max()) + half


def _extent(da: xr.DataArray, dim: str) -> float:
    """Width in degrees covered by the cells of ``dim`` (one cell spacing added for the cell edges)."""
    vals = da[dim].values.astype(float)
    step = float(np.median(np.diff(vals))) if len(vals) > 1 else 1.0
    return float(vals.max() - vals.min()) + step


def _fmt_time(value: object) -> str:
    """'YYYY-MM-DD HH:MM UTC' for datetimes, the plain value otherwise."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (np.datetime64, pd.Timestamp)):
        return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _time_range(da: xr.DataArray) -> str:
    """First..last time and count, for error messages."""
    times = da["time"].values
    return f"{_fmt_time(times[0])} .. {_fmt_time(times[-1])} ({len(times)} times)"


"""Figures for training, inference and the upstream-vs-baseline comparison.

Training and inference: loss curve, observed / predicted / error maps, a forecast map. Comparison: a map
of a score difference (upstream − baseline), case maps of the truth beside each forecast, CSI bars with
bootstrap intervals, a performance diagram (Roebber 2009) and an error time series.

Every figure is built on its own ``matplotlib.figure.Figure`` (never pyplot's global state), so calls
are independent, safe in threads and need no display; every file is written through
:func:`convlstm.atomic.atomic_path`, so a crash never leaves a half-written PNG in place of a good one.

Conventions a meteorologist expects: longitude/latitude axes in °E/°N with equal aspect, a sequential
colour map starting at white for precipitation (0 to a shared maximum across the observed and predicted
panels, so their colours compare), and a diverging map centred on zero for the error. In the comparison
figures each forecast keeps one colour and marker throughout (see :data:`FORECAST_STYLES`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.collections import QuadMesh
from matplotlib.colors import Colormap, Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from convlstm.atomic import atomic_path

__all__ = [
    "ERROR_LABEL",
    "FORECAST_STYLES",
    "PRECIP_LABEL",
    "plot_case_maps",
    "plot_csi_bars",
    "plot_difference_map",
    "plot_error_by_time",
    "plot_loss_curve",
    "plot_performance_diagram",
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
_MIN_DIFF_MM = 0.01  # a score-difference map of (almost) zeros still gets a finite symmetric scale
UPSTREAM_BETTER = "← upstream better  |  baseline better →"  # negative = blue = upstream lower (better)

#: Colour and marker per forecast, the same in every comparison figure; other names get the fallbacks in turn.
FORECAST_STYLES: dict[str, tuple[str, str]] = {
    "baseline": ("tab:orange", "o"),
    "upstream": ("tab:blue", "s"),
    "persistence": ("tab:gray", "^"),
    "climatology": ("tab:green", "D"),
}
_FALLBACK_STYLES = [("tab:purple", "v"), ("tab:brown", "P"), ("tab:pink", "X"), ("tab:olive", "*"), ("tab:cyan", "h")]
CSI_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BIAS_LEVELS = (0.5, 1.0, 1.5, 2.0, 4.0)

Box = tuple[float, float, float, float]  # (lat_min, lat_max, lon_min, lon_max)
_NOTE_BBOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}


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


def plot_difference_map(
    diff: xr.DataArray,
    path: str | os.PathLike[str],
    title: str = "RMSE difference (upstream − baseline)",
    label: str = "RMSE difference (mm)",
) -> Path:
    """Write a map of a per-cell score difference (upstream − baseline); return ``path``.

    ``diff`` is 2-D ``(lat, lon)`` (or carries a single time). The colour scale is diverging and
    symmetric about 0: blue (negative) means the upstream model's error is lower there, and the colour
    bar says so. The panel title gives the domain mean and the share of cells where upstream is better.
    """
    return _save(_build_difference_map(diff, title, label), path)


def plot_case_maps(
    truth: xr.DataArray,
    forecasts: dict[str, xr.DataArray],
    path: str | os.PathLike[str],
    times: Sequence[object] | None = None,
    max_times: int = 3,
    title: str = "",
) -> Path:
    """Write truth-beside-forecast maps for a few cases; return ``path``.

    Rows are times, columns the truth then each forecast in ``forecasts``' order, all on one
    precipitation colour scale; each forecast panel notes its RMSE against the truth for that time.
    ``times`` picks the rows (labels present in ``truth``); by default the ``max_times`` wettest truth
    times (grid mean) are shown, in time order. All arrays must be ``(time, lat, lon)`` on the same
    times and grid; ``ValueError`` otherwise.
    """
    return _save(_build_case_maps(truth, forecasts, times, max_times, title), path)


def plot_csi_bars(
    csi: dict[str, dict[str, tuple[float, float, float]]],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Write grouped CSI bars per threshold with asymmetric interval bars; return ``path``.

    ``csi[forecast][threshold] = (value, low, high)``, e.g. ``csi["upstream"]["5mm"]``. Thresholds are
    the inner keys (in numeric order when all read as "<number>mm"), one bar per forecast in the outer
    order. A NaN value leaves its bar out (marked "n/a"); NaN bounds leave out only the interval bar.
    """
    return _save(_build_csi_bars(csi, title), path)


def plot_performance_diagram(
    points: dict[str, dict[str, tuple[float, float]]],
    path: str | os.PathLike[str],
    title: str = "",
) -> Path:
    """Write a performance diagram (Roebber 2009); return ``path``.

    ``points[forecast][threshold] = (success_ratio, pod)`` with success ratio = 1 − FAR. The
    background shows labelled CSI contours and dashed frequency-bias lines (bias = POD / SR); each
    forecast's points are joined in threshold order and labelled with the threshold. NaN points are
    skipped. A perfect forecast sits in the top-right corner.
    """
    return _save(_build_performance_diagram(points, title), path)


def plot_error_by_time(
    errors: dict[str, xr.DataArray],
    path: str | os.PathLike[str],
    title: str = "",
    ylabel: str = "RMSE (mm)",
) -> Path:
    """Write one line per forecast of an error score over time (1-D DataArrays on ``time``); return ``path``.

    Dates are labelled with matplotlib's concise date formatter; the legend gives each forecast's mean.
    """
    return _save(_build_error_by_time(errors, title, ylabel), path)


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


def _build_difference_map(diff: xr.DataArray, title: str, label: str) -> Figure:
    """One diverging map symmetric about 0 (blue = upstream better), summary in the panel title."""
    field = _single_time(diff, "diff")
    values = field.values.astype(float)
    limit = _error_limit(values, floor=_MIN_DIFF_MM)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)

    width, height = _extent(field, "lon"), _extent(field, "lat")
    fig_w = 7.0
    fig_h = min(9.0, max(5.0, 0.8 * fig_w * height / width + 2.4))
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI, layout="compressed")
    ax = fig.add_subplot()
    mesh = _draw_field(ax, field, ERROR_CMAP, norm, _difference_summary(values, _unit_of(label)))
    fig.colorbar(mesh, ax=ax, location="bottom", shrink=0.85, aspect=30, extend="both",
                 label=f"{label}\n{UPSTREAM_BETTER}")
    fig.suptitle(title or "Score difference (upstream − baseline)", fontsize=13)
    return fig


def _build_case_maps(
    truth: xr.DataArray, forecasts: dict[str, xr.DataArray], times: Sequence[object] | None, max_times: int, title: str
) -> Figure:
    """Rows (times) x columns (truth, then each forecast) on one precipitation scale; one colour bar."""
    if max_times < 1:
        raise ValueError(f"max_times must be at least 1, got {max_times}.")
    if not forecasts:
        raise ValueError("forecasts is empty: pass at least one forecast to show beside the truth.")
    truth = _as_fields(truth, "truth", need_time=True).sortby("time")
    fields = {name: _as_fields(f, f"forecast '{name}'", need_time=True).sortby("time") for name, f in forecasts.items()}
    for name, field in fields.items():
        _check_aligned(truth, field, f"forecast '{name}'")
    chosen = _wettest(truth, max_times) if times is None else _positions(truth, times)

    truth = truth.isel(time=chosen)
    fields = {name: f.isel(time=chosen) for name, f in fields.items()}
    norm = Normalize(0.0, _precip_vmax(truth.values, *(f.values for f in fields.values())))

    n, ncol = len(chosen), 1 + len(fields)
    width, height = _extent(truth, "lon"), _extent(truth, "lat")
    fig_w = min(18.0, 1.2 + 3.3 * ncol)
    row_h = min(4.5, max(1.8, 0.85 * (fig_w - 1.2) / ncol * height / width + 0.7))
    fig = Figure(figsize=(fig_w, n * row_h + 1.6), dpi=DPI, layout="compressed")
    axes = fig.subplots(n, ncol, squeeze=False, sharex=True, sharey=True)
    for row in range(n):
        first = row == 0
        observed = truth.isel(time=row)
        mesh = _precip_panel(axes[row, 0], observed, norm, "truth (observed)" if first else "")
        for ax, (name, field) in zip(axes[row, 1:], fields.items()):
            forecast = field.isel(time=row)
            _precip_panel(ax, forecast, norm, name if first else "")
            _corner_note(ax, f"RMSE {_rmse(forecast.values, observed.values):.2f} mm")
            ax.set_ylabel("")
        axes[row, 0].set_ylabel(f"{_fmt_time(truth['time'].values[row])}\nlatitude (°N)", fontsize=10)
        axes[row, 0].yaxis.label.set_fontweight("bold")
        if row != n - 1:
            for ax in axes[row]:
                ax.set_xlabel("")
    fig.colorbar(mesh, ax=axes.ravel().tolist(), location="bottom", shrink=0.6, aspect=40, extend="max",
                 label=PRECIP_LABEL)
    default = "Truth and forecasts, wettest times" if times is None else "Truth and forecasts"
    fig.suptitle(title or default, fontsize=13)
    return fig


def _build_csi_bars(csi: dict[str, dict[str, tuple[float, float, float]]], title: str) -> Figure:
    """Grouped bars (x = threshold, one bar per forecast), asymmetric interval bars, NaN bars left out."""
    if not csi:
        raise ValueError("csi is empty: pass {forecast: {threshold: (value, low, high)}}.")
    names = list(csi)
    thresholds = _threshold_order([t for inner in csi.values() for t in inner])
    table = np.full((len(names), len(thresholds), 3), np.nan)
    for i, name in enumerate(names):
        for j, threshold in enumerate(thresholds):
            if threshold in csi[name]:
                table[i, j] = _numbers(csi[name][threshold], 3, f"csi['{name}']['{threshold}']", "(value, low, high)")

    n, m = len(names), len(thresholds)
    styles = _forecast_styles(names)
    fig = Figure(figsize=(min(16.0, max(7.5, 2.0 + 0.42 * n * m + 0.3 * m)), 5.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(m, dtype=float)
    width = 0.8 / n
    for i, name in enumerate(names):
        color = styles[name][0]
        value, low, high = table[i, :, 0], table[i, :, 1], table[i, :, 2]
        pos = x + (i - (n - 1) / 2) * width
        shown = np.isfinite(value)
        ax.bar(pos[shown], value[shown], width, color=color, edgecolor="white", linewidth=0.6, zorder=2)
        bounded = shown & np.isfinite(low) & np.isfinite(high)
        if bounded.any():
            yerr = np.clip([value[bounded] - low[bounded], high[bounded] - value[bounded]], 0.0, None)
            ax.errorbar(pos[bounded], value[bounded], yerr=yerr, fmt="none", ecolor="black", elinewidth=1.0,
                        capsize=2.5, zorder=3)
        for p in pos[~shown]:
            ax.text(p, 0.01, "n/a", rotation=90, ha="center", va="bottom", fontsize=8, fontweight="bold", color=color)
    ax.set_xticks(x, [_threshold_label(t) for t in thresholds])
    ax.set_xlim(-0.5, m - 0.5)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("precipitation threshold (mm per 12 h)")
    ax.set_ylabel("CSI (critical success index)")
    ax.grid(True, axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
    handles = [Patch(facecolor=styles[name][0], label=name) for name in names]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(n, 4), framealpha=0.9)
    ax.set_title(title or "CSI per threshold", fontsize=12)
    return fig


def _build_performance_diagram(points: dict[str, dict[str, tuple[float, float]]], title: str) -> Figure:
    """Success ratio vs POD over CSI contours and frequency-bias lines; one line of points per forecast."""
    if not points:
        raise ValueError("points is empty: pass {forecast: {threshold: (success_ratio, pod)}}.")
    fig = Figure(figsize=(7.2, 7.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    _performance_background(ax)

    styles = _forecast_styles(list(points))
    for name, inner in points.items():
        color, marker = styles[name]
        order = _threshold_order(list(inner))
        xy = np.array([_numbers(inner[t], 2, f"points['{name}']['{t}']", "(success_ratio, pod)") for t in order])
        xy = xy.reshape(-1, 2)
        ok = np.isfinite(xy).all(axis=1)
        label = name if ok.any() else f"{name} (no finite points)"
        ax.plot(xy[ok, 0], xy[ok, 1], color=color, marker=marker, markersize=7, linewidth=1.5,
                markeredgecolor="white", markeredgewidth=0.6, label=label, zorder=5)
        for (sr, pod), threshold in zip(xy[ok], np.array(order, dtype=object)[ok]):
            ax.annotate(_threshold_label(threshold, prefix=""), xy=(sr, pod), xytext=(5, 4), textcoords="offset points",
                        fontsize=7, color=color, zorder=6)
    ax.set_xlabel("success ratio (1 − FAR)")
    ax.set_ylabel("probability of detection (POD)")
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.6", linewidth=0.8), Line2D([], [], color="0.45", linewidth=0.9, linestyle="--")]
    labels += ["CSI (contours)", "frequency bias (POD / SR)"]
    fig.legend(handles, labels, loc="outside lower center", ncols=3, framealpha=0.9)
    fig.suptitle(title or "Performance diagram", fontsize=13)
    return fig


def _build_error_by_time(errors: dict[str, xr.DataArray], title: str, ylabel: str) -> Figure:
    """One line per forecast over time, concise date labels, the mean of each in the legend."""
    if not errors:
        raise ValueError("errors is empty: pass {forecast: DataArray over 'time'}.")
    styles = _forecast_styles(list(errors))
    unit = _unit_of(ylabel)
    fig = Figure(figsize=(10.0, 4.8), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    dated, lowest = False, np.inf
    for name, series in errors.items():
        if not isinstance(series, xr.DataArray) or series.dims != ("time",) or "time" not in series.coords:
            dims = tuple(map(str, series.dims)) if isinstance(series, xr.DataArray) else type(series).__name__
            raise ValueError(f"errors['{name}'] must be a 1-D DataArray on dims ('time',) with time values, got {dims}.")
        series = series.sortby("time")
        t, y = series["time"].values, series.values.astype(float)
        finite = y[np.isfinite(y)]
        mean = f" (mean {finite.mean():#.3g}{' ' + unit if unit else ''})" if finite.size else " (no finite values)"
        color, marker = styles[name]
        ax.plot(t, y, color=color, marker=marker if len(t) <= 60 else None, markersize=4, linewidth=1.4,
                label=name + mean)
        dated |= np.issubdtype(t.dtype, np.datetime64)
        lowest = min(lowest, float(finite.min())) if finite.size else lowest
    if dated:
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_xlabel("valid time (UTC)")
    else:
        ax.set_xlabel("time")
    if lowest >= 0.0:
        ax.set_ylim(bottom=0.0)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9, fontsize=9)
    ax.set_title(title or f"{ylabel.split(' (')[0]} per forecast time", fontsize=12)
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
                ha="left", va="top", fontsize=8, zorder=4, bbox=_NOTE_BBOX)


def _corner_note(ax: Axes, text: str) -> None:
    """A small note in the top-right corner of a map, readable on any colour."""
    ax.annotate(text, xy=(1.0, 1.0), xycoords="axes fraction", xytext=(-3, -3), textcoords="offset points",
                ha="right", va="top", fontsize=8, zorder=4, bbox=_NOTE_BBOX)


def _performance_background(ax: Axes) -> None:
    """Labelled CSI contours (solid) and frequency-bias lines (dashed) on the unit square."""
    grid = np.linspace(0.005, 1.0, 200)
    sr, pod = np.meshgrid(grid, grid)
    csi = 1.0 / (1.0 / sr + 1.0 / pod - 1.0)
    contours = ax.contour(sr, pod, csi, levels=CSI_LEVELS, colors="0.6", linewidths=0.8, zorder=1)
    ax.clabel(contours, fmt="%.1f", fontsize=8, inline=True)
    line = np.array([0.0, 1.0])
    for bias in BIAS_LEVELS:
        ax.plot(line, bias * line, linestyle="--", color="0.45", linewidth=0.9, zorder=1)
        if bias >= 1.0:  # leaves through the top edge
            ax.text(1.0 / bias, 1.01, f"{bias:g}", ha="center", va="bottom", fontsize=8, color="0.3")
        else:  # leaves through the right edge
            ax.text(1.01, bias, f"{bias:g}", ha="left", va="center", fontsize=8, color="0.3")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")


def _forecast_styles(names: Sequence[str]) -> dict[str, tuple[str, str]]:
    """(colour, marker) per forecast: the fixed ones for known names, the fallbacks in turn for others."""
    unknown = iter(_FALLBACK_STYLES * (1 + len(names) // len(_FALLBACK_STYLES)))
    return {name: FORECAST_STYLES.get(name) or next(unknown) for name in names}


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


def _error_limit(err: np.ndarray, floor: float = _MIN_ERROR_MM) -> float:
    """Symmetric error limit: the 99th percentile of |error|, at least ``floor`` (0.5 mm by default)."""
    values = np.abs(err[np.isfinite(err)])
    return max(float(np.percentile(values, 99)) if values.size else 0.0, floor)


def _difference_summary(values: np.ndarray, unit: str) -> str:
    """'mean −0.120 mm · upstream better in 62 % of cells' for an upstream − baseline error difference."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "no finite values"
    mean = f"{finite.mean():+.3f}".replace("-", "−")
    return (f"mean {mean}{' ' + unit if unit else ''} · upstream better in {100 * np.mean(finite < 0):.0f} %, "
            f"baseline in {100 * np.mean(finite > 0):.0f} % of cells")


def _check_aligned(truth: xr.DataArray, other: xr.DataArray, name: str) -> None:
    """ValueError unless ``other`` has exactly the truth's times and (within tolerance) its lat/lon."""
    for dim in ("time", "lat", "lon"):
        a, b = truth[dim].values, other[dim].values
        if dim == "time":
            same = a.shape == b.shape and bool(np.array_equal(a, b))
        else:
            same = a.shape == b.shape and bool(np.allclose(a.astype(float), b.astype(float), rtol=0.0, atol=_COORD_TOL))
        if not same:
            raise ValueError(
                f"{name} is not on the truth's {dim}: truth has {_coord_range(truth, dim)}, {name} has "
                f"{_coord_range(other, dim)}. Select the same times and grid for the truth and every forecast."
            )


def _wettest(truth: xr.DataArray, k: int) -> np.ndarray:
    """Positions of the ``k`` wettest times (grid mean; all-NaN times last), in time order."""
    wetness = np.nan_to_num(truth.mean(["lat", "lon"], skipna=True).values.astype(float), nan=-np.inf)
    return np.sort(np.argsort(-wetness, kind="stable")[:k])


def _positions(truth: xr.DataArray, times: Sequence[object]) -> np.ndarray:
    """Positions of the requested ``times`` in ``truth`` (in time order); ValueError for absent ones."""
    wanted = np.atleast_1d(np.asarray(times, dtype=truth["time"].dtype))
    if wanted.size == 0:
        raise ValueError("times is empty: pass at least one time, or None for the wettest ones.")
    pos = truth.get_index("time").get_indexer(wanted)
    if (pos < 0).any():
        missing = [_fmt_time(t) for t in wanted[pos < 0][:3]]
        raise ValueError(f"times {missing} are not in the truth, which covers {_time_range(truth)}.")
    return np.unique(pos)


def _rmse(forecast: np.ndarray, truth: np.ndarray) -> float:
    """Root-mean-square difference over the cells where both are finite (NaN if none)."""
    err = (np.asarray(forecast, dtype=float) - np.asarray(truth, dtype=float)).ravel()
    err = err[np.isfinite(err)]
    return float(np.sqrt(np.mean(err**2))) if err.size else float("nan")


def _numbers(value: object, size: int, where: str, shape: str) -> np.ndarray:
    """``value`` as ``size`` floats (None -> NaN); ValueError naming ``where`` otherwise."""
    try:
        arr = np.array([np.nan if v is None else v for v in value], dtype=float)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} must be {shape}, got {value!r}.") from exc
    if arr.shape != (size,):
        raise ValueError(f"{where} must be {shape}, got {value!r}.")
    return arr


_THRESHOLD = re.compile(r"^\s*(\d*\.?\d+(?:[eE][-+]?\d+)?)\s*mm\s*$")


def _threshold_order(keys: Sequence[str]) -> list[str]:
    """Unique threshold keys, in numeric order when all read as '<number>mm', else as first seen."""
    unique = list(dict.fromkeys(keys))
    matches = [_THRESHOLD.match(str(k)) for k in unique]
    if all(matches):
        return sorted(unique, key=lambda k: float(_THRESHOLD.match(str(k)).group(1)))  # type: ignore[union-attr]
    return unique


def _threshold_label(key: str, prefix: str = "≥ ") -> str:
    """'≥ 0.1 mm' for '0.1mm'; other keys as they are."""
    match = _THRESHOLD.match(str(key))
    return f"{prefix}{float(match.group(1)):g} mm" if match else str(key)


def _unit_of(label: str) -> str:
    """The unit in a label's trailing parentheses ('RMSE (mm)' -> 'mm'), '' if none."""
    match = re.search(r"\(([^()]*)\)\s*$", label)
    return match.group(1) if match else ""


def _coord_range(da: xr.DataArray, dim: str) -> str:
    """'N values a..b unit' for error messages."""
    if dim == "time":
        return _time_range(da)
    vals = da[dim].values.astype(float)
    unit = "°N" if dim == "lat" else "°E"
    return f"{len(vals)} {dim} values {vals.min():g}..{vals.max():g} {unit}" if len(vals) else f"no {dim} values"


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


"""Precipitation maps: observed / predicted / error after training, a forecast map at inference, and for the
comparison the truth beside each forecast and a map of a score difference (upstream − baseline)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure, SubFigure

from convlstm.checks import require_positive_int
from convlstm.errors import ConfigError, DataError
from convlstm.evaluation.alignment import check_aligned, describe_coordinate
from convlstm.evaluation.scores import rmse
from convlstm.plotting.figure import canvas, root_figure, single_axes
from convlstm.plotting.style import (ERROR_CMAP, ERROR_LABEL, PRECIP_LABEL, Box, corner_note, draw_field, error_norm,
                                     extent, fmt_time, precip_panel, precip_vmax, unit_of)

_MIN_DIFF_MM = 0.01  # a score-difference map of (almost) zeros still gets a finite symmetric scale
UPSTREAM_BETTER = "← upstream better  |  baseline better →"  # negative = blue = upstream lower (better)


def plot_precipitation_maps(observed: xr.DataArray, predicted: xr.DataArray, downstream_box: Box, *, title: str = "",
                            max_times: int = 4, fig: Figure | SubFigure | None = None) -> Figure:
    """Draw observed, predicted and error maps for a few rainy times, to see what the model gets right and where.

    Rows are times; columns the observed field (downstream box outlined), the prediction and the error.
    The shared times are split into ``max_times`` consecutive groups and the wettest time of each (observed
    downstream mean) is drawn, so the rows spread over the period and show rain rather than empty maps.
    Raises ``ConfigError`` for ``max_times`` < 1, ``DataError`` for wrong dims, no shared time or a
    predicted grid that is not part of the observed one.

    Parameters
    ----------
    observed : xarray.DataArray
        Precipitation (mm) on ``(time, lat, lon)`` over the model's input grid.
    predicted : xarray.DataArray
        The same over the downstream grid (part of the input grid), matched to ``observed`` on time labels.
    downstream_box : tuple of float
        ``(lat_min, lat_max, lon_min, lon_max)`` of the downstream region.
    title : str
        Figure title; by default "Observed and predicted precipitation".
    max_times : int
        The most rows to draw.
    fig : matplotlib.figure.Figure or SubFigure, optional
        Where to lay the panels out; by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The maps (on the top-level figure of ``fig`` when one is given).
    """
    require_positive_int("max_times", max_times)
    observed, predicted = _fields("observed", observed), _fields("predicted", predicted)
    common = np.intersect1d(observed["time"].values, predicted["time"].values)
    if common.size == 0:
        raise DataError(f"observed and predicted share no time: {describe_coordinate(observed['time'].values)} vs "
                        f"{describe_coordinate(predicted['time'].values)}. Pass predictions for observed times.")
    predicted = predicted.sel(time=common)
    grid = {"lat": predicted["lat"].values, "lon": predicted["lon"].values}
    obs_down = observed.sel(time=common).sel(grid, method="nearest")
    check_aligned({"predicted": predicted, "observed (on the nearest cells of the predicted grid)": obs_down})
    obs_down = obs_down.assign_coords(grid)
    wetness = np.nan_to_num(obs_down.mean(["lat", "lon"], skipna=True).values, nan=-np.inf)
    groups = np.array_split(np.arange(len(wetness)), min(max_times, len(wetness)))
    times = common[[g[int(np.argmax(wetness[g]))] for g in groups]]

    obs, pred = observed.sel(time=times), predicted.sel(time=times)
    err = pred - obs_down.sel(time=times)
    n, obs_w, down_w, height = len(times), extent(obs, "lon"), extent(pred, "lon"), extent(obs, "lat")
    row_h = min(4.5, max(1.8, 0.8 * 15.0 * height / (obs_w + 2 * down_w) + 0.7))
    fig = canvas(fig, (15.0, n * row_h + 1.6))
    axes = fig.subplots(n, 3, squeeze=False, sharey=True, gridspec_kw={"width_ratios": [obs_w, down_w, down_w]})
    precip_norm = Normalize(0.0, precip_vmax(obs.values, pred.values))
    err_norm = error_norm(err.values)
    for row in range(n):
        first = row == 0
        ax_obs, ax_pred, ax_err = axes[row]
        precip_mesh = precip_panel(ax_obs, obs.isel(time=row), precip_norm, "observed (input grid)" if first else "",
                                   box=downstream_box)
        precip_panel(ax_pred, pred.isel(time=row), precip_norm, "predicted (downstream)" if first else "")
        error_mesh = draw_field(ax_err, err.isel(time=row), ERROR_CMAP, err_norm,
                                "error: predicted − observed" if first else "")
    _label_rows(axes, times)
    fig.colorbar(precip_mesh, ax=axes[:, :2].ravel().tolist(), location="bottom", shrink=0.6,
                 aspect=40, extend="max", label=PRECIP_LABEL)
    fig.colorbar(error_mesh, ax=axes[:, 2].ravel().tolist(), location="bottom", shrink=0.9,
                 aspect=20, extend="both", label=ERROR_LABEL)
    fig.suptitle(title or "Observed and predicted precipitation", fontsize=13)
    return root_figure(fig)


def plot_prediction_map(predicted: xr.DataArray, *, observed: xr.DataArray | None = None,
                        downstream_box: Box | None = None, title: str = "",
                        fig: Figure | SubFigure | None = None) -> Figure:
    """Draw one forecast map, alone or beside an observed map on the same colour scale, to show a single forecast.

    Each panel is labelled with its own valid time. The box is outlined on the first panel. Raises
    ``DataError`` for wrong dims or more than one time.

    Parameters
    ----------
    predicted : xarray.DataArray
        Precipitation (mm) on ``(lat, lon)``, or ``(time, lat, lon)`` with one time.
    observed : xarray.DataArray, optional
        The same for the observations, drawn on the left.
    downstream_box : tuple of float, optional
        ``(lat_min, lat_max, lon_min, lon_max)`` of the downstream region, to outline.
    title : str
        Figure title; by default "Precipitation forecast".
    fig : matplotlib.figure.Figure or SubFigure, optional
        A figure or subfigure to lay the one or two panels out in; by default a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The forecast map, with the observed one if given.
    """
    given = {"observed": observed, "predicted": predicted}
    fields = {name: _single_time(name, da) for name, da in given.items() if da is not None}
    norm = Normalize(0.0, precip_vmax(*(f.values for f in fields.values())))
    widths = [extent(f, "lon") for f in fields.values()]
    height = max(extent(f, "lat") for f in fields.values())
    fig_w = 7.0 if observed is None else 13.0
    # map height at full width plus room for titles, labels and colour bar (too short a figure overlaps the titles)
    fig = canvas(fig, (fig_w, min(9.0, max(4.5, 0.85 * fig_w * height / sum(widths) + 2.8))))
    axes = fig.subplots(1, len(fields), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    for ax, (name, field) in zip(axes, fields.items()):
        label = f"{name}, {fmt_time(field['time'].values)}" if "time" in field.coords else name
        mesh = precip_panel(ax, field, norm, label, box=downstream_box if ax is axes[0] else None)
    fig.colorbar(mesh, ax=list(axes), location="bottom", shrink=0.7, aspect=35, extend="max", label=PRECIP_LABEL)
    fig.suptitle(title or "Precipitation forecast", fontsize=13)
    return root_figure(fig)


def plot_difference_map(diff: xr.DataArray, *, title: str = "RMSE difference (upstream − baseline)",
                        label: str = "RMSE difference (mm)", ax: Axes | None = None) -> Figure:
    """Draw a map of a per-cell score difference (upstream − baseline), to show where upstream data helps.

    The colour scale is diverging and symmetric about 0: blue (negative) means the upstream model's
    error is lower there, and the colour bar says so. The panel title gives the domain mean and the
    share of cells where each model is better. Raises ``DataError`` for wrong dims or more than one time.

    Parameters
    ----------
    diff : xarray.DataArray
        The difference on ``(lat, lon)``, or ``(time, lat, lon)`` with one time.
    title : str
        Figure title (put above the summary when drawn into ``ax``).
    label : str
        Colour-bar label; a unit in trailing parentheses, "(mm)", is repeated in the summary.
    ax : matplotlib.axes.Axes, optional
        Where to draw the map and its colour bar; by default on a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        The difference map (``ax``'s figure when drawn into it).
    """
    field = _single_time("diff", diff)
    values = field.values.astype(float)
    own = ax is None
    fig_w = 7.0
    ax = single_axes(ax, (fig_w, min(9.0, max(5.0, 0.8 * fig_w * extent(field, "lat") / extent(field, "lon") + 2.4))),
                     layout="compressed")
    summary, title = _difference_summary(values, unit_of(label)), title or "Score difference (upstream − baseline)"
    mesh = draw_field(ax, field, ERROR_CMAP, error_norm(values, floor=_MIN_DIFF_MM),
                      summary if own else f"{title}\n{summary}")
    ax.figure.colorbar(mesh, ax=ax, location="bottom", shrink=0.85, aspect=30, extend="both",
                       label=f"{label}\n{UPSTREAM_BETTER}")
    if own:
        ax.figure.suptitle(title, fontsize=13)
    return root_figure(ax)


def plot_case_maps(truth: xr.DataArray, forecasts: dict[str, xr.DataArray], *, times: Sequence[object] | None = None,
                   max_times: int = 3, title: str = "", fig: Figure | SubFigure | None = None) -> Figure:
    """Draw the truth beside each forecast for a few cases, to compare the forecasts' rain patterns by eye.

    Rows are times, columns the truth then each forecast in ``forecasts``' order, all on one
    precipitation colour scale; each forecast panel notes its RMSE against the truth at that time.
    Raises ``ConfigError`` for bad ``max_times``, ``forecasts`` or ``times``, ``DataError`` for wrong dims
    or a forecast off the truth's times and grid.

    Parameters
    ----------
    truth : xarray.DataArray
        Observed precipitation (mm) on ``(time, lat, lon)``.
    forecasts : dict of str to xarray.DataArray
        Forecasts by name, on the truth's times and grid.
    times : sequence, optional
        The times to show (labels present in ``truth``); by default the ``max_times`` wettest (grid mean),
        in time order.
    max_times : int
        How many wettest times to show when ``times`` is not given.
    title : str
        Figure title; by default "Truth and forecasts" (", wettest times" when they were picked).
    fig : matplotlib.figure.Figure or SubFigure, optional
        A figure or subfigure for the grid of maps; by default a new one.

    Returns
    -------
    matplotlib.figure.Figure
        The figure with every case.
    """
    require_positive_int("max_times", max_times)
    if not forecasts:
        raise ConfigError("forecasts is empty: pass at least one forecast to show beside the truth.", "forecasts")
    check_aligned({"truth": truth, **forecasts})
    truth = truth.sortby(["time", "lat", "lon"])
    if times is None:
        wetness = np.nan_to_num(truth.mean(["lat", "lon"], skipna=True).values.astype(float), nan=-np.inf)
        chosen = np.sort(np.argsort(-wetness, kind="stable")[:max_times])
    else:
        chosen = _positions(truth, times)
    truth = truth.isel(time=chosen)
    fields = {name: f.sortby(["time", "lat", "lon"]).isel(time=chosen) for name, f in forecasts.items()}
    norm = Normalize(0.0, precip_vmax(truth.values, *(f.values for f in fields.values())))

    n, ncol = len(chosen), 1 + len(fields)
    fig_w = min(18.0, 1.2 + 3.3 * ncol)
    row_h = min(4.5, max(1.8, 0.85 * (fig_w - 1.2) / ncol * extent(truth, "lat") / extent(truth, "lon") + 0.7))
    fig = canvas(fig, (fig_w, n * row_h + 1.6))
    axes = fig.subplots(n, ncol, squeeze=False, sharex=True, sharey=True)
    for row in range(n):
        observed = truth.isel(time=row)
        mesh = precip_panel(axes[row, 0], observed, norm, "truth (observed)" if row == 0 else "")
        for ax, (name, field) in zip(axes[row, 1:], fields.items()):
            forecast = field.isel(time=row)
            precip_panel(ax, forecast, norm, name if row == 0 else "")
            corner_note(ax, f"RMSE {rmse(forecast.values, observed.values):.2f} mm")
    _label_rows(axes, truth["time"].values)
    fig.colorbar(mesh, ax=axes.ravel().tolist(), location="bottom", shrink=0.6, aspect=40, extend="max",
                 label=PRECIP_LABEL)
    fig.suptitle(title or "Truth and forecasts" + (", wettest times" if times is None else ""), fontsize=13)
    return root_figure(fig)


def _fields(name: str, da: xr.DataArray, dims: tuple[str, ...] = ("time", "lat", "lon")) -> xr.DataArray:
    """``da`` checked to be on ``dims`` with coordinates, its lat and lon increasing (as the maps assume)."""
    check_aligned({name: da}, dims=dims)
    return da.sortby(["lat", "lon"])


def _single_time(name: str, da: xr.DataArray) -> xr.DataArray:
    """A 2-D (lat, lon) field from a 2-D array or one with a single time (kept as a scalar coordinate)."""
    if "time" in da.dims:
        if da.sizes["time"] != 1:
            raise DataError(f"{name} must hold one time for a single map, got {da.sizes['time']}; "
                            "select one with .isel(time=i).")
        da = da.isel(time=0)
    return _fields(name, da, ("lat", "lon"))


def _label_rows(axes: np.ndarray, times: np.ndarray) -> None:
    """Each row's valid time (bold) on its first map; axis labels only where they are not repeated."""
    for row, (cells, time) in enumerate(zip(axes, times)):
        cells[0].set_ylabel(f"{fmt_time(time)}\nlatitude (°N)", fontsize=10)
        cells[0].yaxis.label.set_fontweight("bold")
        for ax in cells[1:]:
            ax.set_ylabel("")
        for ax in cells if row < len(axes) - 1 else ():
            ax.set_xlabel("")
            ax.tick_params(labelbottom=False)


def _positions(truth: xr.DataArray, times: Sequence[object]) -> np.ndarray:
    """Positions of the requested ``times`` in ``truth``, in time order; ConfigError for absent ones."""
    wanted = np.atleast_1d(np.asarray(times, dtype=truth["time"].dtype))
    if wanted.size == 0:
        raise ConfigError("times is empty: pass at least one time, or None for the wettest ones.", "times")
    pos = truth.get_index("time").get_indexer(wanted)
    if (pos < 0).any():
        raise ConfigError(f"times {[fmt_time(t) for t in wanted[pos < 0][:3]]} are not in the truth, which has "
                          f"{describe_coordinate(truth['time'].values)}.", "times")
    return np.unique(pos)


def _difference_summary(values: np.ndarray, unit: str) -> str:
    """'mean −0.120 mm · upstream better in 62 %, baseline in 30 % of cells' (for upstream − baseline)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "no finite values"
    mean = f"{finite.mean():+.3f}".replace("-", "−")
    return (f"mean {mean}{' ' + unit if unit else ''} · upstream better in {100 * np.mean(finite < 0):.0f} %, "
            f"baseline in {100 * np.mean(finite > 0):.0f} % of cells")

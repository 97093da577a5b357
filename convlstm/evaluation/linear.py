"""A linear yardstick for the upstream question: ridge regression on the inputs each network sees.

A network that gains from the upstream region may still use it worse than the simplest model that could:
when a ridge regression on the same inputs gains more from them, the information is there and the network
leaves it unused. So ``compare`` fits one for each experiment and sets the two gains side by side.

What the ridge regression sees, for a target at downstream cell (i, j), for each of the last two input
steps of the network's window (one when the window is one step long):

- the cell's precipitation and the mean over its 3 × 3 neighbourhood (edge cells repeat the edge), in the
  downstream region: rain moves about a cell per step on a 1° grid, and the networks' 3 × 3 kernels see
  the neighbours too; the mean is two numbers instead of nine, for the short training splits;
- upstream experiment only: the upstream precipitation in row i averaged over bands of
  :data:`BAND_DEG` degrees west of the boundary (:data:`N_BANDS` bands, nearest first) — about the
  distance weather travels in one 12-hour step, so the bands hold the rain that arrives within one or
  two steps, at any resolution with a handful of numbers — and the low-level wind (``U`` and ``V`` at
  the level nearest :data:`LOW_LEVEL_HPA`) averaged over the nearest band, which tells whether it is
  coming. The wind enters linearly, as every input does: the yardstick is linear in the networks'
  inputs, with no hand-made products.

Baseline and upstream regressions differ by the upstream features only, so their gap is what a linear
model gains from the upstream region. One regression per downstream cell (its coefficients vary with
geography and distance from the boundary), in physical units: precipitation (mm, what the scores are in)
and wind (m s-1), each feature standardized on the training split (``StandardScaler``) so that one
penalty treats millimetres and metres per second alike; forecasts below 0 mm are set to 0, as the
networks never forecast negative rain. Fitted with scikit-learn's ``Ridge`` on the targets of the
training split's windows, the penalty chosen from :data:`ALPHAS` by the RMSE over all downstream cells
and validation windows (one penalty per experiment), then forecast at the times the networks are scored
on. The windows and splits come from the data code the networks' own come from (``select_split``,
``window_starts``, ``crop_regions``); the full channel stack ``prepare_data`` builds is not needed
(three of its 56 channels are read), so memory stays at a few downstream-sized fields per time step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from convlstm.config import ConvLSTMConfig, RegionConfig
from convlstm.data.dataset import window_starts
from convlstm.data.regions import crop_regions
from convlstm.data.schema import PRECIPITATION
from convlstm.data.split import select_split
from convlstm.data.timestep import regular_step
from convlstm.errors import DataError

logger = logging.getLogger(__name__)

#: The penalties tried (features standardized, targets in mm): from almost none to almost only the intercept.
ALPHAS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
#: Input steps read, the last first (the networks' windows end with them).
LAGS = 2
#: Width (degrees) of each upstream band, and how many bands west of the boundary are read.
BAND_DEG = 5.0
N_BANDS = 2
#: The low-level wind is read at the level nearest this (hPa).
LOW_LEVEL_HPA = 850.0
#: Time steps joined at once when the upstream bands are cut out (bounded memory on fine grids).
_TIME_CHUNK = 256


@dataclass(frozen=True)
class RidgeFit:
    """A ridge regression's forecast and how it was chosen, for the report.

    Parameters
    ----------
    forecast : xarray.DataArray
        Precipitation (mm, never negative) on ``(time, lat, lon)`` of the downstream region at the target times.
    alpha : float
        The penalty chosen on validation.
    validation_rmse : dict of float to float
        Validation RMSE (mm, over all downstream cells) of each penalty tried.
    features : tuple of str
        What each cell's regression reads, at each of ``lags`` input steps.
    lags, n_train, n_val : int
        Input steps read; training and validation windows.
    """

    forecast: xr.DataArray
    alpha: float
    validation_rmse: dict[float, float]
    features: tuple[str, ...]
    lags: int
    n_train: int
    n_val: int

    def describe(self, name: str) -> str:
        """One sentence for the report: inputs, windows and the penalty, e.g. for ``ridge_upstream``."""
        tried = ", ".join(f"{alpha:g}" for alpha in self.validation_rmse)
        return (f"{name}: a ridge regression per downstream cell on {len(self.features) * self.lags} inputs "
                f"({'; '.join(self.features)}; each at the last {self.lags} input step(s)), fitted on {self.n_train} "
                f"training windows; penalty α = {self.alpha:g} chosen from {tried} on {self.n_val} validation windows "
                f"(validation RMSE {self.validation_rmse[self.alpha]:.3f} mm).")


class _Fields:
    """The fields the features are read from, at every time of the data: per cell ``[T, H, W]`` (downstream
    grid) and per row ``[T, H]`` (upstream bands), with their names."""

    def __init__(self, data: xr.Dataset, regions: RegionConfig, include_upstream: bool) -> None:
        downstream = crop_regions(data, regions, include_upstream=False).data
        precip = downstream[PRECIPITATION].transpose("time", "lat", "lon").values.astype(np.float32)
        padded, (n_lat, n_lon) = np.pad(precip, ((0, 0), (1, 1), (1, 1)), mode="edge"), precip.shape[1:]
        neighbourhood = sum(padded[:, di:di + n_lat, dj:dj + n_lon] for di in range(3) for dj in range(3)) / 9.0
        self.cells = [precip, neighbourhood.astype(np.float32)]
        self.rows: list[np.ndarray] = []
        self.names = ["precipitation at the cell", "its 3 × 3 neighbourhood mean"]
        self.lat, self.lon = downstream["lat"].values, downstream["lon"].values
        if include_upstream:
            self._add_upstream(data, regions)

    def _add_upstream(self, data: xr.Dataset, regions: RegionConfig) -> None:
        """The upstream band means, cut with ``crop_regions`` a few time steps at a time: joining the regions
        copies what it joins, so only the three fields read are joined, and only :data:`_TIME_CHUNK` steps at once."""
        levels = data["level"].values
        level = levels[np.argmin(np.abs(levels - LOW_LEVEL_HPA))]
        fields = xr.Dataset({PRECIPITATION: data[PRECIPITATION], "U": data["U"].sel(level=level, drop=True),
                             "V": data["V"].sel(level=level, drop=True)})
        layout = crop_regions(fields.isel(time=slice(0, 1)), regions, include_upstream=True)
        boundary = layout.downstream_columns.start  # upstream columns are 0 .. boundary - 1, the nearest last
        lon = layout.data["lon"].values[:boundary]
        width = max(1, int(round(BAND_DEG / float(np.median(np.diff(lon)))))) if boundary > 1 else 1
        bands = [slice(max(0, boundary - (k + 1) * width), boundary - k * width) for k in range(N_BANDS)
                 if boundary - k * width > 0]
        reads = [(PRECIPITATION, band) for band in bands] + [(var, bands[0]) for var in ("U", "V")]
        parts: list[list[np.ndarray]] = [[] for _ in reads]
        for start in range(0, fields.sizes["time"], _TIME_CHUNK):
            crop = crop_regions(fields.isel(time=slice(start, start + _TIME_CHUNK)), regions, include_upstream=True).data
            for part, (var, band) in zip(parts, reads):
                part.append(crop[var].isel(lon=band).mean("lon").transpose("time", "lat").values.astype(np.float32))
        self.rows = [np.concatenate(part) for part in parts]
        self.names += [f"upstream precipitation over {_span(lon[band])}" for band in bands]
        self.names += [f"{var} at {level:g} hPa over {_span(lon[bands[0]])}" for var in ("U", "V")]

    def design(self, lagged: np.ndarray, i: int, j: int) -> np.ndarray:
        """The features of cell (i, j) for samples whose input steps are ``lagged`` ``[n, lags]``: ``[n, n_features]``."""
        columns = [field[lagged, i, j] for field in self.cells] + [field[lagged, i] for field in self.rows]
        return np.concatenate(columns, axis=1, dtype=np.float64)


def _span(lon: np.ndarray) -> str:
    """A band's longitudes for the report: ``100–109 °E``, or ``105 °E`` for one column."""
    return f"{lon[0]:g} °E" if len(lon) == 1 else f"{lon[0]:g}–{lon[-1]:g} °E"


def _input_steps(times: pd.DatetimeIndex, targets: np.ndarray, offset: int, lags: int) -> np.ndarray:
    """Index into ``times`` of each target's last ``lags`` input steps ``[n, lags]``, by time (a gap is never
    bridged): the last input lies ``offset`` regular steps before the target, as in the networks' windows."""
    step = regular_step(times.values)
    wanted = targets[:, None] - (offset + np.arange(lags))[None, :] * step
    index = times.get_indexer(wanted.ravel()).reshape(wanted.shape)
    if (index < 0).any():
        missing = wanted[index < 0]
        raise DataError(f"The ridge regression needs the input steps {np.datetime_as_string(missing[:3], unit='h')} "
                        f"{'...' if len(missing) > 3 else ''}, which the data lack; forecast times must come from "
                        "windows of the same data.")
    return index


def _split_targets(data: xr.Dataset, split: str, config: ConvLSTMConfig) -> np.ndarray:
    """The target times of a split's windows, as the networks' windows of that split have them."""
    times = select_split(data, split, config)["time"].values
    starts = window_starts(times, config.window_size, config.target_offset)
    return times[starts + config.window_size + config.target_offset - 1]


def ridge_forecast(data: xr.Dataset, regions: RegionConfig, include_upstream: bool, config: ConvLSTMConfig,
                   target_times: np.ndarray | None = None, alphas: tuple[float, ...] = ALPHAS) -> RidgeFit:
    """Fit the ridge yardstick of one experiment on the training split, choose its penalty on validation, forecast.

    Parameters
    ----------
    data : xarray.Dataset
        The whole record in the library's layout, physical units (as ``open_dataset`` gives it).
    regions : RegionConfig
        The experiment's regions.
    include_upstream : bool
        Whether the experiment reads the upstream region (adds the upstream features).
    config : ConvLSTMConfig
        The experiment's model config: window size, target offset and split ratios.
    target_times : numpy.ndarray, optional
        The times to forecast (the networks' forecast times); default: the targets of the test split's windows.
    alphas : tuple of float
        The penalties to choose from.

    Returns
    -------
    RidgeFit
        The forecast on the downstream grid at ``target_times`` and the penalty chosen.
    """
    started = time.monotonic()
    fields = _Fields(data, regions, include_upstream)
    times = pd.DatetimeIndex(data["time"].values)
    lags = min(LAGS, config.window_size)
    targets = {split: _split_targets(data, split, config) for split in ("train", "val")}
    targets["test"] = _split_targets(data, "test", config) if target_times is None else np.asarray(target_times)
    for split, values in targets.items():
        if len(values) == 0:
            raise DataError(f"The {split} split holds no window of {config.window_size} + {config.target_offset} steps, "
                            "so the ridge regression cannot be fitted; use longer data.")
    inputs = {split: _input_steps(times, values, config.target_offset, lags) for split, values in targets.items()}
    observed = {split: fields.cells[0][times.get_indexer(targets[split])] for split in ("train", "val")}
    n_lat, n_lon = len(fields.lat), len(fields.lon)
    forecasts = np.empty((len(alphas), len(targets["test"]), n_lat, n_lon), dtype=np.float32)
    sse, count = np.zeros(len(alphas)), 0
    for i in range(n_lat):
        for j in range(n_lon):
            x, y = fields.design(inputs["train"], i, j), observed["train"][:, i, j].astype(np.float64)
            usable = np.isfinite(x).all(axis=1) & np.isfinite(y)
            if usable.sum() < 2:
                raise DataError(f"Only {int(usable.sum())} training window(s) have finite inputs at downstream cell "
                                f"({fields.lat[i]:g} °N, {fields.lon[j]:g} °E); fill the gaps with --nan-policy fill.")
            model = make_pipeline(StandardScaler(), Ridge(alpha=np.asarray(alphas, dtype=np.float64)))
            model.fit(x[usable], np.repeat(y[usable, None], len(alphas), axis=1))  # one target per penalty
            x, y = fields.design(inputs["val"], i, j), observed["val"][:, i, j]
            usable = np.isfinite(x).all(axis=1) & np.isfinite(y)
            if usable.any():
                error = np.maximum(model.predict(x[usable]), 0.0) - y[usable, None]
                sse += (error * error).sum(axis=0)
                count += int(usable.sum())
            x = fields.design(inputs["test"], i, j)
            if not np.isfinite(x).all():
                when = targets["test"][int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])]
                raise DataError(f"The inputs of the forecast for {when} at downstream cell ({fields.lat[i]:g} °N, "
                                f"{fields.lon[j]:g} °E) hold missing values, so the ridge regression cannot forecast "
                                "it; fill the gaps with --nan-policy fill.")
            forecasts[:, :, i, j] = np.maximum(model.predict(x), 0.0).T
    if count == 0:
        raise DataError("No validation window has finite inputs, so the ridge penalty cannot be chosen; fill the gaps "
                        "with --nan-policy fill.")
    rmse = np.sqrt(sse / count)
    best = int(np.argmin(rmse))
    forecast = xr.DataArray(forecasts[best], dims=("time", "lat", "lon"), name=PRECIPITATION,
                            coords={"time": targets["test"], "lat": fields.lat, "lon": fields.lon}, attrs={"units": "mm"})
    fit = RidgeFit(forecast, float(alphas[best]), {float(a): float(r) for a, r in zip(alphas, rmse)}, tuple(fields.names),
                   lags, len(targets["train"]), len(targets["val"]))
    logger.info("Ridge regression (%s inputs): penalty %g chosen on validation (RMSE %.3f mm), %d features per cell, "
                "%d × %d cells, %.1f s.", "upstream" if include_upstream else "baseline", fit.alpha, rmse[best],
                len(fields.names) * lags, n_lat, n_lon, time.monotonic() - started)
    return fit

"""Scores of precipitation forecasts as accumulators, so that training validation, ``infer`` and
``compare`` share one implementation, fed batch by batch without keeping the data.

As in pysteps' ``verification`` (``det_cont_fct_init / accum / compute``): create a score,
``accumulate(forecast, observed)`` per batch (float64 sums), then ``compute()``. With ``per_time=True``
it also keeps its sums per time (first axis), which the block bootstrap resamples. Undefined ratios
are NaN, never inf. Tests check every score against the ``scores`` library (not imported here: slow).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np
import xarray as xr

from convlstm.checks import require_positive_int
from convlstm.config import DEFAULT_FSS_WINDOWS, DEFAULT_THRESHOLDS_MM
from convlstm.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: The categorical scores, each a variable on the ``threshold`` dim.
CATEGORICAL = ("pod", "far", "csi", "ets", "fbias")

Array = np.ndarray | xr.DataArray
_Self = TypeVar("_Self", bound="_Accumulator")


def _thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in thresholds)
    except (TypeError, ValueError):
        values = ()
    if not values or not all(math.isfinite(t) for t in values) or len(set(values)) < len(values):
        raise ConfigError(f"thresholds must be distinct finite numbers (mm), e.g. 0.1 1 5, got {thresholds!r}.", "thresholds")
    return values


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is zero (never inf)."""
    safe = np.where(denominator != 0, denominator, 1.0)
    return np.where(denominator != 0, numerator / safe, np.nan)


def _threshold_coord(thresholds: tuple[float, ...]) -> tuple[str, np.ndarray, dict[str, str]]:
    return "threshold", np.array(thresholds), {"units": "mm"}


class _Accumulator:
    """What every score shares: the batch check, and the per-time statistics kept on request."""

    def __init__(self, per_time: bool) -> None:
        self._per_time: list[np.ndarray] | None = [] if per_time else None

    def accumulate(self: _Self, forecast: Array, observed: Array) -> _Self:
        """Add one batch: cheap, and nothing of the data is kept.

        Parameters
        ----------
        forecast, observed : numpy.ndarray or xarray.DataArray
            Same shape, in mm, time on the first axis (DataArrays are taken by position: align first).

        Returns
        -------
        self
        """
        f, o = (np.asarray(x.values if isinstance(x, xr.DataArray) else x, dtype=np.float64) for x in (forecast, observed))
        if f.shape != o.shape:
            raise DataError(f"Forecast and observed differ in shape: {f.shape} vs {o.shape}; score matching fields.")
        if f.size:
            per_time = self._add(f, o)
            if self._per_time is not None:
                self._per_time.append(per_time)
        return self

    def _add(self, f: np.ndarray, o: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def per_time(self) -> np.ndarray:
        """The sums per time, over all batches in order: what the bootstrap resamples.

        Returns
        -------
        numpy.ndarray
            Shape ``(n_times, ...)``, described by each class.
        """
        if self._per_time is None:
            raise ConfigError(f"Create {type(self).__name__}(..., per_time=True) to keep sums per time.")
        if not self._per_time:
            raise DataError(f"Nothing was accumulated in {type(self).__name__}.")
        return np.concatenate(self._per_time)


def rmse_from_sums(sums: np.ndarray) -> np.ndarray:
    """RMSE from ``(squared error, count)`` sums on the last axis, e.g. :meth:`ContinuousScores.per_time` resampled.

    Parameters
    ----------
    sums : numpy.ndarray
        Shape ``(..., 2)``.

    Returns
    -------
    numpy.ndarray
        Shape ``(...)``.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(sums[..., 0] / sums[..., 1])


class ContinuousScores(_Accumulator):
    """RMSE, MAE, additive bias (forecast − observed), Pearson correlation and latitude-weighted RMSE.

    Means and co-moments are merged batch by batch with Chan et al.'s parallel update, so the
    correlation keeps full precision however the data are split. ``per_time()`` gives the squared-error
    sum and the cell count per time, shape ``(n_times, 2)``.

    Parameters
    ----------
    lat : array-like, optional
        Latitudes (degrees north) of the second-to-last axis; with them ``rmse_latw_mm`` weights cells
        by cos(latitude), as ``scores.functions.create_latitude_weights``; without them it is NaN.
    per_time : bool
        Keep the sums per time.
    """

    def __init__(self, lat: Sequence[float] | np.ndarray | xr.DataArray | None = None, per_time: bool = False) -> None:
        super().__init__(per_time)
        self._weights = None
        if lat is not None:
            lat = np.asarray(lat, dtype=np.float64)
            if lat.ndim != 1 or lat.size == 0 or not np.all(np.abs(lat) <= 90.0):
                raise DataError(f"Latitudes must be a non-empty 1-D sequence within [-90, 90] degrees_north, got {lat!r}.")
            self._weights = np.cos(np.deg2rad(lat))
        self._n = 0
        self._mean = np.zeros(2)  # forecast, observed
        self._m2 = np.zeros(3)  # squared deviations of forecast, of observed, and their co-moment
        self._sums = np.zeros(5)  # squared, absolute and signed error; weighted squared error; weights

    def _add(self, f: np.ndarray, o: np.ndarray) -> np.ndarray:
        error = f - o
        squared = error * error
        weighted = (math.nan, math.nan)
        if self._weights is not None:
            if f.ndim < 2 or f.shape[-2] != self._weights.size:
                raise DataError(f"{self._weights.size} latitudes given, but the fields' shape is {f.shape} (lat second to last).")
            weights = np.broadcast_to(self._weights[:, None], f.shape)
            weighted = (float((squared * weights).sum()), float(weights.sum()))
        self._sums += [squared.sum(), np.abs(error).sum(), error.sum(), *weighted]
        n, mean = f.size, np.array([f.mean(), o.mean()])
        df, do = f - mean[0], o - mean[1]
        delta, total = mean - self._mean, self._n + n
        self._mean += delta * (n / total)
        self._m2 += [(df * df).sum(), (do * do).sum(), (df * do).sum()]
        self._m2 += np.array([delta[0] ** 2, delta[1] ** 2, delta[0] * delta[1]]) * (self._n * n / total)
        self._n = total
        by_time = error.reshape(len(error) if error.ndim else 1, -1)
        sse = np.einsum("ti,ti->t", by_time, by_time)
        return np.stack([sse, np.full(sse.shape, by_time.shape[1], dtype=np.float64)], axis=1)

    def error_totals(self) -> np.ndarray:
        """``[squared error, absolute error, cells]`` summed so far: what processes that each scored a part of the
        data add up (an all-reduce) before :func:`rmse_mae_from_totals`, so the RMSE of the whole is exact.

        Returns
        -------
        numpy.ndarray
            float64, shape ``(3,)``.
        """
        return np.array([self._sums[0], self._sums[1], float(self._n)])

    def compute(self) -> dict[str, float]:
        """The scores over everything accumulated; NaN when nothing was, or when a score is undefined.

        Returns
        -------
        dict of str to float
            ``rmse_mm``, ``mae_mm``, ``bias_mm``, ``correlation`` (NaN when either field is constant)
            and ``rmse_latw_mm``.
        """
        with np.errstate(invalid="ignore", divide="ignore"):
            mse, mae, bias, wsse, wsum = self._sums / [self._n, self._n, self._n, 1.0, 1.0]
            m2f, m2o, co = self._m2
            correlation = co / np.sqrt(m2f * m2o) if m2f > 0 and m2o > 0 else math.nan
            values = {"rmse_mm": np.sqrt(mse), "mae_mm": mae, "bias_mm": bias, "correlation": correlation,
                      "rmse_latw_mm": np.sqrt(wsse / wsum)}
        return {key: float(v) if np.isfinite(v) else math.nan for key, v in values.items()}


def rmse_mae_from_totals(totals: Sequence[float] | np.ndarray) -> dict[str, float]:
    """RMSE and MAE from :meth:`ContinuousScores.error_totals` (summed over parts), as ``compute`` gives them.

    Parameters
    ----------
    totals : sequence of float
        Squared error, absolute error and cells.

    Returns
    -------
    dict of str to float
        ``rmse_mm`` and ``mae_mm``; NaN without cells.
    """
    sse, sae, n = np.asarray(totals, dtype=np.float64)
    if not n:
        return {"rmse_mm": math.nan, "mae_mm": math.nan}
    rmse, mae = float(np.sqrt(sse / n)), float(sae / n)
    return {"rmse_mm": rmse if math.isfinite(rmse) else math.nan, "mae_mm": mae if math.isfinite(mae) else math.nan}


def contingency_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """POD, FAR (ratio), CSI, ETS and frequency bias from contingency counts, for tables and bootstrap alike.

    Parameters
    ----------
    counts : numpy.ndarray
        Shape ``(..., 4)``: hits, misses, false alarms, correct negatives.

    Returns
    -------
    dict of str to numpy.ndarray
        Keys :data:`CATEGORICAL`, each of shape ``(...)``; NaN where a ratio is undefined.
    """
    hits, misses, false_alarms, negatives = np.moveaxis(np.asarray(counts, dtype=np.float64), -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        random_hits = _ratio((hits + misses) * (hits + false_alarms), hits + misses + false_alarms + negatives)
        return {"pod": _ratio(hits, hits + misses), "far": _ratio(false_alarms, hits + false_alarms),
                "csi": _ratio(hits, hits + misses + false_alarms),
                "ets": _ratio(hits - random_hits, hits + misses + false_alarms - random_hits),
                "fbias": _ratio(hits + false_alarms, hits + misses)}


class CategoricalScores(_Accumulator):
    """Contingency counts per threshold, for yes/no rain scores; an event is ``value >= threshold``.

    ``per_time()`` gives the counts per time, shape ``(n_times, n_thresholds, 4)``.

    Parameters
    ----------
    thresholds : iterable of float
        Rain thresholds (mm), distinct.
    per_time : bool
        Keep the counts per time.
    """

    def __init__(self, thresholds: Iterable[float] = DEFAULT_THRESHOLDS_MM, per_time: bool = False) -> None:
        super().__init__(per_time)
        self.thresholds = _thresholds(thresholds)
        self._counts = np.zeros((len(self.thresholds), 4))

    def _add(self, f: np.ndarray, o: np.ndarray) -> np.ndarray:
        f, o = (x.reshape(len(x) if x.ndim else 1, -1) for x in (f, o))
        counts = np.empty((f.shape[0], len(self.thresholds), 4))
        for k, threshold in enumerate(self.thresholds):
            f_event, o_event = f >= threshold, o >= threshold
            hits = (f_event & o_event).sum(axis=1)
            misses, false_alarms = o_event.sum(axis=1) - hits, f_event.sum(axis=1) - hits
            counts[:, k] = np.stack([hits, misses, false_alarms, f.shape[1] - hits - misses - false_alarms], axis=1)
        self._counts += counts.sum(axis=0)
        return counts

    def compute(self) -> xr.Dataset:
        """The scores over everything accumulated.

        Returns
        -------
        xarray.Dataset
            ``pod, far, csi, ets, fbias`` on dim ``threshold`` (mm).
        """
        scores = contingency_scores(self._counts)
        return xr.Dataset({name: ("threshold", scores[name]) for name in CATEGORICAL},
                          coords={"threshold": _threshold_coord(self.thresholds)})


class FractionsSkillScore(_Accumulator):
    """Fractions skill score (Roberts & Lean 2008): rewards rain in roughly the right place, which point
    scores punish twice (a miss and a false alarm).

    The squared differences of window fractions and the reference terms are summed over all windows
    and times before the ratio, so it is not a mean of per-time FSS. Windows slide over the interior of
    the grid (no zero padding), as in ``scores.spatial.fss_2d``. Fields are ``(..., lat, lon)``.

    Parameters
    ----------
    thresholds : iterable of float
        Rain thresholds (mm), distinct; an event is ``value >= threshold``.
    windows : iterable of int
        Square window sizes in grid cells, distinct.
    """

    def __init__(self, thresholds: Iterable[float] = DEFAULT_THRESHOLDS_MM,
                 windows: Iterable[int] = DEFAULT_FSS_WINDOWS) -> None:
        super().__init__(per_time=False)
        self.thresholds = _thresholds(thresholds)
        self.windows = tuple(require_positive_int("fss_windows", w) for w in windows)
        if not self.windows or len(set(self.windows)) < len(self.windows):
            raise ConfigError(f"fss_windows must be distinct integers >= 1, e.g. 1 3 5, got {windows!r}.", "fss_windows")
        self._sums = np.zeros((len(self.thresholds), len(self.windows), 3))  # forecast², observed², difference²
        self._grid: tuple[int, ...] | None = None

    def _add(self, f: np.ndarray, o: np.ndarray) -> None:
        if f.ndim < 2 or self._grid not in (None, f.shape[-2:]):
            raise DataError(f"FSS needs fields (..., lat, lon) on one grid; got shape {f.shape} after grid {self._grid}.")
        self._grid = grid = f.shape[-2:]
        for k, threshold in enumerate(self.thresholds):
            tables = []  # summed-area tables of the events, with a leading row and column of zeros
            for x in (f, o):
                table = np.zeros((*x.shape[:-2], grid[0] + 1, grid[1] + 1), dtype=np.int64)
                table[..., 1:, 1:] = (x >= threshold).cumsum(axis=-2).cumsum(axis=-1)
                tables.append(table)
            for j, w in enumerate(self.windows):
                if w <= min(grid):
                    cf, co = (t[..., w:, w:] - t[..., :-w, w:] - t[..., w:, :-w] + t[..., :-w, :-w] for t in tables)
                    self._sums[k, j] += [(cf * cf).sum(), (co * co).sum(), ((cf - co) ** 2).sum()]

    def compute(self) -> xr.Dataset:
        """The FSS over everything accumulated; NaN without any event, or for a window larger than the grid.

        Returns
        -------
        xarray.Dataset
            ``fss`` on dims ``threshold`` (mm) and ``window`` (grid cells).
        """
        fits = np.array([self._grid is not None and w <= min(self._grid) for w in self.windows])
        if self._grid is not None and not fits.all():
            logger.warning("FSS window(s) %s larger than the %s grid: their FSS is NaN.",
                           [w for w, ok in zip(self.windows, fits) if not ok], self._grid)
        forecast, observed, difference = np.moveaxis(self._sums, -1, 0)
        fss = np.where(fits, 1.0 - _ratio(difference, forecast + observed), np.nan)
        return xr.Dataset({"fss": (("threshold", "window"), fss)},
                          coords={"threshold": _threshold_coord(self.thresholds),
                                  "window": ("window", np.array(self.windows), {"units": "grid cells"})})


def rmse(forecast: Array, observed: Array) -> float:
    """Root-mean-square error over every value (mm), through :class:`ContinuousScores`, for one-off uses.

    Parameters
    ----------
    forecast, observed : numpy.ndarray or xarray.DataArray
        Same shape.

    Returns
    -------
    float
        NaN for empty fields.
    """
    return ContinuousScores().accumulate(forecast, observed).compute()["rmse_mm"]

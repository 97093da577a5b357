"""Normalization statistics fitted on the training split, and the transforms that use them.

Atmospheric variables are z-scored per variable and pressure level. Precipitation goes through
log1p (it is heavily skewed: mostly zeros, rare extremes) and is then divided by its training
standard deviation but *not centred*: the model's head is a ReLU, and only an uncentred scale keeps
0 mm at 0 so the model can predict dry cells (a centred z-score would put dry cells at a negative
value the ReLU can never reach). The same statistics serve xarray datasets (training, inference) and
stacked arrays (the pyfunc model), through one pair of transform functions.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from convlstm.atomic import atomic_write_bytes
from convlstm.data.schema import CF_ATTRS, LEVEL_VARIABLES, PRECIPITATION, VARIABLES, describe_source
from convlstm.errors import DataError

_FORMAT_VERSION = 1
_MIN_STD = 1e-6  # a constant field normalizes to 0 instead of dividing by zero


def _forward(values: Any, mean: Any, std: Any, log: bool) -> Any:
    """Physical units → normalized space (works on numpy, torch and xarray alike)."""
    if log:
        values = np.log1p(values.clip(min=0)) if not isinstance(values, torch.Tensor) else torch.log1p(values.clamp(min=0))
    return (values - mean) / std


def _inverse(values: Any, mean: Any, std: Any, log: bool) -> Any:
    """Normalized space → physical units; precipitation is clipped at 0 mm."""
    values = values * std + mean
    if log:
        values = np.expm1(values).clip(min=0) if not isinstance(values, torch.Tensor) else torch.expm1(values).clamp(min=0)
    return values


class ConvLSTMNormalizer:
    """Per-variable, per-level statistics; ``fit`` on training data only, then reuse everywhere.

    Attributes
    ----------
    levels : numpy.ndarray or None
        Pressure levels (hPa) the statistics were fitted on; None until fitted or loaded.
    means, stds : dict of str to numpy.ndarray
        Per variable: one value per level, or a scalar for precipitation (in log1p space, mean 0).
    """

    def __init__(self) -> None:
        self.levels: np.ndarray | None = None
        self.means: dict[str, np.ndarray] = {}
        self.stds: dict[str, np.ndarray] = {}

    @property
    def is_fitted(self) -> bool:
        """Whether statistics are there (fitted or loaded)."""
        return self.levels is not None

    def fit(self, train_data: xr.Dataset) -> "ConvLSTMNormalizer":
        """Compute the statistics from the training split; a failed fit leaves the normalizer as it was.

        Parameters
        ----------
        train_data : xarray.Dataset
            The training split in the library layout of ``open_dataset``, physical units; missing
            values (NaN) are skipped; a variable that is all missing or holds infinite values is refused.

        Returns
        -------
        ConvLSTMNormalizer
            This normalizer, fitted.
        """
        _require_variables(train_data)
        reduce_dims = ("time", "lat", "lon")
        stats = {}
        for var in LEVEL_VARIABLES:  # missing values are skipped: windows reading them are dropped or refused later
            field = train_data[var].astype(np.float64)
            stats[var] = (field.mean(reduce_dims, skipna=True), field.std(reduce_dims, skipna=True))
        log_precip = np.log1p(train_data[PRECIPITATION].astype(np.float64).clip(min=0))
        stats[PRECIPITATION] = (xr.zeros_like(log_precip.isel(time=0, lat=0, lon=0)), log_precip.std(reduce_dims, skipna=True))
        (stats,) = _compute(stats)
        means, stds = {}, {}  # set only once all are valid: a failed fit leaves the normalizer as it was
        for var, (mean, std) in stats.items():
            mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
                raise DataError(f"{describe_source(train_data)}: {var} has non-finite values, so it cannot be normalized.")
            means[var] = mean
            stds[var] = np.where(std < _MIN_STD, 1.0, std)
        self.levels = np.asarray(train_data["level"].values, dtype=np.float64)
        self.means, self.stds = means, stds
        return self

    def normalize(self, data: xr.Dataset) -> xr.Dataset:
        """Physical units → normalized space; lazy (dask) data stays lazy.

        Parameters
        ----------
        data : xarray.Dataset
            Every variable, on the fitted levels.

        Returns
        -------
        xarray.Dataset
            A float32 copy, normalized, with the same attributes.
        """
        return self._apply(data, _forward)

    def denormalize(self, data: xr.Dataset) -> xr.Dataset:
        """Normalized space → physical units (the inverse of ``normalize``).

        Parameters
        ----------
        data : xarray.Dataset
            Every variable, normalized.

        Returns
        -------
        xarray.Dataset
            A float32 copy in physical units; precipitation clipped at 0 mm.
        """
        return self._apply(data, _inverse)

    def channel_statistics(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The statistics per stacked channel, in ``stack_channels`` order, for stacked arrays.

        Returns
        -------
        mean, std : numpy.ndarray
            ``[C]`` float64.
        is_log : numpy.ndarray
            ``[C]`` bool: True for the channels that go through log1p (precipitation, the last).
        """
        self._require_fitted()
        means = np.concatenate([*(self.means[v] for v in LEVEL_VARIABLES), np.atleast_1d(self.means[PRECIPITATION])])
        stds = np.concatenate([*(self.stds[v] for v in LEVEL_VARIABLES), np.atleast_1d(self.stds[PRECIPITATION])])
        is_log = np.zeros(len(means), dtype=bool)
        is_log[-1] = True
        return means, stds, is_log

    def normalize_stacked(self, stacked: np.ndarray, in_place: bool = False) -> np.ndarray:
        """Normalize raw fields already stacked as ``[..., C, H, W]`` (what the pyfunc model receives).

        Parameters
        ----------
        stacked : numpy.ndarray
            Physical units, channels in ``stack_channels`` order.
        in_place : bool
            Overwrite a float32 ``stacked`` instead of copying it: for arrays built only to be
            normalized, such as a dataset's stack, where a copy of a 0.25° grid costs gigabytes.

        Returns
        -------
        numpy.ndarray
            float32, normalized; ``stacked`` itself when ``in_place``.
        """
        means, stds, _ = self.channel_statistics()
        if stacked.shape[-3] != len(means):
            raise DataError(f"Expected {len(means)} channels (5 variables × {len(self.levels)} levels + precipitation), got {stacked.shape[-3]}.")
        if in_place and stacked.dtype != np.float32:
            raise DataError(f"In-place normalization needs a float32 array, got {stacked.dtype}.")
        out = stacked if in_place else stacked.astype(np.float32)
        precipitation = out[..., -1, :, :]
        np.log1p(np.clip(precipitation, 0, None, out=precipitation), out=precipitation)  # as _forward(log=True)
        shape = (len(means), 1, 1)
        out -= means.reshape(shape).astype(np.float32)
        out /= stds.reshape(shape).astype(np.float32)
        return out

    def normalize_precipitation(self, values: np.ndarray | torch.Tensor | float) -> np.ndarray | torch.Tensor:
        """Precipitation in mm → normalized space (e.g. a threshold in mm for the loss).

        Parameters
        ----------
        values : numpy.ndarray, torch.Tensor or float
            Precipitation (mm); negative values count as 0.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            Normalized values: a tensor for a tensor, a numpy float for a number.
        """
        self._require_fitted()
        return _forward(np.asarray(values, dtype=np.float64) if isinstance(values, (int, float)) else values,
                        float(self.means[PRECIPITATION]), float(self.stds[PRECIPITATION]), log=True)

    def denormalize_precipitation(self, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Model output (normalized precipitation) → mm, never negative.

        Parameters
        ----------
        values : numpy.ndarray or torch.Tensor
            Normalized precipitation, any shape.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            Precipitation (mm), of the same kind and shape.
        """
        self._require_fitted()
        return _inverse(values, float(self.means[PRECIPITATION]), float(self.stds[PRECIPITATION]), log=True)

    def denormalize_tensor(
        self,
        precip_tensor: torch.Tensor | np.ndarray,
        lat_coords: np.ndarray,
        lon_coords: np.ndarray,
        time_coords: np.ndarray | None = None,
    ) -> xr.Dataset:
        """Model output → dataset of precipitation in mm, with CF attributes.

        Parameters
        ----------
        precip_tensor : torch.Tensor or numpy.ndarray
            Normalized forecasts ``[B, 1, H, W]``, ``[B, H, W]`` or ``[H, W]``.
        lat_coords, lon_coords : numpy.ndarray
            The grid (degrees), ``H`` and ``W`` long.
        time_coords : numpy.ndarray, optional
            ``B`` valid times (default: ``0 .. B - 1``).

        Returns
        -------
        xarray.Dataset
            Precipitation ``(time, lat, lon)``, float32.
        """
        values = precip_tensor.detach().float().cpu().numpy() if isinstance(precip_tensor, torch.Tensor) else np.asarray(precip_tensor, dtype=np.float32)
        if values.ndim == 4 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim == 2:
            values = values[None]
        if values.ndim != 3 or values.shape[1:] != (len(lat_coords), len(lon_coords)):
            raise DataError(
                f"Expected predictions shaped [B, 1, {len(lat_coords)}, {len(lon_coords)}] to match the given coordinates, got {tuple(np.shape(precip_tensor))}."
            )
        if time_coords is None:
            time_coords = np.arange(values.shape[0])
        if len(time_coords) != values.shape[0]:
            raise DataError(f"Got {len(time_coords)} time coordinates for {values.shape[0]} predictions.")
        precip = xr.DataArray(
            self.denormalize_precipitation(values).astype(np.float32),
            dims=("time", "lat", "lon"),
            coords={"time": time_coords, "lat": lat_coords, "lon": lon_coords},
            attrs=CF_ATTRS[PRECIPITATION],
        )
        for dim in ("lat", "lon"):
            precip[dim].attrs = CF_ATTRS[dim]
        return xr.Dataset({PRECIPITATION: precip})

    def to_dict(self) -> dict[str, Any]:
        """Plain statistics (lists and numbers), for checkpoints and the pickle file.

        Returns
        -------
        dict
            ``format_version``, ``levels``, ``means`` and ``stds``: what :meth:`from_dict` reads.
        """
        self._require_fitted()
        return {
            "format_version": _FORMAT_VERSION,
            "levels": self.levels.tolist(),
            "means": {k: np.asarray(v).tolist() for k, v in self.means.items()},
            "stds": {k: np.asarray(v).tolist() for k, v in self.stds.items()},
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "ConvLSTMNormalizer":
        """Rebuild a fitted normalizer from :meth:`to_dict` output (as a checkpoint holds it).

        Parameters
        ----------
        state : dict
            The plain statistics; another format version or set of variables is refused.

        Returns
        -------
        ConvLSTMNormalizer
            A new normalizer.
        """
        keys = [set(state.get(part, {})) for part in ("means", "stds")]
        if state.get("format_version") != _FORMAT_VERSION or keys != [set(VARIABLES)] * 2:
            raise DataError("Normalizer statistics are not in the format this version of convlstm writes.")
        normalizer = cls()
        normalizer.levels = np.asarray(state["levels"], dtype=np.float64)
        normalizer.means = {k: np.asarray(v, dtype=np.float64) for k, v in state["means"].items()}
        normalizer.stds = {k: np.asarray(v, dtype=np.float64) for k, v in state["stds"].items()}
        return normalizer

    def save(self, filepath: str | os.PathLike[str]) -> None:
        """Write the statistics (a pickled dict of plain lists) atomically.

        Parameters
        ----------
        filepath : path-like
            The file (``normalizer.pkl`` beside the checkpoints).
        """
        atomic_write_bytes(Path(filepath), pickle.dumps(self.to_dict()))

    def load(self, filepath: str | os.PathLike[str]) -> "ConvLSTMNormalizer":
        """Read statistics written by ``save`` into this normalizer.

        Parameters
        ----------
        filepath : path-like
            A file written by :meth:`save`.

        Returns
        -------
        ConvLSTMNormalizer
            This normalizer.
        """
        path = Path(filepath)
        if not path.is_file():
            raise DataError(f"Normalizer file {path} does not exist; it is written next to the checkpoint by training.")
        try:
            state = pickle.loads(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
            raise DataError(f"{path} is not a normalizer file written by convlstm ({exc}).") from exc
        loaded = self.from_dict(state if isinstance(state, dict) else {})
        self.levels, self.means, self.stds = loaded.levels, loaded.means, loaded.stds
        return self

    def check_levels(self, data: xr.Dataset) -> None:
        """Refuse data whose pressure levels differ from the ones the statistics were fitted on.

        Parameters
        ----------
        data : xarray.Dataset
            Data with a ``level`` coordinate (hPa).
        """
        self._require_fitted()
        levels = np.asarray(data["level"].values, dtype=np.float64)
        if levels.shape != self.levels.shape or not np.allclose(levels, self.levels):
            raise DataError(
                f"{describe_source(data)} has pressure levels {levels.tolist()} hPa but the normalizer (and model) were "
                f"fitted on {self.levels.tolist()} hPa. Use data on the same levels."
            )

    def _apply(self, data: xr.Dataset, transform: Any) -> xr.Dataset:
        _require_variables(data)
        self.check_levels(data)
        out = data.copy()
        level = data["level"]
        for var in LEVEL_VARIABLES:
            mean = xr.DataArray(self.means[var].astype(np.float32), dims="level", coords={"level": level})
            std = xr.DataArray(self.stds[var].astype(np.float32), dims="level", coords={"level": level})
            out[var] = transform(data[var], mean, std, log=False).astype(np.float32)
        out[PRECIPITATION] = transform(
            data[PRECIPITATION], np.float32(self.means[PRECIPITATION]), np.float32(self.stds[PRECIPITATION]), log=True
        ).astype(np.float32)
        for var in VARIABLES:
            out[var].attrs = data[var].attrs
        return out

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise DataError("The normalizer has not been fitted: call fit(train_data) or load(path) first.")


def _require_variables(data: xr.Dataset) -> None:
    missing = [v for v in VARIABLES if v not in data]
    if missing:
        raise DataError(f"{describe_source(data)} lacks {', '.join(missing)}; open it with convlstm.data.open_dataset first.")


def _compute(*objects: Any) -> tuple[Any, ...]:
    """Compute lazy reductions in one pass over the data (dask), or return eager ones as they are."""
    try:
        import dask
    except ImportError:  # pragma: no cover - dask is a dependency, but eager data needs none
        return objects
    return dask.compute(*objects)

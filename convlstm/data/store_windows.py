"""Windows read on demand from a prepared store: the same windows as ``ConvLSTMDataset`` in bounded memory.

Only the frames a window (or a batch's stretch) needs are read, stacked in the usual channel order and
normalized. The store is opened lazily once per process (DataLoader workers fork; a handle inherited
across a fork is never used), and the dataset pickles without one.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import xarray as xr

from convlstm.config import RegionConfig
from convlstm.data.dataset import WindowDataset
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.schema import PRECIPITATION, VARIABLES
from convlstm.data.stacking import missing_steps_lazily, stack_channels
from convlstm.data.store import STORE_ATTR, open_store
from convlstm.errors import ConfigError


class StoreWindowDataset(WindowDataset):
    """Windows of a split of a prepared store, read when asked for (see :class:`WindowDataset`).

    Parameters
    ----------
    data : xarray.Dataset
        ``open_store``'s dataset, or a contiguous time range of it (a split); physical units.
    window_size, region_config, target_offset, include_upstream, drop_missing
        As for :class:`WindowDataset`.
    normalizer : ConvLSTMNormalizer
        The statistics to normalize frames with as they are read (required).
    missing : numpy.ndarray, optional
        The store's missing-value flags for this crop, over its whole time axis (``StoreInfo.missing_steps``);
        without them they are computed from the store, out of core.
    """

    #: Frames are read on demand: the trainer reads ahead with worker processes.
    reads_on_demand = True

    def __init__(self, data: xr.Dataset, window_size: int, region_config: RegionConfig, target_offset: int = 1,
                 include_upstream: bool = False, normalizer: ConvLSTMNormalizer | None = None,
                 drop_missing: bool = False, missing: np.ndarray | None = None) -> None:
        if STORE_ATTR not in data.attrs or normalizer is None:
            raise ConfigError("StoreWindowDataset reads a dataset opened with open_store, and needs a normalizer.")
        self.store = data.attrs[STORE_ATTR]
        self._normalizer = normalizer
        self._store_missing = missing
        self._opened: xr.Dataset | None = None
        self._opened_pid: int | None = None
        # Grid indices as coordinates, so that the crop says which rows and columns of the store it reads.
        indexed = data.assign_coords(_row=("lat", np.arange(data.sizes["lat"])), _col=("lon", np.arange(data.sizes["lon"])))
        super().__init__(indexed, window_size, region_config, target_offset, include_upstream, normalizer, drop_missing)
        self._store_missing = None

    def _load(self, crop: xr.Dataset, normalizer: ConvLSTMNormalizer | None) -> np.ndarray:
        self._rows, self._cols = _as_slice(crop["_row"].values), _as_slice(crop["_col"].values)
        self._offset = int(self._reader().indexes["time"].get_loc(crop["time"].values[0]))
        if self._store_missing is not None:
            return np.asarray(self._store_missing[self._offset:self._offset + crop.sizes["time"]], dtype=bool)
        return missing_steps_lazily(crop)

    def _missing_per_channel(self, crop: xr.Dataset, missing: np.ndarray) -> np.ndarray:
        counts = xr.Dataset({var: (~np.isfinite(crop[var])).sum(["time", "lat", "lon"]) for var in VARIABLES}).compute()
        return np.concatenate([np.atleast_1d(counts[var].values) for var in VARIABLES])  # stacking order

    def _reader(self) -> xr.Dataset:
        """This process's lazy view of the crop's rows and columns of the store (opened on first use)."""
        if self._opened is None or self._opened_pid != os.getpid():
            self._opened = open_store(self.store, dask=False).isel(lat=self._rows, lon=self._cols)
            self._opened_pid = os.getpid()
        return self._opened

    def _frames(self, low: int, high: int) -> np.ndarray:
        frames = stack_channels(self._reader().isel(time=slice(self._offset + low, self._offset + high)), allow_missing=True)
        self._normalizer.normalize_stacked(frames, in_place=True)
        frames[self._missing[low:high]] = 0.0
        return frames

    def _precipitation(self, index: int | np.ndarray) -> np.ndarray:
        values = self._reader()[PRECIPITATION].isel(time=self._offset + np.asarray(index)).transpose(..., "lat", "lon").values
        out = np.asarray(self._normalizer.normalize_precipitation(values), dtype=np.float32)
        out[self._missing[index]] = 0.0
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_opened"], state["_opened_pid"] = None, None  # each process opens the store itself
        return state


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A run of consecutive indices as a slice (zarr then reads a box, not a list of columns)."""
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index

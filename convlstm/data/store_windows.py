"""Windows read on demand from a prepared store: the same windows as ``ConvLSTMDataset`` in bounded memory.

Frames are read a block of whole store chunks (about ``BLOCK_BYTES``) at a time, stacked in the usual channel order,
normalized, and kept in a small per-process cache of recent blocks: zarr-python 3 spends about a millisecond on
every read whatever its size, so reading each window's six variables anew cost more CPU than the model step on
two cores, while a window from the cache is a view. The cache holds the blocks one pool of the epoch's order
needs (``convlstm.data.epoch_order``), so its size follows the grid, never the length of the record. The store
is opened lazily once per process (DataLoader workers fork; a handle inherited across a fork is never used),
and the dataset pickles without a handle or a cache.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np
import xarray as xr

from convlstm.config import RegionConfig
from convlstm.data.dataset import WindowDataset
from convlstm.data.epoch_order import cache_blocks
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.schema import VARIABLES
from convlstm.data.stacking import missing_steps_lazily, stack_channels
from convlstm.data.store import STORE_ATTR, open_store
from convlstm.errors import ConfigError

#: About this many bytes of frames are read at once (whole store chunks): few zarr calls per pass over the data.
BLOCK_BYTES = 16 * 2**20


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
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
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
            self._cache = OrderedDict()
            chunk = int(self._opened[VARIABLES[0]].encoding.get("chunks", (1,))[0])
            frame_bytes = 4 * int(np.prod(self.input_shape[1:]))
            self._block_steps = chunk * max(1, BLOCK_BYTES // (chunk * frame_bytes))
            # A pool's worth, the least recently used dropped: an epoch reads each block about once per pool needing it.
            self._max_blocks = cache_blocks(self.window_size + self.target_offset, self._block_steps)
        return self._opened

    def _block(self, index: int) -> np.ndarray:
        """Normalized frames ``[block, C, H, W]`` of the store's time block ``index`` (cached)."""
        reader = self._reader()
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        steps = self._block_steps
        frames = stack_channels(reader.isel(time=slice(index * steps, (index + 1) * steps)), allow_missing=True)
        self._normalizer.normalize_stacked(frames, in_place=True)
        self._cache[index] = frames
        if len(self._cache) > self._max_blocks:
            self._cache.popitem(last=False)
        return frames

    def _frame(self, step: int) -> np.ndarray:
        """Normalized frame ``step`` of the store's time axis ``[C, H, W]``: a view into its cached block."""
        self._reader()
        return self._block(step // self._block_steps)[step % self._block_steps]

    def _store_frames(self, low: int, high: int) -> np.ndarray:
        """Normalized frames ``low .. high - 1`` of the store's time axis: a view into the cache when they lie
        in one block (never written to: the caller copies before changing it), else a new array."""
        self._reader()
        size = self._block_steps
        parts = [self._block(k)[max(low, k * size) - k * size:min(high, (k + 1) * size) - k * size]
                 for k in range(low // size, (high - 1) // size + 1)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _frames(self, low: int, high: int) -> np.ndarray:
        frames = self._store_frames(self._offset + low, self._offset + high)
        missing = self._missing[low:high]
        if missing.any():
            frames = frames.copy()
            frames[missing] = 0.0
        return frames

    def _precipitation(self, index: int | np.ndarray) -> np.ndarray:
        steps = np.atleast_1d(np.asarray(index))
        out = np.stack([self._frame(self._offset + int(step))[-1] for step in steps])  # one [H, W] copy each
        out[self._missing[steps]] = 0.0
        return out if np.ndim(index) else out[0]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_opened"], state["_opened_pid"], state["_cache"] = None, None, OrderedDict()  # each process opens its own
        return state


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """A run of consecutive indices as a slice (zarr then reads a box, not a list of columns)."""
    if len(index) and np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        return slice(int(index[0]), int(index[0]) + len(index))
    return index

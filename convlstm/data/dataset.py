"""Sliding windows over the region crop: what the model trains and predicts on.

In memory (``ConvLSTMDataset``) the crop and the channel stack are built once at construction; an item
is a pair of numpy views wrapped as tensors (O(1), no xarray, no copy). A window never spans a gap in
the time axis.
Missing values count only inside the cut-out, where the model reads: they are found in the same
pass that stacks it, and refused, or (``drop_missing``) the windows that read them are left out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset

from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.regions import RegionConfig, crop_regions
from convlstm.data.schema import LEVEL_VARIABLES, PRECIPITATION, describe_source, format_time
from convlstm.data.stacking import missing_steps, n_channels, stack_channels
from convlstm.data.timestep import regular_step
from convlstm.checks import require_positive_int
from convlstm.errors import DataError


def window_starts(times: np.ndarray, window_size: int, target_offset: int) -> np.ndarray:
    """Start indices of the windows whose inputs and target lie on a regular stretch of the time axis.

    The regular step is the most common spacing; on a gap-free axis there are
    ``T - window_size - target_offset + 1`` windows.

    Parameters
    ----------
    times : numpy.ndarray
        The time axis ``[T]``, increasing.
    window_size : int
        Input steps per window.
    target_offset : int
        Steps from the last input to the target.

    Returns
    -------
    numpy.ndarray
        int64 indices into ``times``, increasing; empty when no window fits.
    """
    span = window_size + target_offset  # time steps from first input to target, inclusive
    if len(times) < span:
        return np.zeros(0, dtype=np.int64)
    irregular = np.concatenate([[0], np.cumsum(np.diff(times) != regular_step(times))])
    # A window starting at s covers steps s .. s+span-2: it is valid when none of them is irregular.
    starts = np.arange(len(times) - span + 1)
    return starts[irregular[starts + span - 1] == irregular[starts]]


class WindowBatch(NamedTuple):
    """Consecutive windows as the one stretch of frames they share.

    Window ``k`` is ``frames[starts[k] : starts[k] + window_size]``; ``ConvLSTMUNet.forward_windows``
    takes it apart without copying a window.

    Parameters
    ----------
    frames : torch.Tensor
        ``[N, C, H, W]``: the frames from the first window's start to the last window's end.
    starts : torch.Tensor
        ``[B]`` integer offsets into ``frames``, one per window.
    window_size : int
        Frames per window.
    """

    frames: torch.Tensor
    starts: torch.Tensor
    window_size: int

    @property
    def device(self) -> torch.device:
        """Where the frames are."""
        return self.frames.device

    def to(self, device: torch.device, non_blocking: bool = False) -> "WindowBatch":
        """The same windows with frames and starts on ``device``, like ``Tensor.to``.

        Parameters
        ----------
        device : torch.device
            Where the model runs.
        non_blocking : bool
            Copy the frames asynchronously (from pinned memory).

        Returns
        -------
        WindowBatch
            A new batch; this one is unchanged.
        """
        return WindowBatch(self.frames.to(device, non_blocking=non_blocking), self.starts.to(device), self.window_size)


class WindowDataset(Dataset):
    """Windows ``[T, C, H, W]`` of normalized input and ``[H_down, W_down]`` targets (normalized precipitation).

    The window logic (starts on regular stretches of time, windows reading missing values refused or
    left out, targets, batches of shared frames) lives here once; a subclass only says how frames are
    fetched: :class:`ConvLSTMDataset` from one array in memory, ``StoreWindowDataset`` from a prepared
    Zarr store, on demand.

    With ``include_upstream`` the upstream region is joined west of the downstream one along
    longitude; the target is always the downstream precipitation ``target_offset`` steps after the
    window's last input, and ``downstream_columns`` says where it sits in the model's output.

    Parameters
    ----------
    data : xarray.Dataset
        The library's layout (``open_dataset``): normalized already, or in physical units when
        ``normalizer`` is given.
    window_size : int
        Input time steps per window.
    region_config : RegionConfig
        The region bounds.
    target_offset : int
        Steps ahead of the window's last input to predict.
    include_upstream : bool
        Join the upstream region west of the downstream one.
    normalizer : ConvLSTMNormalizer, optional
        Fitted statistics to normalize physical ``data`` with.
    drop_missing : bool
        Leave out the windows whose inputs or target hold a missing value in the cut-out (``--nan-policy
        drop``); by default such values are refused.

    Attributes
    ----------
    starts : numpy.ndarray
        Index into ``times`` of each window's first input.
    lat, lon, levels, times : numpy.ndarray
        Coordinates of the crop (degrees, hPa, datetime64).
    downstream_columns : slice
        The downstream region's columns of the crop (and of the model's output).
    n_missing_steps : int
        Time steps with a missing value in the crop.
    n_windows_possible : int
        Windows on the time axis before those touching a missing value were left out.
    """

    def __init__(
        self,
        data: xr.Dataset,
        window_size: int,
        region_config: RegionConfig,
        target_offset: int = 1,
        include_upstream: bool = False,
        normalizer: ConvLSTMNormalizer | None = None,
        drop_missing: bool = False,
    ) -> None:
        self.window_size = require_positive_int("window_size", window_size)
        self.target_offset = require_positive_int("target_offset", target_offset)
        self.include_upstream = bool(include_upstream)
        self.region_config = region_config
        n_time, span = data.sizes["time"], window_size + target_offset
        if n_time < span:
            raise DataError(f"{describe_source(data)}: {n_time} time step(s) are too few for one window, which needs "
                            f"window_size + target_offset = {span}. Use a longer file.")
        crop = crop_regions(data, region_config, include_upstream)
        self.downstream_columns = crop.downstream_columns
        self.lat = crop.data["lat"].values
        self.lon = crop.data["lon"].values
        self.levels = crop.data["level"].values
        self.times = crop.data["time"].values
        if normalizer is not None:
            normalizer.check_levels(crop.data)
        missing = self._load(crop.data, normalizer)
        self.n_missing_steps = int(missing.sum())
        if self.n_missing_steps and not drop_missing:
            raise DataError(self._missing_message(describe_source(data), crop.data, missing))
        self._missing = missing
        self.starts = window_starts(self.times, self.window_size, self.target_offset)
        if len(self.starts) == 0:
            raise DataError(f"{describe_source(data)} has no gap-free stretch of {span} time steps, so no window can "
                            "be built. Use a file without gaps in time.")
        self.n_windows_possible = len(self.starts)
        if self.n_missing_steps:
            self.starts = self.starts[self._reads_no_missing_value(missing)]
            if len(self.starts) == 0:
                raise DataError(f"{describe_source(data)}: each of its {self.n_windows_possible} windows reads one of the "
                                f"{self.n_missing_steps} time steps with missing values in the "
                                f"{self._regions_text()}. Interpolate them in time with --nan-policy fill.")

    # ---- how frames are fetched: what a subclass provides ---------------------------------------
    def _load(self, crop: xr.Dataset, normalizer: ConvLSTMNormalizer | None) -> np.ndarray:
        """Get ready to serve frames of ``crop``; return which of its time steps hold a missing value."""
        raise NotImplementedError

    def _missing_per_channel(self, crop: xr.Dataset, missing: np.ndarray) -> np.ndarray:
        """Missing values per stacked channel ``[C]`` (for the refusal's message)."""
        raise NotImplementedError

    def _frames(self, low: int, high: int) -> np.ndarray:
        """Time steps ``low:high`` of the crop, stacked and normalized ``[N, C, H, W]`` (missing steps zero)."""
        raise NotImplementedError

    def _precipitation(self, index: int | np.ndarray) -> np.ndarray:
        """Normalized precipitation over the whole input grid at ``index`` (``[H, W]``, or ``[B, H, W]``)."""
        raise NotImplementedError

    # ---- the window logic, shared -------------------------------------------------------------
    def describe_kept(self) -> str:
        """What was left out for missing values, for the log: ``120 of 150 windows (12 time step(s) ...)``.

        Returns
        -------
        str
            Windows kept, of those the time axis holds, and the time steps with missing values.
        """
        return (f"{len(self)} of {self.n_windows_possible} windows ({self.n_missing_steps} time step(s) with missing "
                "values left out)")

    def _reads_no_missing_value(self, missing: np.ndarray) -> np.ndarray:
        """Which windows (of ``starts``) have neither an input step nor the target step in ``missing``."""
        before = np.concatenate([[0], np.cumsum(missing)])  # missing steps before each index
        inputs_clean = before[self.starts + self.window_size] == before[self.starts]
        return inputs_clean & ~missing[self.target_indices]

    def _regions_text(self) -> str:
        return "upstream and downstream regions" if self.include_upstream else "downstream region"

    def _missing_message(self, source: str, crop: xr.Dataset, missing: np.ndarray) -> str:
        """How many values of each variable are missing in the crop, in how many steps, from when, and the fix."""
        per_channel = self._missing_per_channel(crop, missing)
        n_levels = len(self.levels)
        counts = {var: int(per_channel[k * n_levels:(k + 1) * n_levels].sum()) for k, var in enumerate(LEVEL_VARIABLES)}
        counts[PRECIPITATION] = int(per_channel[-1])
        first = format_time(self.times[np.flatnonzero(missing)[0]])
        return (f"{source} has missing values (NaN) in the {self._regions_text()} the model reads — "
                f"{', '.join(f'{var}: {count}' for var, count in counts.items() if count)} — in {self.n_missing_steps} "
                f"time step(s), the first at {first}. Leave out the windows that read them with --nan-policy drop, or "
                "interpolate them in time with --nan-policy fill.")

    @property
    def downstream_lon(self) -> np.ndarray:
        """Longitudes of the target grid (degrees east)."""
        return self.lon[self.downstream_columns]

    @property
    def target_indices(self) -> np.ndarray:
        """Index into ``times`` of each window's target."""
        return self.starts + self.window_size + self.target_offset - 1

    @property
    def target_times(self) -> np.ndarray:
        """Valid time of each window's target."""
        return self.times[self.target_indices]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(T, C, H, W)`` of one input window."""
        return (self.window_size, n_channels(len(self.levels)), len(self.lat), len(self.lon))

    def observed_precipitation(self) -> np.ndarray:
        """The normalized precipitation at each window's target time over the whole input grid ``[N, H, W]``
        (the targets are its ``downstream_columns``): what the figures set beside the forecasts.

        Returns
        -------
        numpy.ndarray
            float32, one map per window, in order.
        """
        return np.ascontiguousarray(self._precipitation(self.target_indices))

    def __len__(self) -> int:
        return len(self.starts)

    def window_batches(self, batch_size: int,
                       part: tuple[int, int] = (0, 1)) -> Iterator[tuple[WindowBatch, torch.Tensor]]:
        """Every window in order, ``batch_size`` at a time, with its targets ``[B, H_down, W_down]``.

        The windows of a batch arrive as the stretch of frames they span (read once; in memory a view),
        so overlapping windows are neither copied nor, by ``forward_windows``, projected twice.

        Parameters
        ----------
        batch_size : int
            Windows per batch (the last batch may be smaller).
        part : tuple of int
            ``(k, parts)``: only the ``k``-th of ``parts`` consecutive stretches of the windows (as equal as
            can be; possibly empty), which is what one of ``parts`` processes scores. Consecutive, so that
            the batches still share their frames.

        Yields
        ------
        WindowBatch, torch.Tensor
            The windows, and their normalized targets.
        """
        k, parts = part
        for first in range(len(self) * k // parts, len(self) * (k + 1) // parts, batch_size):
            end = min(first + batch_size, len(self) * (k + 1) // parts)
            starts = self.starts[first:end]
            low, high = int(starts[0]), int(starts[-1]) + self.window_size
            targets = self._precipitation(self.target_indices[first:end])[..., self.downstream_columns]
            batch = WindowBatch(torch.from_numpy(self._frames(low, high)), torch.from_numpy(starts - low), self.window_size)
            yield batch, torch.from_numpy(np.ascontiguousarray(targets))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.starts[index])
        window = self._frames(start, start + self.window_size)
        target = self._precipitation(start + self.window_size + self.target_offset - 1)[:, self.downstream_columns]
        return torch.from_numpy(window), torch.from_numpy(target)


class ConvLSTMDataset(WindowDataset):
    """Windows over the region crop stacked in memory once: an item is a pair of numpy views (O(1), no copy).

    The physical crop is stacked first and normalized in place, so no normalized copy of the whole
    grid is made. Parameters as :class:`WindowDataset`.

    Attributes
    ----------
    inputs : numpy.ndarray
        ``[n_times, C, H, W]`` float32, normalized: every time step of the crop, stacked once.
    """

    def _load(self, crop: xr.Dataset, normalizer: ConvLSTMNormalizer | None) -> np.ndarray:
        self.inputs = stack_channels(crop, allow_missing=True)
        missing = missing_steps(self.inputs)
        if normalizer is not None:
            normalizer.normalize_stacked(self.inputs, in_place=True)  # missing values stay NaN: counted, then zeroed
        return missing

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # No kept window reads these frames, but a batch's shared stretch of frames may span them: a NaN there
        # would still reach the weight gradients of the input convolution (0 × NaN).
        self.inputs[self._missing] = 0.0

    def _missing_per_channel(self, crop: xr.Dataset, missing: np.ndarray) -> np.ndarray:
        return (~np.isfinite(self.inputs[missing])).sum(axis=(0, 2, 3))  # only the steps that have some

    def _frames(self, low: int, high: int) -> np.ndarray:
        return self.inputs[low:high]

    def _precipitation(self, index: int | np.ndarray) -> np.ndarray:
        return self.inputs[index, -1]

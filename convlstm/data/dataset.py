"""Sliding windows over one contiguous stacked array: what the model trains and predicts on.

The region crop and the channel stack are built once at construction; an item is a pair of numpy
views wrapped as tensors (O(1), no xarray, no copy). A window never spans a gap in the time axis, so
dropped time steps (missing data) simply remove the windows that would cross them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import xarray as xr
from torch.utils.data import Dataset

from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.regions import RegionConfig, crop_regions
from convlstm.data.schema import describe_source
from convlstm.data.stacking import stack_channels
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
    steps = np.diff(times)
    values, counts = np.unique(steps, return_counts=True)
    irregular = np.concatenate([[0], np.cumsum(steps != values[np.argmax(counts)])])
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


class ConvLSTMDataset(Dataset):
    """Windows ``[T, C, H, W]`` of normalized input and ``[H_down, W_down]`` targets (normalized precipitation).

    With ``include_upstream`` the upstream region is joined west of the downstream one along
    longitude; the target is always the downstream precipitation ``target_offset`` steps after the
    window's last input, and ``downstream_columns`` says where it sits in the model's output.

    Parameters
    ----------
    data : xarray.Dataset
        The library's layout (``open_dataset``): normalized already, or in physical units when
        ``normalizer`` is given; then the crop is stacked first and normalized in place, so no
        normalized copy of the whole grid is made.
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

    Attributes
    ----------
    inputs : numpy.ndarray
        ``[n_times, C, H, W]`` float32, normalized: every time step of the crop, stacked once.
    starts : numpy.ndarray
        Index into ``times`` (and ``inputs``) of each window's first input.
    lat, lon, levels, times : numpy.ndarray
        Coordinates of the crop (degrees, hPa, datetime64).
    downstream_columns : slice
        The downstream region's columns of the crop (and of the model's output).
    """

    def __init__(
        self,
        data: xr.Dataset,
        window_size: int,
        region_config: RegionConfig,
        target_offset: int = 1,
        include_upstream: bool = False,
        normalizer: ConvLSTMNormalizer | None = None,
    ) -> None:
        self.window_size = require_positive_int("window_size", window_size)
        self.target_offset = require_positive_int("target_offset", target_offset)
        self.include_upstream = bool(include_upstream)
        self.region_config = region_config
        n_time = data.sizes["time"]
        if n_time < window_size + target_offset:
            raise DataError(
                f"{describe_source(data)} has {n_time} time steps but window_size + target_offset = "
                f"{window_size + target_offset} are needed for one window. Use more data (a longer split) or a smaller --window-size."
            )
        crop = crop_regions(data, region_config, include_upstream)
        self.downstream_columns = crop.downstream_columns
        self.lat = crop.data["lat"].values
        self.lon = crop.data["lon"].values
        self.levels = crop.data["level"].values
        self.times = crop.data["time"].values
        if normalizer is not None:
            normalizer.check_levels(crop.data)
        self.inputs = stack_channels(crop.data)
        if normalizer is not None:
            normalizer.normalize_stacked(self.inputs, in_place=True)
        self.starts = window_starts(self.times, self.window_size, self.target_offset)
        if len(self.starts) == 0:
            raise DataError(
                f"{describe_source(data)} has no gap-free stretch of {window_size + target_offset} time steps, "
                "so no window can be built. Fill the gaps (nan_policy='fill') or use a smaller --window-size."
            )

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
        return (self.window_size, *self.inputs.shape[1:])

    def __len__(self) -> int:
        return len(self.starts)

    def window_batches(self, batch_size: int) -> Iterator[tuple[WindowBatch, torch.Tensor]]:
        """Every window in order, ``batch_size`` at a time, with its targets ``[B, H_down, W_down]``.

        The windows of a batch arrive as the stretch of frames they span (a view, no copy), so
        overlapping windows are neither copied nor, by ``forward_windows``, projected twice.

        Parameters
        ----------
        batch_size : int
            Windows per batch (the last batch may be smaller).

        Yields
        ------
        WindowBatch, torch.Tensor
            The windows, and their normalized targets.
        """
        for first in range(0, len(self), batch_size):
            starts = self.starts[first:first + batch_size]
            low, high = int(starts[0]), int(starts[-1]) + self.window_size
            targets = self.inputs[self.target_indices[first:first + batch_size], -1, :, self.downstream_columns]
            batch = WindowBatch(torch.from_numpy(self.inputs[low:high]), torch.from_numpy(starts - low), self.window_size)
            yield batch, torch.from_numpy(targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.starts[index])
        window = self.inputs[start:start + self.window_size]
        target = self.inputs[start + self.window_size + self.target_offset - 1, -1, :, self.downstream_columns]
        return torch.from_numpy(window), torch.from_numpy(target)

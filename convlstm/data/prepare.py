"""From a file path to ready windows: open, validate, split, fit the normalizer, normalize, window.

Training, inference on the test split and the comparison all go through this one function, so the
three see the same splits and the same normalization.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import xarray as xr

from convlstm.data.dataset import ConvLSTMDataset, WindowDataset
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.config import RegionConfig
from convlstm.data.regions import check_regions, crop_regions
from convlstm.data.schema import NanPolicy, open_dataset
from convlstm.data.split import create_train_val_test_split, describe_split
from convlstm.data.store import check_store_step, is_prepared_store, read_store_info
from convlstm.data.store_windows import StoreWindowDataset
from convlstm.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The opened data, its splits, the normalizer fitted on train, and a windowed dataset per split.

    Parameters
    ----------
    data : xarray.Dataset
        The whole file in the library's layout, physical units (lazy for a prepared store).
    splits : dict of str to xarray.Dataset
        ``train``, ``val`` and ``test`` time ranges of ``data``, physical units.
    normalizer : ConvLSTMNormalizer
        Fitted on the training split (or the one given to resume with).
    datasets : dict of str to WindowDataset or None
        The normalized windows of each split (in memory, or read on demand from a store); ``test`` is
        None when it holds no window.
    train_ratio, val_ratio : float
        The split used: the caller's, or a prepared store's own (record these, not the caller's).
    """

    data: xr.Dataset
    splits: dict[str, xr.Dataset]
    normalizer: ConvLSTMNormalizer
    datasets: dict[str, WindowDataset | None]
    train_ratio: float = 0.7
    val_ratio: float = 0.15

    @property
    def train(self) -> WindowDataset:
        """The training windows."""
        return self.datasets["train"]  # type: ignore[return-value]

    @property
    def val(self) -> WindowDataset:
        """The validation windows."""
        return self.datasets["val"]  # type: ignore[return-value]

    @property
    def test(self) -> WindowDataset | None:
        """The test windows, or None when the test split is too short for one."""
        return self.datasets["test"]


def prepare_data(
    source: str | os.PathLike[str] | xr.Dataset,
    regions: RegionConfig,
    include_upstream: bool,
    window_size: int,
    target_offset: int = 1,
    train_ratio: float = 0.7,
    val_ratio: float = 0.15,
    normalizer: ConvLSTMNormalizer | None = None,
    nan_policy: NanPolicy = "raise",
    time_step: int | None = None,
    member: int | None = None,
) -> PreparedData:
    """Prepare every split; fit a new normalizer on the training split unless one is given (resume).

    Parameters
    ----------
    source : path-like or xarray.Dataset
        A netCDF file or an open dataset, in any naming ``open_dataset`` accepts (held in memory), or a
        prepared store (``convlstm.data.store``): then its split, normalizer and missing-value flags are
        used and windows are read on demand.
    regions : RegionConfig
        The region bounds.
    include_upstream : bool
        Join the upstream region west of the downstream one.
    window_size, target_offset : int
        Input steps per window, and steps from the last input to the target.
    train_ratio, val_ratio : float
        Fractions of the time steps for training and validation; the rest is the test split.
    normalizer : ConvLSTMNormalizer, optional
        Statistics to reuse instead of fitting new ones.
    nan_policy : {"raise", "drop", "fill"}
        What to do with missing values inside the regions: refuse them, leave out the windows that read
        them (``ConvLSTMDataset``'s ``drop_missing``), or interpolate them in time (``open_dataset``).
    time_step : int, optional
        The model's step in hours: raw data is aggregated to it; a store must have been prepared at it.
    member : int, optional
        The ensemble member, for raw input holding several.

    Returns
    -------
    PreparedData
        Everything training, inference and comparison read.
    """
    if is_prepared_store(source):
        return _prepare_from_store(source, regions, include_upstream, window_size, target_offset, train_ratio,  # type: ignore[arg-type]
                                   val_ratio, normalizer, nan_policy, time_step)
    data = open_dataset(source, nan_policy=nan_policy, time_step=time_step, member=member)
    check_regions(data, regions, include_upstream)
    train, val, test = create_train_val_test_split(data, train_ratio=train_ratio, val_ratio=val_ratio)
    splits = {"train": train, "val": val, "test": test}
    if normalizer is None:
        normalizer = ConvLSTMNormalizer().fit(crop_regions(train, regions, include_upstream).data)
    fitted = normalizer
    datasets = _windows(data, splits, window_size, target_offset, nan_policy, lambda split: ConvLSTMDataset(
        split, window_size, regions, target_offset, include_upstream, fitted, drop_missing=nan_policy == "drop"))
    return PreparedData(data, splits, normalizer, datasets, train_ratio, val_ratio)


def _prepare_from_store(source: str | os.PathLike[str], regions: RegionConfig, include_upstream: bool, window_size: int,
                        target_offset: int, train_ratio: float, val_ratio: float,
                        normalizer: ConvLSTMNormalizer | None, nan_policy: NanPolicy, time_step: int | None) -> PreparedData:
    """``prepare_data`` for a prepared store: its split and statistics, windows read on demand."""
    info = read_store_info(source)
    check_store_step(info, time_step)
    data = info.open()
    if (train_ratio, val_ratio) != (info.train_ratio, info.val_ratio):
        logger.warning("%s was prepared with train/val ratios %g/%g; using those instead of %g/%g (rerun prepare to "
                       "change the split).", source, info.train_ratio, info.val_ratio, train_ratio, val_ratio)
    check_regions(data, regions, include_upstream)
    train, val, test = create_train_val_test_split(data, train_ratio=info.train_ratio, val_ratio=info.val_ratio)
    splits = {"train": train, "val": val, "test": test}
    same_regions = regions == info.regions  # else the stored statistics and flags are for another crop
    if normalizer is None:
        normalizer = (info.normalizer(include_upstream) if same_regions
                      else ConvLSTMNormalizer().fit(crop_regions(train, regions, include_upstream).data))  # out of core
    missing = info.missing_steps(include_upstream) if same_regions else None
    if nan_policy == "fill" and missing is not None and missing.any():
        raise DataError(f"{source} has missing values in the {'joined' if include_upstream else 'downstream'} crop, and "
                        "a prepared store cannot be filled when training: train with --nan-policy drop, or fill the "
                        "gaps in the raw input and prepare it again.")
    fitted = normalizer
    datasets = _windows(data, splits, window_size, target_offset, nan_policy, lambda split: StoreWindowDataset(
        split, window_size, regions, target_offset, include_upstream, fitted, nan_policy == "drop", missing))
    return PreparedData(data, splits, normalizer, datasets, info.train_ratio, info.val_ratio)


def _windows(data: xr.Dataset, splits: dict[str, xr.Dataset], window_size: int, target_offset: int,
             nan_policy: NanPolicy, make: Callable[[xr.Dataset], WindowDataset]) -> dict[str, WindowDataset | None]:
    """A windowed dataset per split; a split too short for one is refused, except ``test`` (then None)."""
    datasets: dict[str, WindowDataset | None] = {}
    for name, split in splits.items():
        try:
            datasets[name] = make(split)
        except DataError as exc:
            if name != "test":
                hint = " A smaller --window-size also helps." if split.sizes["time"] < window_size + target_offset else ""
                raise DataError(f"Cannot build windows from {describe_split(data, split, name)}: {exc}{hint}") from exc
            logger.warning("No test windows (%s); test scores will be skipped.", exc)
            datasets[name] = None
    if nan_policy == "drop":
        logger.info("Windows kept with --nan-policy drop (missing values inside the regions only): %s.",
                    "; ".join(f"{name} {dataset.describe_kept()}" for name, dataset in datasets.items() if dataset))
    return datasets

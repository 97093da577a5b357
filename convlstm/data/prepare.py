"""From a file path to ready windows: open, validate, split, fit the normalizer, normalize, window.

Training, inference on the test split and the comparison all go through this one function, so the
three see the same splits and the same normalization.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import xarray as xr

from convlstm.data.dataset import ConvLSTMDataset
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.config import RegionConfig
from convlstm.data.regions import check_regions, crop_regions
from convlstm.data.schema import NanPolicy, open_dataset
from convlstm.data.split import create_train_val_test_split, describe_split
from convlstm.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """The opened data, its splits, the normalizer fitted on train, and a windowed dataset per split.

    Parameters
    ----------
    data : xarray.Dataset
        The whole file in the library's layout, physical units.
    splits : dict of str to xarray.Dataset
        ``train``, ``val`` and ``test`` time ranges of ``data``, physical units.
    normalizer : ConvLSTMNormalizer
        Fitted on the training split (or the one given to resume with).
    datasets : dict of str to ConvLSTMDataset or None
        The normalized windows of each split; ``test`` is None when it holds no window.
    """

    data: xr.Dataset
    splits: dict[str, xr.Dataset]
    normalizer: ConvLSTMNormalizer
    datasets: dict[str, ConvLSTMDataset | None]

    @property
    def train(self) -> ConvLSTMDataset:
        """The training windows."""
        return self.datasets["train"]  # type: ignore[return-value]

    @property
    def val(self) -> ConvLSTMDataset:
        """The validation windows."""
        return self.datasets["val"]  # type: ignore[return-value]

    @property
    def test(self) -> ConvLSTMDataset | None:
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
) -> PreparedData:
    """Prepare every split; fit a new normalizer on the training split unless one is given (resume).

    Parameters
    ----------
    source : path-like or xarray.Dataset
        A netCDF file or an open dataset, in any naming ``open_dataset`` accepts.
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

    Returns
    -------
    PreparedData
        Everything training, inference and comparison read.
    """
    data = open_dataset(source, nan_policy=nan_policy)
    check_regions(data, regions, include_upstream)
    train, val, test = create_train_val_test_split(data, train_ratio=train_ratio, val_ratio=val_ratio)
    splits = {"train": train, "val": val, "test": test}
    if normalizer is None:
        normalizer = ConvLSTMNormalizer().fit(crop_regions(train, regions, include_upstream).data)
    datasets: dict[str, ConvLSTMDataset | None] = {}
    for name, split in splits.items():
        try:
            datasets[name] = ConvLSTMDataset(split, window_size, regions, target_offset, include_upstream, normalizer,
                                             drop_missing=nan_policy == "drop")
        except DataError as exc:
            if name != "test":
                hint = " A smaller --window-size also helps." if split.sizes["time"] < window_size + target_offset else ""
                raise DataError(f"Cannot build windows from {describe_split(data, split, name)}: {exc}{hint}") from exc
            logger.warning("No test windows (%s); test scores will be skipped.", exc)
            datasets[name] = None
    if nan_policy == "drop":
        logger.info("Windows kept with --nan-policy drop (missing values inside the regions only): %s.",
                    "; ".join(f"{name} {dataset.describe_kept()}" for name, dataset in datasets.items() if dataset))
    return PreparedData(data, splits, normalizer, datasets)

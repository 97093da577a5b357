"""Split a dataset by time into train / validation / test, with no overlap and nothing lost.

Forecasting must never train on the future of what it is scored on, so splits are contiguous time
ranges in order. The original documentation's ratio defaults (0.85 / 0.15) left no test data; the
defaults here are 0.70 / 0.15, leaving 15 % for testing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from convlstm.checks import check_split_ratios
from convlstm.config import SPLITS, ConvLSTMConfig
from convlstm.data.schema import describe_source
from convlstm.errors import ConfigError, DataError



def create_train_val_test_split(
    data: xr.Dataset,
    train_end_year: int | None = None,
    val_end_year: int | None = None,
    train_ratio: float = 0.7,
    val_ratio: float = 0.15,
    test_start_date: str | None = None,
) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset]:
    """Return (train, val, test) as contiguous, ordered, non-overlapping time ranges.

    Strategies, in order of precedence:
    - years: train up to ``train_end_year`` (inclusive), validation up to ``val_end_year``, test after;
    - test date: test from ``test_start_date`` on; the earlier data split into train and validation in
      the proportion ``train_ratio : val_ratio``;
    - ratios: the first ``train_ratio`` of the time steps train, the next ``val_ratio`` validate, the
      rest test.

    Parameters
    ----------
    data : xarray.Dataset
        Data with a strictly increasing ``time`` axis.
    train_end_year, val_end_year : int, optional
        Last year of training and of validation; give both or neither.
    train_ratio, val_ratio : float
        Fractions of the time steps (or, with ``test_start_date``, proportions of the data before it).
    test_start_date : str, optional
        First time of the test split, e.g. ``2020-01-01``.

    Returns
    -------
    tuple of xarray.Dataset
        Train, validation and test; train and validation are never empty, test may be.
    """
    name = describe_source(data)
    times = pd.DatetimeIndex(data["time"].values)
    if not times.is_monotonic_increasing or not times.is_unique:
        raise DataError(f"{name}: time must be strictly increasing to split it; sort and de-duplicate it first.")
    n = len(times)
    if train_end_year is not None or val_end_year is not None:
        if train_end_year is None or val_end_year is None or val_end_year <= train_end_year:
            raise ConfigError(
                f"Year split needs both train_end_year and val_end_year with val_end_year > train_end_year, "
                f"got {train_end_year} and {val_end_year}.", "train_end_year"
            )
        n_train = int(np.searchsorted(times.year, train_end_year, side="right"))
        n_val = int(np.searchsorted(times.year, val_end_year, side="right")) - n_train
    else:
        check_split_ratios(train_ratio, val_ratio, need_test=test_start_date is None)
        if test_start_date is not None:
            try:
                cutoff = pd.Timestamp(test_start_date)
            except ValueError as exc:
                raise ConfigError(f"test_start_date must be a date like 2020-01-01, got {test_start_date!r}.",
                                  "test_start_date") from exc
            n_before = int(np.searchsorted(times, cutoff, side="left"))
            n_train = int(round(n_before * train_ratio / (train_ratio + val_ratio)))
            n_val = n_before - n_train
        else:
            n_train = int(round(n * train_ratio))
            n_val = int(round(n * val_ratio))
    bounds = [0, n_train, n_train + n_val, n]
    splits = tuple(data.isel(time=slice(bounds[i], bounds[i + 1])) for i in range(3))
    for label, split in zip(("train", "validation"), splits):
        if split.sizes["time"] == 0:
            raise DataError(
                f"{name} ({n} time steps, {_span(times)}) leaves the {label} split empty with these settings; "
                "change the split years, date or ratios."
            )
    _check_partition(times, splits)
    return splits  # type: ignore[return-value]


def select_split(data: xr.Dataset, split: str, config: ConvLSTMConfig) -> xr.Dataset:
    """The whole data or one split of it, cut exactly as training cut it (the model's ratios).

    Parameters
    ----------
    data : xarray.Dataset
        Data in the library's layout.
    split : str
        ``all``, ``train``, ``val`` or ``test``.
    config : ConvLSTMConfig
        The model's config, whose ``train_ratio`` and ``val_ratio`` cut the splits.

    Returns
    -------
    xarray.Dataset
        The selected time steps.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.", "split")
    if split == "all":
        return data
    parts = create_train_val_test_split(data, train_ratio=config.train_ratio, val_ratio=config.val_ratio)
    return dict(zip(("train", "val", "test"), parts))[split]


def describe_split(data: xr.Dataset, split: xr.Dataset, name: str) -> str:
    """A split for messages, with its share of the file's time steps (a short file's split is shorter still).

    Parameters
    ----------
    data : xarray.Dataset
        The whole data.
    split : xarray.Dataset
        The time steps selected from it.
    name : str
        ``train``, ``val``, ``test`` or ``all``.

    Returns
    -------
    str
        E.g. ``the train split of era5.nc (4 of its 5 time steps)``, or the source for ``all``.
    """
    if name == "all":
        return describe_source(data)
    return f"the {name} split of {describe_source(data)} ({split.sizes['time']} of its {data.sizes['time']} time steps)"


def _span(times: pd.DatetimeIndex) -> str:
    return f"{times[0]:%Y-%m-%d %H:%M} to {times[-1]:%Y-%m-%d %H:%M}" if len(times) else "empty"


def _check_partition(times: pd.DatetimeIndex, splits: tuple[xr.Dataset, ...]) -> None:
    """Guard the invariants the split promises: in order, disjoint, and covering every time step."""
    parts = [pd.DatetimeIndex(s["time"].values) for s in splits]
    joined = parts[0].append(parts[1:])
    ordered = all(a[-1] < b[0] for a, b in zip(parts, parts[1:]) if len(a) and len(b))
    if not (ordered and joined.equals(times)):
        raise AssertionError("internal error: the time split is not an ordered partition of the data")

"""prepare_data on short and gappy files: what the messages count and what the log says was kept."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from convlstm.config import RegionConfig
from convlstm.data.prepare import prepare_data
from convlstm.data.schema import PRECIPITATION
from convlstm.errors import DataError
from tests.helpers import make_dataset


def test_short_file_message_counts_the_split_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "five.nc"
    make_dataset(n_time=5).to_netcdf(path)
    with pytest.raises(DataError) as info:
        prepare_data(path, RegionConfig(), False, window_size=6)
    assert str(info.value) == (
        f"Cannot build windows from the train split of {path} (4 of its 5 time steps): {path}: 4 time step(s) are too "
        "few for one window, which needs window_size + target_offset = 7. Use a longer file. A smaller --window-size "
        "also helps.")


def test_drop_logs_the_windows_each_split_keeps(caplog: pytest.LogCaptureFixture) -> None:
    data = make_dataset(n_time=40)
    data["TEM"][:, :, :, 0] = np.nan  # lon 70: outside the default downstream region, at every step
    data[PRECIPITATION][5, 2, 9] = np.nan  # lon 115: inside it, in the train split
    with caplog.at_level(logging.INFO, logger="convlstm.data.prepare"):
        prepared = prepare_data(data, RegionConfig(), False, window_size=3, nan_policy="drop")
    # splits of 28 / 6 / 6 steps hold 25 / 3 / 3 windows; step 5 is read by 4 of the training windows
    assert [len(prepared.datasets[name]) for name in ("train", "val", "test")] == [21, 3, 3]
    assert ("Windows kept with --nan-policy drop (missing values inside the regions only): "
            "train 21 of 25 windows (1 time step(s) with missing values left out); "
            "val 3 of 3 windows (0 time step(s) with missing values left out); "
            "test 3 of 3 windows (0 time step(s) with missing values left out).") in caplog.messages

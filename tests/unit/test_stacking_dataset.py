"""Channel stacking and the sliding-window dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from tests.helpers import make_dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from convlstm.data.dataset import ConvLSTMDataset, window_starts
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.regions import RegionConfig, crop_regions
from convlstm.data.schema import LEVEL_VARIABLES, PRECIPITATION, open_dataset
from convlstm.data.stacking import channel_names, n_channels, stack_channels
from convlstm.errors import ConfigError, DataError

SMALL_LAT = np.array([25.0, 30.0, 35.0, 40.0])
SMALL_LON = np.array([100.0, 105.0, 110.0, 115.0, 120.0, 125.0])
DOWN_LON = [110.0, 115.0, 120.0, 125.0]


def _labelled(n_time: int, n_levels: int) -> xr.Dataset:
    """Every (variable, level) holds its own constant 100 k + j (+ time / 1000); precipitation holds -1 - t."""
    levels = tuple(1000.0 - 50.0 * j for j in range(n_levels))
    data = make_dataset(n_time=n_time, levels=levels, lat=SMALL_LAT, lon=SMALL_LON)
    t = np.arange(n_time, dtype=np.float32)[:, None, None, None]
    for k, var in enumerate(LEVEL_VARIABLES):
        j = np.arange(n_levels, dtype=np.float32)[None, :, None, None]
        data[var].values[:] = 100.0 * k + j + t / 1000.0
    data[PRECIPITATION].values[:] = -1.0 - t[:, 0]
    return data


# ------------------------------------------------------------------------------------------ stacking


@settings(max_examples=20, deadline=None)
@given(n_levels=st.integers(1, 6), n_time=st.integers(1, 4))
def test_channel_order(n_levels, n_time):
    data = _labelled(n_time, n_levels)
    stacked = stack_channels(data)
    assert stacked.shape == (n_time, 5 * n_levels + 1, len(SMALL_LAT), len(SMALL_LON))
    assert n_channels(n_levels) == 5 * n_levels + 1
    for t in range(n_time):
        for k in range(5):
            for j in range(n_levels):
                np.testing.assert_allclose(stacked[t, k * n_levels + j], 100.0 * k + j + t / 1000.0, rtol=1e-7)
        assert np.all(stacked[t, -1] == -1.0 - t)
    names = channel_names(data["level"].values)
    assert len(names) == stacked.shape[1]
    assert names[0] == "DPT@1000hPa" and names[-1] == PRECIPITATION
    if n_levels > 1:
        assert names[n_levels] == "GPH@1000hPa" and names[1] == "DPT@950hPa"


def test_stack_shapes_and_layout():
    data = make_dataset(n_time=7)
    full = stack_channels(data)
    assert full.dtype == np.float32 and full.flags["C_CONTIGUOUS"]
    one = stack_channels(data, time_idx=4)
    assert one.shape == full.shape[1:] and one.flags["C_CONTIGUOUS"] and one.dtype == np.float32
    np.testing.assert_array_equal(one, full[4])
    np.testing.assert_array_equal(stack_channels(data, time_idx=-1), full[-1])
    part = stack_channels(data, time_slice=slice(2, 5))
    assert part.shape == (3, *full.shape[1:]) and part.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(part, full[2:5])
    # values are the dataset's: level order kept, precipitation last
    np.testing.assert_array_equal(full[:, 3 + 2], data["GPH"].isel(level=2).values)
    np.testing.assert_array_equal(full[:, -1], data[PRECIPITATION].values)


def test_stack_transposed_dataset_gives_same_array():
    data = make_dataset(n_time=3)
    np.testing.assert_array_equal(stack_channels(data.transpose("lon", "lat", "level", "time")), stack_channels(data))


def test_stack_refusals():
    data = make_dataset(n_time=4)
    with pytest.raises(ConfigError, match="either time_idx or time_slice"):
        stack_channels(data, time_idx=0, time_slice=slice(0, 2))
    data["V"][2, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="1 non-finite values after stacking"):
        stack_channels(data)


# ------------------------------------------------------------------------------------------ dataset


def _normalized(n_time: int = 20, **kwargs) -> xr.Dataset:
    data = make_dataset(n_time=n_time, lat=SMALL_LAT, lon=SMALL_LON, **kwargs)
    return ConvLSTMNormalizer().fit(data).normalize(data)


REGIONS = RegionConfig(upstream_lon_min=100.0, upstream_lon_max=110.0)


@settings(max_examples=25, deadline=None)
@given(n_time=st.integers(2, 30), window=st.integers(1, 8), offset=st.integers(1, 5))
def test_window_count_on_a_regular_axis(n_time, window, offset):
    times = np.datetime64("2000-01-01T00", "ns") + np.arange(n_time) * np.timedelta64(12, "h")  # make_dataset's axis
    expected = max(n_time - window - offset + 1, 0)
    starts = window_starts(times, window, offset)
    assert len(starts) == expected
    np.testing.assert_array_equal(starts, np.arange(expected))
    if expected:
        data = make_dataset(n_time=n_time, lat=np.array([30.0, 35.0]), lon=np.array([110.0, 115.0]), levels=(850.0,))
        tiny = RegionConfig(downstream_lat_min=30.0, downstream_lat_max=35.0, downstream_lon_min=110.0, downstream_lon_max=115.0,
                            upstream_lat_min=30.0, upstream_lat_max=35.0)
        dataset = ConvLSTMDataset(data, window, tiny, target_offset=offset)
        assert len(dataset) == expected
        np.testing.assert_array_equal(dataset.times, times)
        np.testing.assert_array_equal(dataset.target_times, times[window + offset - 1:])


@settings(max_examples=25, deadline=None)
@given(
    n_time=st.integers(12, 40),
    drops=st.lists(st.integers(1, 38), max_size=4, unique=True),
    window=st.integers(1, 4),
    offset=st.integers(1, 3),
)
def test_no_window_spans_a_gap(n_time, drops, window, offset):
    step = np.timedelta64(12, "h")
    full = np.datetime64("2000-01-01T00", "ns") + np.arange(n_time) * step
    keep = np.setdiff1d(np.arange(n_time), [d for d in drops if d < n_time - 1])
    times = full[keep]
    span = window + offset
    starts = window_starts(times, window, offset)
    # every window is regular ...
    for s in starts:
        np.testing.assert_array_equal(np.diff(times[s:s + span]), np.full(span - 1, step))
    # ... and every regular stretch is a window
    regular = [s for s in range(len(times) - span + 1) if np.all(np.diff(times[s:s + span]) == step)]
    np.testing.assert_array_equal(starts, regular)


def _windows_reading(dataset: ConvLSTMDataset, step: int) -> set[int]:
    """Starts (on the full axis) of the windows whose inputs or target are ``step``."""
    w, o = dataset.window_size, dataset.target_offset
    return {s for s in range(len(dataset.times) - w - o + 1) if s <= step < s + w or step == s + w + o - 1}


def test_drop_leaves_out_exactly_the_windows_that_read_a_missing_value():
    data = make_dataset(n_time=24, lat=SMALL_LAT, lon=SMALL_LON)
    data["TEM"][9, 0, 0, 2] = np.nan  # lon 110: inside the downstream region
    data[PRECIPITATION][14, 1, 1] = np.nan  # lon 105: only the upstream region reads it
    opened = open_dataset(data, nan_policy="drop")
    assert opened.sizes["time"] == 24  # nothing is dropped on opening: only the regions count
    baseline = ConvLSTMDataset(opened, 3, REGIONS, target_offset=2, drop_missing=True)
    upstream = ConvLSTMDataset(opened, 3, REGIONS, target_offset=2, include_upstream=True, drop_missing=True)
    every = set(range(24 - 5 + 1))
    assert set(baseline.starts.tolist()) == every - _windows_reading(baseline, 9)
    assert set(upstream.starts.tolist()) == every - _windows_reading(upstream, 9) - _windows_reading(upstream, 14)
    # step 9 is read by windows 7, 8, 9 (inputs) and 5 (target); window 6 (inputs 6..8, target 10) skips it
    assert 6 in baseline.starts and not {5, 7, 8, 9} & set(baseline.starts.tolist())
    assert len(baseline) == 20 - 4 and baseline.n_windows_possible == 20 and baseline.n_missing_steps == 1
    assert (len(upstream), upstream.n_missing_steps) == (20 - 8, 2)
    assert baseline.describe_kept() == "16 of 20 windows (1 time step(s) with missing values left out)"
    for dataset in (baseline, upstream):
        assert np.isfinite(dataset.inputs).all()  # no batch of frames carries a NaN into the model
        for index in range(len(dataset)):
            x, y = dataset[index]
            assert torch.isfinite(x).all() and torch.isfinite(y).all()


def test_missing_values_outside_the_regions_are_ignored():
    data = make_dataset(n_time=12, lat=SMALL_LAT, lon=SMALL_LON)
    data["U"][:, :, :, 0] = np.nan  # lon 100: west of both regions when the upstream one starts at 105
    data[PRECIPITATION][3, 0, 1] = np.nan  # lon 105
    regions = RegionConfig(upstream_lon_min=105.0, upstream_lon_max=110.0)
    assert len(ConvLSTMDataset(data, 3, REGIONS)) == len(ConvLSTMDataset(data, 3, regions)) == 12 - 3
    with pytest.raises(DataError, match="missing values"):
        ConvLSTMDataset(data, 3, regions, include_upstream=True)


def test_missing_values_in_the_regions_are_refused_with_count_first_time_and_flags(tmp_path):
    path = tmp_path / "gappy.nc"
    data = make_dataset(n_time=10, lat=SMALL_LAT, lon=SMALL_LON)
    data["TEM"][3, 0, 0, 2] = np.nan
    data["TEM"][3, 1, 2, 3] = np.nan
    data[PRECIPITATION][6, 1, 4] = np.nan
    data["V"][5, 0, 0, 0] = np.nan  # outside the downstream region: not counted
    data.to_netcdf(path)
    with pytest.raises(DataError) as info:
        ConvLSTMDataset(open_dataset(path), 3, REGIONS)
    message = str(info.value)
    assert message.startswith(f"{path} has missing values (NaN) in the downstream region the model reads")
    assert "TEM: 2, precipitation: 1 — in 2 time step(s), the first at 2000-01-02T12:00" in message
    assert "V:" not in message and "--nan-policy drop" in message and "--nan-policy fill" in message


def test_drop_that_leaves_no_window_says_to_fill():
    data = make_dataset(n_time=6, lat=SMALL_LAT, lon=SMALL_LON)
    data[PRECIPITATION][2, 0, 3] = np.nan
    with pytest.raises(DataError, match="each of its 3 windows reads one of the 1 time steps with missing values.*--nan-policy fill"):
        ConvLSTMDataset(data, 3, REGIONS, drop_missing=True)


def test_target_is_downstream_precipitation_after_offset():
    data = _normalized(n_time=15)
    window, offset = 4, 2
    dataset = ConvLSTMDataset(data, window, REGIONS, target_offset=offset, include_upstream=True)
    down = data[PRECIPITATION].sel(lon=DOWN_LON).values
    assert len(dataset) == 15 - window - offset + 1
    for index in (0, 3, len(dataset) - 1):
        x, y = dataset[index]
        start = int(dataset.starts[index])
        assert x.shape == (window, 16, len(SMALL_LAT), len(SMALL_LON))
        assert y.shape == (len(SMALL_LAT), len(DOWN_LON))
        np.testing.assert_array_equal(y.numpy(), down[start + window + offset - 1])
        assert dataset.target_times[index] == data["time"].values[start + window + offset - 1]
        # last input channel is the (normalized) precipitation of the input steps, upstream ⊕ downstream
        np.testing.assert_array_equal(x[:, -1].numpy(), data[PRECIPITATION].values[start:start + window])
        np.testing.assert_array_equal(x[:, 0].numpy(), data["DPT"].values[start:start + window, 0])


def test_upstream_concatenation_width():
    data = _normalized(n_time=10)
    down_only = ConvLSTMDataset(data, 3, REGIONS)
    both = ConvLSTMDataset(data, 3, REGIONS, include_upstream=True)
    assert down_only.input_shape == (3, 16, 4, 4)
    assert both.input_shape == (3, 16, 4, 6)  # upstream 100, 105 west of the 4 downstream columns
    assert both.downstream_columns == slice(2, 6) and down_only.downstream_columns == slice(0, 4)
    np.testing.assert_array_equal(both.downstream_lon, DOWN_LON)
    np.testing.assert_array_equal(down_only.downstream_lon, DOWN_LON)
    np.testing.assert_array_equal(both.lon, SMALL_LON)
    # the targets do not depend on whether upstream is added
    np.testing.assert_array_equal(both[2][1].numpy(), down_only[2][1].numpy())
    np.testing.assert_array_equal(both[2][0].numpy()[..., 2:], down_only[2][0].numpy())


def test_items_are_views_not_copies():
    data = _normalized(n_time=12)
    dataset = ConvLSTMDataset(data, 3, REGIONS, include_upstream=True)
    buffer_start = dataset.inputs.ctypes.data
    buffer_end = buffer_start + dataset.inputs.nbytes
    for index in range(len(dataset)):
        x, y = dataset[index]
        assert np.shares_memory(x.numpy(), dataset.inputs)
        assert np.shares_memory(y.numpy(), dataset.inputs)
        assert buffer_start <= x.data_ptr() < buffer_end and buffer_start <= y.data_ptr() < buffer_end
        assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert dataset.inputs.flags["C_CONTIGUOUS"] and dataset.inputs.dtype == np.float32


def test_dataloader_batches():
    data = _normalized(n_time=14)
    dataset = ConvLSTMDataset(data, 4, REGIONS, include_upstream=True)
    loader = DataLoader(dataset, batch_size=3, shuffle=False)
    batches = list(loader)
    assert sum(x.shape[0] for x, _ in batches) == len(dataset) == 10
    x, y = batches[0]
    assert x.shape == (3, 4, 16, 4, 6) and y.shape == (3, 4, 4)
    torch.testing.assert_close(y[1], dataset[1][1])
    torch.testing.assert_close(x[2], dataset[2][0])
    assert batches[-1][0].shape[0] == 1


@pytest.mark.parametrize("gappy", [False, True])
def test_window_batches_hold_every_window_in_order_as_views(gappy):
    data = make_dataset(n_time=24, lat=SMALL_LAT, lon=SMALL_LON)
    if gappy:
        data["TEM"][9, 0, 0, 0] = np.nan  # the windows reading step 9 are left out: the others jump over it
    dataset = ConvLSTMDataset(data, window_size=3, region_config=REGIONS, target_offset=2, include_upstream=True,
                              drop_missing=True)
    assert len(dataset) == (20 - 4 if gappy else 20)
    index = 0
    for batch, targets in dataset.window_batches(batch_size=4):
        assert np.shares_memory(batch.frames.numpy(), dataset.inputs)
        assert batch.window_size == 3 and len(batch.starts) == len(targets) <= 4
        for start, target in zip(batch.starts.tolist(), targets):
            x, y = dataset[index]
            torch.testing.assert_close(batch.frames[start:start + 3], x, rtol=0, atol=0)
            torch.testing.assert_close(target, y, rtol=0, atol=0)
            index += 1
    assert index == len(dataset)


def test_too_few_time_steps(tmp_path):
    path = tmp_path / "short.nc"
    make_dataset(n_time=5, lat=SMALL_LAT, lon=SMALL_LON).to_netcdf(path)
    data = open_dataset(path)
    with pytest.raises(DataError, match=r"short\.nc: 5 time step\(s\) are too few for one window, which needs "
                                        r"window_size \+ target_offset = 6\. Use a longer file\.$"):
        ConvLSTMDataset(data, 4, REGIONS, target_offset=2)
    assert len(ConvLSTMDataset(data, 4, REGIONS, target_offset=1)) == 1


def test_no_gap_free_stretch():
    data = make_dataset(n_time=10, lat=SMALL_LAT, lon=SMALL_LON).isel(time=[0, 1, 3, 4, 6, 7, 9])
    with pytest.raises(DataError, match="no gap-free stretch of 3 time steps"):
        ConvLSTMDataset(data, 2, REGIONS, target_offset=1)


@pytest.mark.parametrize("window,offset,match", [(0, 1, "window_size"), (2.5, 1, "window_size"), (2, 0, "target_offset"), (2, -1, "target_offset")])
def test_bad_window_settings(window, offset, match):
    with pytest.raises(ConfigError, match=f"{match} must be an integer >= 1"):
        ConvLSTMDataset(make_dataset(n_time=10), window, RegionConfig(), target_offset=offset)


def test_dataset_region_outside_data():
    data = make_dataset(n_time=10, lat=SMALL_LAT, lon=SMALL_LON)
    with pytest.raises(DataError, match="upstream region .* lies outside the dataset"):
        ConvLSTMDataset(data, 2, RegionConfig(), include_upstream=True)  # default upstream starts at 70 °E
    # the same crop the dataset uses
    crop = crop_regions(data, REGIONS, include_upstream=True)
    np.testing.assert_array_equal(ConvLSTMDataset(data, 2, REGIONS, include_upstream=True).inputs, stack_channels(crop.data))

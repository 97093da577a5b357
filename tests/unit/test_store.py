"""Prepared stores: written once in bounded memory, complete or absent, and read on demand into exactly the
windows, statistics and training the in-memory path gives."""

from __future__ import annotations

import errno
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, DistributedSampler, get_worker_info

from convlstm.config import RegionConfig
from convlstm.data import store as store_module
from convlstm.data.demo import write_demo_dataset
from convlstm.data.epoch_order import POOL_RUNS, RUN_WINDOWS, EpochOrder, cache_blocks
from convlstm.data.prepare import prepare_data
from convlstm.data.schema import PRECIPITATION, open_dataset
from convlstm.data.split import create_train_val_test_split
from convlstm.data.store import (STORE_VERSION, is_prepared_store, open_store, partial_path, read_store_info,
                                 write_store)
from convlstm.data.store_windows import StoreWindowDataset
from convlstm.errors import DataError, StorageError
from tests.helpers import make_dataset, make_trainer

REPO = Path(__file__).resolve().parents[2]
REGIONS = RegionConfig()
WINDOW = 6


@pytest.fixture(scope="module")
def tiny_nc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5° demo data: downstream 4 columns, upstream 8, 73 twelve-hourly steps."""
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "tiny.nc", years=0.1, resolution=5.0)


def _write(source: Path, output: Path, **kwargs: object) -> Path:
    """A store from a lazily opened file (chunks smaller than the file, so it is streamed)."""
    settings = {"train_ratio": 0.7, "val_ratio": 0.15, "provenance": {"inputs": [source.name]}, **kwargs}
    return write_store(open_dataset(source, chunks={"time": 10}), output, REGIONS, **settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_store(tiny_nc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tiny_nc, tmp_path_factory.mktemp("store") / "tiny.zarr", time_chunk=8)


def test_store_holds_the_union_crop_chunked_along_time(tiny_nc: Path, tiny_store: Path) -> None:
    data = open_store(tiny_store)
    assert open_dataset(data) is data  # in the library layout already
    assert dict(data.sizes) == {"time": 73, "level": 11, "lat": 4, "lon": 12}  # 70..125 °E: both regions
    np.testing.assert_array_equal(data["lon"].values, np.arange(70.0, 126.0, 5.0))
    for var in data.data_vars.values():
        assert var.dtype == np.float32 and var.attrs["units"]  # CF attributes kept
        assert var.encoding["chunks"] == (8, *var.shape[1:])  # whole grid per chunk, 8 steps
    assert data[PRECIPITATION].chunks[0] == (8,) * 9 + (1,)  # lazy, as stored
    info = read_store_info(tiny_store)
    raw = open_dataset(tiny_nc)
    for name, split in zip(("train", "val", "test"), create_train_val_test_split(raw, train_ratio=0.7, val_ratio=0.15)):
        times = split["time"].values
        assert info.splits[name] == [np.datetime_as_string(t, unit="s") for t in (times[0], times[-1])]
    assert (info.train_ratio, info.val_ratio, info.regions) == (0.7, 0.15, REGIONS)
    assert info.provenance == {"inputs": ["tiny.nc"]} and not info.missing_steps(True).any()


@pytest.mark.parametrize("include_upstream", [False, True])
def test_store_gives_the_windows_and_statistics_of_the_in_memory_path(tiny_nc: Path, tiny_store: Path,
                                                                       include_upstream: bool) -> None:
    memory = prepare_data(tiny_nc, REGIONS, include_upstream, WINDOW)
    stored = prepare_data(tiny_store, REGIONS, include_upstream, WINDOW)
    assert isinstance(stored.train, StoreWindowDataset) and stored.data[PRECIPITATION].chunks is not None
    for key in memory.normalizer.means:
        np.testing.assert_allclose(stored.normalizer.means[key], memory.normalizer.means[key], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stored.normalizer.stds[key], memory.normalizer.stds[key], rtol=1e-12)
    for name in ("train", "val", "test"):
        mem, sto = memory.datasets[name], stored.datasets[name]
        np.testing.assert_array_equal(sto.starts, mem.starts)
        np.testing.assert_array_equal(sto.target_times, mem.target_times)
        assert (sto.input_shape, sto.downstream_columns) == (mem.input_shape, mem.downstream_columns)
        np.testing.assert_array_equal(sto.lon, mem.lon)
        for index in range(len(mem)):
            for a, b in zip(sto[index], mem[index]):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        for (batch_s, target_s), (batch_m, target_m) in zip(sto.window_batches(7), mem.window_batches(7), strict=True):
            torch.testing.assert_close(batch_s.frames, batch_m.frames, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(target_s, target_m, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(sto.observed_precipitation(), mem.observed_precipitation(), rtol=1e-6, atol=1e-6)


def test_one_epoch_from_the_store_trains_the_same_weights(tiny_nc: Path, tiny_store: Path, tmp_path: Path) -> None:
    weights = []
    for source, workers in ((tiny_nc, 0), (tiny_store, 0), (tiny_store, 1)):  # the store read in the loop, or by a worker
        prepared = prepare_data(source, REGIONS, True, WINDOW)
        trainer = make_trainer(prepared, tmp_path / f"{source.name}-{workers}", num_epochs=1)
        trainer.num_workers = workers
        trainer.fit(prepared.train, prepared.val)
        weights.append(trainer.model.state_dict())
    for other in weights[1:]:
        for key, value in weights[0].items():
            torch.testing.assert_close(other[key], value, rtol=1e-5, atol=1e-6)


def _block_reads(data: StoreWindowDataset, order: list[int], block_steps: int) -> int:
    """Blocks read from the store while serving ``order``, with a fresh cache of ``block_steps``-step blocks."""
    data._reader()
    data._block_steps, data._cache = block_steps, OrderedDict()
    data._max_blocks = cache_blocks(data.window_size + data.target_offset, block_steps)
    reads = 0
    for index in order:
        start = data._offset + int(data.starts[index])
        needed = range(start // block_steps, (start + data.window_size + data.target_offset - 1) // block_steps + 1)
        reads += sum(k not in data._cache for k in needed)
        data[index]
    return reads


def test_an_epoch_in_its_order_reads_each_block_about_once(tmp_path: Path) -> None:
    year = write_demo_dataset(tmp_path / "year.nc", years=1, resolution=5.0)
    data = prepare_data(_write(year, tmp_path / "year.zarr"), REGIONS, True, WINDOW).train
    generator = torch.Generator().manual_seed(0)
    ours = _block_reads(data, list(EpochOrder(len(data), generator)), block_steps=8)
    window_by_window = _block_reads(data, torch.randperm(len(data), generator=generator).tolist(), block_steps=8)
    assert len(data) > 2 * data._max_blocks * 8  # the training frames are many times the cache
    run_blocks = cache_blocks(data.window_size + data.target_offset, 8) // POOL_RUNS  # blocks one run spans, at most
    assert ours <= -(-len(data) // RUN_WINDOWS) * run_blocks  # each pool reads each of its blocks once
    assert ours < window_by_window / 2


def test_missing_values_drop_and_raise_as_in_memory(tmp_path: Path) -> None:
    data = make_dataset(n_time=30)
    data["TEM"][9, 0, 0, 9] = np.nan  # lon 115: downstream
    data[PRECIPITATION][14, 1, 3] = np.nan  # lon 85: upstream only
    path = tmp_path / "gappy.zarr"
    write_store(data, path, REGIONS, train_ratio=0.7, val_ratio=0.15, provenance={})
    info = read_store_info(path)
    assert np.flatnonzero(info.missing_steps(False)).tolist() == [9]
    assert np.flatnonzero(info.missing_steps(True)).tolist() == [9, 14]
    for upstream in (False, True):
        memory = prepare_data(data, REGIONS, upstream, 3, nan_policy="drop")
        stored = prepare_data(path, REGIONS, upstream, 3, nan_policy="drop")
        np.testing.assert_array_equal(stored.train.starts, memory.train.starts)
        assert stored.train.describe_kept() == memory.train.describe_kept()
        x, _ = next(stored.train.window_batches(100))
        assert torch.isfinite(x.frames).all()
        with pytest.raises(DataError) as from_memory:
            prepare_data(data, REGIONS, upstream, 3)
        with pytest.raises(DataError) as from_store:
            prepare_data(path, REGIONS, upstream, 3)
        assert str(from_store.value).replace(str(path), "X") == str(from_memory.value).replace("the dataset", "X")
    with pytest.raises(DataError, match="cannot be filled when training"):
        prepare_data(path, REGIONS, False, 3, nan_policy="fill")


def test_store_ratios_win_over_the_callers_with_a_warning(tiny_store: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        prepared = prepare_data(tiny_store, REGIONS, False, WINDOW, train_ratio=0.6, val_ratio=0.2)
    assert (prepared.train_ratio, prepared.val_ratio) == (0.7, 0.15)
    assert "prepared with train/val ratios 0.7/0.15; using those instead of 0.6/0.2" in caplog.text
    assert prepared.splits["train"].sizes["time"] == round(73 * 0.7)


def test_other_regions_inside_the_store_are_fitted_out_of_core(tiny_nc: Path, tiny_store: Path) -> None:
    regions = RegionConfig(downstream_lon_min=115.0, upstream_lon_min=80.0, upstream_lon_max=115.0)
    memory, stored = prepare_data(tiny_nc, regions, True, WINDOW), prepare_data(tiny_store, regions, True, WINDOW)
    np.testing.assert_allclose(stored.normalizer.channel_statistics()[1], memory.normalizer.channel_statistics()[1], rtol=1e-12)
    torch.testing.assert_close(stored.train[5][0], memory.train[5][0], rtol=1e-6, atol=1e-6)


def test_existing_output_is_refused_and_a_stale_partial_is_replaced(tiny_nc: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    output = tmp_path / "s.zarr"
    output.mkdir()
    with pytest.raises(StorageError, match=f"{output} already exists; choose another --output or delete it"):
        _write(tiny_nc, output)
    output.rmdir()
    partial = partial_path(output)
    partial.mkdir()
    (partial / "junk").write_text("from an interrupted run")
    with caplog.at_level(logging.WARNING):
        _write(tiny_nc, output)
    assert "left by an interrupted prepare" in caplog.text
    assert not partial.exists() and not (output / "junk").exists() and read_store_info(output)


def test_full_disk_is_a_storage_error_and_leaves_nothing(tiny_nc: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    writes = []

    async def full(self: object, key: str, value: object, *args: object, **kwargs: object) -> None:
        writes.append(key)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    output = tmp_path / "s.zarr"
    with pytest.raises(StorageError, match=f"Cannot write {output}: No space left on device"):
        _write(tiny_nc, output)
    assert writes and not output.exists() and not partial_path(output).exists()


def test_failure_mid_write_leaves_no_store_and_the_next_write_succeeds(tiny_nc: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected after the data was written")

    output = tmp_path / "s.zarr"
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "_summaries", fail)
        with pytest.raises(RuntimeError, match="injected"):
            _write(tiny_nc, output)
    assert not output.exists() and not partial_path(output).exists()
    assert read_store_info(_write(tiny_nc, output)).train_ratio == 0.7


def test_killed_mid_write_leaves_no_store_and_the_next_write_succeeds(tiny_nc: Path, tmp_path: Path) -> None:
    output = tmp_path / "s.zarr"
    script = textwrap.dedent(f"""
        import os, signal
        from convlstm.config import RegionConfig
        from convlstm.data import store
        from convlstm.data.schema import open_dataset
        def killed(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)  # the data is written, the metadata not yet
        store._summaries = killed
        store.write_store(open_dataset({str(tiny_nc)!r}, chunks={{"time": 10}}), {str(output)!r}, RegionConfig(),
                          train_ratio=0.7, val_ratio=0.15, provenance={{}})
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == -9
    partial = partial_path(output)
    assert not output.exists() and (partial / "precipitation").is_dir()
    assert is_prepared_store(partial)
    with pytest.raises(DataError, match=r"incomplete prepared store .*; rerun prepare\.$"):
        open_store(partial)
    with pytest.raises(DataError, match="incomplete"):
        prepare_data(partial, REGIONS, False, WINDOW)
    assert read_store_info(_write(tiny_nc, output)) and not partial.exists()


def test_other_versions_and_other_paths_are_refused(tiny_nc: Path, tiny_store: Path, tmp_path: Path) -> None:
    assert is_prepared_store(tiny_store) and not is_prepared_store(tiny_nc) and not is_prepared_store(tmp_path)
    old = tmp_path / "old.zarr"
    _write(tiny_nc, old)
    zarr.open_group(old, mode="r+").attrs["convlstm_store_version"] = STORE_VERSION - 1
    with pytest.raises(DataError, match=f"^{old} was prepared by an older version of convlstm .*; rerun prepare.$"):
        open_store(old)
    with pytest.raises(DataError, match="not a prepared store"):
        read_store_info(tmp_path / "nothing.zarr")


def test_dataset_pickles_without_a_handle_and_each_worker_opens_its_own(tiny_store: Path) -> None:
    dataset = prepare_data(tiny_store, REGIONS, False, WINDOW).train
    expected = dataset[3]
    assert dataset._opened is not None  # opened by this process
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._opened is None
    torch.testing.assert_close(copy[3], expected)

    def collate(batch: list) -> tuple[int, int | None]:
        worker_dataset = get_worker_info().dataset  # type: ignore[union-attr]
        return os.getpid(), worker_dataset._opened_pid

    seen = list(DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate))
    assert {pid for pid, _ in seen} == {opened for _, opened in seen} and os.getpid() not in {pid for pid, _ in seen}


def test_distributed_ranks_read_disjoint_parts(tiny_store: Path) -> None:
    dataset = prepare_data(tiny_store, REGIONS, True, WINDOW).train
    parts = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=1, drop_last=True)
        indices = list(sampler)
        loader = DataLoader(dataset, batch_size=5, sampler=sampler, num_workers=2)
        inputs = torch.cat([x for x, _ in loader])
        torch.testing.assert_close(inputs, torch.stack([dataset[i][0] for i in indices]))
        parts.append(set(indices))
    assert not parts[0] & parts[1] and len(parts[0] | parts[1]) == 2 * (len(dataset) // 2)

"""Several training processes without starting any: each process's share of the epoch (in memory, from a store,
with DataLoader workers), each one's part of the validation windows, sums that add up to one process's scores,
the checks made before a launch, and the one line that names the failed processes."""

from __future__ import annotations

import math
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, get_worker_info

from convlstm.data.demo import write_demo_dataset
from convlstm.data.epoch_order import POOL_RUNS, RUN_WINDOWS, EpochBatches, EpochOrder, run_shuffled
from convlstm.errors import ConfigError
from convlstm.evaluation.scores import ContinuousScores, rmse_mae_from_totals
from convlstm.training.distributed import (
    LOST_PROCESS,
    DistributedContext,
    LostProcess,
    check_port_free,
    check_processes,
    describe_failures,
    torchrun_args,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def shards(n: int, batch_size: int, world: int, seed: int = 0) -> list[list[list[int]]]:
    """Each process's batches of one epoch, all drawn from generators seeded alike (as the processes draw them)."""
    return [list(EpochBatches(n, batch_size, torch.Generator().manual_seed(seed), rank, world))
            for rank in range(world)]


# ---------------------------------------------------------------------------------------------- the epoch's shares


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), batch_size=st.integers(1, 12), world=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_the_processes_shares_partition_each_batch_of_one_process(n: int, batch_size: int, world: int,
                                                                   seed: int) -> None:
    """Batch k of one process is exactly the windows the processes count in their batch k: the same steps."""
    if batch_size < world:
        batch_size = world  # refused before a launch (check_processes)
    alone = list(EpochBatches(n, batch_size, torch.Generator().manual_seed(seed)))
    assert alone == [batch.tolist() for batch in torch.tensor(run_shuffled(n, torch.Generator().manual_seed(seed)))
                     .split(batch_size)]  # one process: the DataLoader's batches of the order, as before
    per_rank = shards(n, batch_size, world, seed)
    samplers = [EpochBatches(n, batch_size, None, rank, world) for rank in range(world)]
    assert {len(batches) for batches in per_rank} == {len(alone)} == {len(sampler) for sampler in samplers}
    for k, batch in enumerate(alone):
        counted = [per_rank[rank][k][:samplers[rank].shares(k)[0]] for rank in range(world)]
        assert sorted(i for part in counted for i in part) == sorted(batch)
        assert {samplers[rank].shares(k)[1] for rank in range(world)} == {len(batch)}
        assert all(len(per_rank[rank][k]) >= 1 for rank in range(world))  # everybody takes part in every step
        assert max(map(len, counted)) - min(map(len, counted)) <= 1  # as even as can be


def test_a_process_without_a_window_in_the_last_batch_loads_a_stand_in_that_counts_for_nothing() -> None:
    sampler = EpochBatches(9, 4, None, rank=1, world_size=2)  # batches of 4, 4, 1: the last has one window
    assert list(sampler) == [[1, 3], [5, 7], [8]] and sampler.shares(2) == (0, 1)
    assert EpochBatches(9, 4, None, rank=0, world_size=2).shares(2) == (1, 1)


def test_each_process_reads_in_the_epochs_order_pool_by_pool() -> None:
    """A process's windows come in the order's sequence, so a store is still read a pool at a time."""
    n, world = RUN_WINDOWS * POOL_RUNS * 5 + 3, 2
    order = list(EpochOrder(n, torch.Generator().manual_seed(4)))
    pool = RUN_WINDOWS * POOL_RUNS
    for rank, batches in enumerate(shards(n, 8, world, seed=4)):
        mine = [i for batch in batches for i in batch]
        positions = [order.index(i) for i in mine]
        assert positions == sorted(positions)  # a subsequence of the order
        runs_per_pool = [{order[p] // RUN_WINDOWS for p in positions if p // pool == k} for k in range(-(-n // pool))]
        assert all(len(runs) <= POOL_RUNS for runs in runs_per_pool)  # a pool needs no more runs than alone


class _Indices(Dataset):
    """Window ``i`` is ``(i, worker id)``: which process and which worker read it."""

    def __len__(self) -> int:
        return 70

    def __getitem__(self, index: int) -> tuple[int, int]:
        info = get_worker_info()
        return index, info.id if info is not None else -1


def test_with_dataloader_workers_every_window_is_read_once_by_one_worker_of_one_process() -> None:
    reads: dict[int, tuple[int, int]] = {}
    batches_per_rank = []
    for rank in range(2):
        sampler = EpochBatches(70, 6, torch.Generator().manual_seed(0), rank, 2)
        loader = DataLoader(_Indices(), batch_sampler=sampler, num_workers=2)
        batches = list(loader)
        batches_per_rank.append(len(batches))
        for k, (indices, workers) in enumerate(batches):
            assert len(set(workers.tolist())) == 1  # a batch is read by one worker
            for index in indices.tolist()[:sampler.shares(k)[0]]:
                assert index not in reads, f"window {index} read twice"
                reads[index] = (rank, int(workers[0]))
    assert sorted(reads) == list(range(70))
    assert batches_per_rank[0] == batches_per_rank[1] == 12
    assert {where for where in reads.values()} == {(0, 0), (0, 1), (1, 0), (1, 1)}  # all four readers share the work


def test_a_stores_shares_are_its_windows_each_once(tmp_path: Path) -> None:
    """From a prepared store, as from memory: the processes' windows are the epoch's, and equal."""
    from convlstm.config import RegionConfig
    from convlstm.data.prepare import prepare_data
    from convlstm.data.prepare_store import prepare_store

    source = write_demo_dataset(tmp_path / "tiny.nc", years=0.1, resolution=5.0)
    store = prepare_store(source, tmp_path / "tiny.zarr", RegionConfig())
    windows = prepare_data(store.path, RegionConfig(), False, window_size=6).train
    reads: list[np.ndarray] = []
    for rank in range(2):
        sampler = EpochBatches(len(windows), 4, torch.Generator().manual_seed(1), rank, 2)
        for k, (inputs, _) in enumerate(DataLoader(windows, batch_sampler=sampler)):
            reads += list(inputs[:sampler.shares(k)[0]].numpy())
    everything = [windows[i][0].numpy() for i in range(len(windows))]
    assert len(reads) == len(everything)
    assert sorted(x.sum() for x in reads) == pytest.approx(sorted(x.sum() for x in everything))


# ---------------------------------------------------------------------------------------------- validation and sums


def test_the_validation_parts_are_consecutive_and_together_every_window(tmp_path: Path) -> None:
    from convlstm.config import RegionConfig
    from convlstm.data.prepare import prepare_data

    data = prepare_data(write_demo_dataset(tmp_path / "tiny.nc", years=0.1, resolution=5.0), RegionConfig(), False,
                        window_size=6)
    windows = data.train
    whole = torch.cat([targets for _, targets in windows.window_batches(7)])
    for parts in (1, 2, 3, len(windows) + 2):  # more parts than windows: some are empty
        pieces = [torch.cat([targets for _, targets in windows.window_batches(7, (k, parts))] or [whole[:0]])
                  for k in range(parts)]
        assert torch.equal(torch.cat(pieces), whole)


def test_scores_summed_over_parts_are_the_scores_of_the_whole() -> None:
    rng = np.random.default_rng(0)
    forecast, observed = rng.gamma(1.0, 3.0, (10, 4, 5)), rng.gamma(1.0, 3.0, (10, 4, 5))
    whole = ContinuousScores().accumulate(forecast, observed).compute()
    parts = [ContinuousScores().accumulate(forecast[s], observed[s]) for s in (slice(0, 3), slice(3, 10))]
    summed = rmse_mae_from_totals(sum(part.error_totals() for part in parts))
    assert summed["rmse_mm"] == pytest.approx(whole["rmse_mm"], rel=1e-12)
    assert summed["mae_mm"] == pytest.approx(whole["mae_mm"], rel=1e-12)
    alone = rmse_mae_from_totals(ContinuousScores().accumulate(forecast, observed).error_totals())
    assert (alone["rmse_mm"], alone["mae_mm"]) == (whole["rmse_mm"], whole["mae_mm"])  # bit for bit
    assert all(math.isnan(v) for v in rmse_mae_from_totals([0.0, 0.0, 0.0]).values())


def test_one_process_is_a_context_of_one_that_changes_nothing() -> None:
    context = DistributedContext.current()
    assert (context.rank, context.world_size, context.is_main, context.is_distributed) == (0, 1, True, False)
    model = torch.nn.Linear(2, 1)
    assert context.wrap(model) is model
    assert context.sum([1.5, 2]) == [1.5, 2.0] and context.share({"a": 1}) == {"a": 1}
    assert context.device(CPU) == CPU and context.part == (0, 1)
    assert DistributedContext(1, 2, 1, "nccl").device(CUDA) == torch.device("cuda", 1)


# ---------------------------------------------------------------------------------------------- before a launch


@pytest.mark.parametrize(("nproc", "device", "batch", "gpus", "flag"), [
    (0, CPU, 8, None, "--nproc-per-node"),
    (3, CUDA, 8, 2, "--nproc-per-node"),  # more processes than GPUs
    (2, torch.device("mps"), 8, None, "--nproc-per-node"),
    (4, CPU, 3, None, "--batch-size"),
])
def test_a_launch_that_cannot_work_is_refused_naming_the_flag(nproc: int, device: torch.device, batch: int,
                                                             gpus: int | None, flag: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check_processes(nproc, device, batch, gpu_count=gpus)
    assert flag in str(refused.value) and "\n" not in str(refused.value)
    assert refused.value.setting == flag.lstrip("-").replace("-", "_")


def test_as_many_processes_as_gpus_and_cpu_processes_are_accepted() -> None:
    check_processes(2, CUDA, 2, gpu_count=2)
    check_processes(4, CPU, 4)


def test_a_port_in_use_is_refused_and_a_free_one_accepted() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(ConfigError) as refused:
            check_port_free(port)
        assert f"--master-port {port} is in use" in str(refused.value)
    check_port_free(port)  # closed again
    assert torchrun_args(2, None)[:1] == ["--standalone"]
    assert f"localhost:{port}" in torchrun_args(2, port)


def test_the_failed_processes_are_named_root_cause_first() -> None:
    def failure(exitcode: int, message: str | None, timestamp: int) -> SimpleNamespace:
        return SimpleNamespace(exitcode=exitcode, pid=100 + exitcode % 7, timestamp=timestamp,
                               error_file_data={"message": message} if message else {},
                               signal_name=lambda: "SIGKILL")

    text = describe_failures({0: failure(1, f"{LOST_PROCESS}: one of the 2 ...", 5), 1: failure(-9, "<NONE>", 6)})
    assert text == "Training process 1 (pid 105) was killed by SIGKILL; process 0 (pid 101) stopped on losing it."
    own = describe_failures({0: failure(1, f"{LOST_PROCESS}: ...", 5), 1: failure(1, "DataError: bad", 6)})
    assert own.startswith("Training process 1") and "exited with status 1: DataError: bad;" in own


def test_a_lost_process_is_named_in_one_line_and_rank_0_then_ignores_stop_signals() -> None:
    context = DistributedContext(0, 2, 0, "gloo")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(LostProcess) as lost, context.naming_lost_processes():
            raise RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                               "[127.0.0.1]:20376: Connection reset by peer. This is typically caused by ... GLHF!")
        assert "(Read error [127.0.0.1]:20376: Connection reset by peer)" in str(lost.value)
        assert str(lost.value).startswith(LOST_PROCESS) and "--resume" in str(lost.value)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # torchrun's SIGTERM must not cut short the run's end
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(RuntimeError, match="out of memory"), context.naming_lost_processes():
        raise RuntimeError("CPU out of memory")  # not a lost process: as it was

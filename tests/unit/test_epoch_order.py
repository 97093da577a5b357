"""The epoch's order: every window once, runs of consecutive windows kept within one pool, drawn anew each epoch
from the seeded generator."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm.data.epoch_order import POOL_RUNS, RUN_WINDOWS, EpochOrder, run_shuffled


def _pools(order: list[int], n: int, run: int, pool: int) -> list[set[int]]:
    """The runs of each stretch of ``order`` that holds ``pool`` runs whole (the last one may hold fewer)."""
    pools: list[set[int]] = []
    current: set[int] = set()
    unseen = 0
    for index in order:
        if index // run not in current:
            current.add(index // run)
            unseen += min(n, (index // run + 1) * run) - index // run * run
        unseen -= 1
        if unseen == 0 and len(current) == pool:
            pools.append(current)
            current = set()
    assert unseen == 0
    return pools + [current] if current else pools


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 300), run=st.integers(1, 9), pool=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_an_order_is_a_permutation_whose_pools_hold_whole_runs(n: int, run: int, pool: int, seed: int) -> None:
    order = run_shuffled(n, torch.Generator().manual_seed(seed), run, pool)
    assert sorted(order) == list(range(n))
    assert all(len(runs) <= pool for runs in _pools(order, n, run, pool))


def test_each_epoch_draws_a_new_order_from_the_generator_and_a_seed_repeats_it() -> None:
    sampler = EpochOrder(500, torch.Generator().manual_seed(3))
    first, second = list(sampler), list(sampler)
    assert first != second
    assert list(EpochOrder(500, torch.Generator().manual_seed(3))) == first
    assert first != list(range(500))
    assert list(EpochOrder(500, None)) == list(range(500))


def test_a_batch_mixes_several_periods() -> None:
    order = list(EpochOrder(RUN_WINDOWS * POOL_RUNS * 4, torch.Generator().manual_seed(0)))
    runs_per_batch = [len({i // RUN_WINDOWS for i in order[k:k + 4]}) for k in range(0, len(order), 4)]
    assert sum(runs_per_batch) / len(runs_per_batch) > 3  # four windows of a batch come mostly from four periods


def test_an_iterator_made_and_dropped_draws_nothing() -> None:
    generator = torch.Generator().manual_seed(1)
    sampler = EpochOrder(100, generator)
    iter(sampler)  # a DataLoader starting its workers makes one and drops it
    assert list(sampler) == list(EpochOrder(100, torch.Generator().manual_seed(1)))

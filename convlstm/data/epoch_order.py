"""The order an epoch visits the training windows in: shuffled by runs of consecutive windows.

A prepared store is read a block of time steps at a time, and a block is worth reading only if the windows
that need it come while it is still cached. Shuffling window by window sent almost every window to another
block once the training frames outgrew the cache (at 0.25°, 61 × 221 cells, a third of the windows/s of a
pass in time order). So the order keeps runs of ``RUN_WINDOWS`` consecutive windows together, draws the runs
in a random order, and shuffles the windows of each ``POOL_RUNS`` runs among themselves: a batch still mixes
windows from several distant periods, and a reader needs only one pool's blocks at a time
(:func:`cache_blocks`). The same order serves windows held in memory, so that training from a store and
from its netCDF give the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

#: Consecutive windows kept together: 8 windows start within 4 days of 12-hourly data.
RUN_WINDOWS = 8
#: Runs whose windows are shuffled together: a batch draws from up to this many periods.
POOL_RUNS = 8


def run_shuffled(n: int, generator: torch.Generator, run: int = RUN_WINDOWS, pool: int = POOL_RUNS) -> list[int]:
    """A permutation of ``range(n)``: runs of ``run`` consecutive indices in random order, the indices of
    each ``pool`` runs shuffled among themselves (all drawn from ``generator``)."""
    runs = torch.randperm(-(-n // run), generator=generator)
    order: list[int] = []
    for first in range(0, len(runs), pool):
        members = torch.cat([torch.arange(r * run, min(n, (r + 1) * run)) for r in runs[first:first + pool].tolist()])
        order += members[torch.randperm(len(members), generator=generator)].tolist()
    return order


def cache_blocks(steps_per_window: int, block_steps: int) -> int:
    """Blocks of ``block_steps`` time steps a reader must keep so that each pool reads each of its blocks once,
    each window reading ``steps_per_window`` consecutive steps: a run spans ``RUN_WINDOWS + steps_per_window - 1``
    steps, so at most one block more than that many steps fill."""
    run_steps = RUN_WINDOWS + steps_per_window - 1
    return POOL_RUNS * (-(-run_steps // block_steps) + 1)


class EpochOrder(Sampler[int]):
    """Window indices for one epoch, drawn anew from ``generator`` each time an epoch starts (see
    :func:`run_shuffled`); in order without a generator (validation, inference)."""

    def __init__(self, n: int, generator: torch.Generator | None) -> None:
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        # A generator: the order is drawn when the first index is taken, so an iterator the DataLoader makes
        # and drops (it makes two when it starts worker processes) draws nothing.
        if self.generator is None:
            yield from range(self.n)
        else:
            yield from run_shuffled(self.n, self.generator)

"""The order an epoch visits the training windows in: shuffled by runs of consecutive windows.

A prepared store is read a block of time steps at a time, and a block is worth reading only if the windows
that need it come while it is still cached. Shuffling window by window sent almost every window to another
block once the training frames outgrew the cache (at 0.25°, 61 × 221 cells, a third of the windows/s of a
pass in time order). So the order keeps runs of ``RUN_WINDOWS`` consecutive windows together, draws the runs
in a random order, and shuffles the windows of each ``POOL_RUNS`` runs among themselves: a batch still mixes
windows from several distant periods, and a reader needs only one pool's blocks at a time
(:func:`cache_blocks`). The same order serves windows held in memory, so that training from a store and
from its netCDF give the same weights.

Several training processes (DDP) share one order: :class:`EpochBatches` cuts it into the optimizer steps'
batches and gives each process every ``world_size``-th window of each batch, so that ``N`` processes take the
same steps as one process with the same ``--batch-size``, and each reads its windows pool by pool.
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


class EpochBatches(Sampler[list[int]]):
    """One process's share of each batch of the epoch's order: the ``batch_sampler`` the trainer loads with.

    Every process draws the same order (:func:`run_shuffled`, from a generator seeded alike) and cuts it into
    batches of ``batch_size`` windows, the batches of the optimizer steps; process ``rank`` of ``world_size``
    takes the windows at positions ``rank, rank + world_size, ...`` of each batch. Its windows therefore follow
    the order's runs and pools (a store is still read pool by pool), the processes' windows partition the
    epoch, and every process has the same number of batches, so none waits for a step the others never take.
    With one process the batches are those of ``DataLoader(batch_size=..., sampler=EpochOrder(...))``.

    Nothing is dropped and nothing counts twice: where the epoch's last batch holds fewer windows than there are
    processes, a process left without one loads a window of that batch anyway (it must take part in the step),
    and :meth:`shares` tells the trainer it counts for nothing (``(0, total)``); the trainer weights each
    process's loss by its share, so the step equals one process's step on the whole batch.

    Parameters
    ----------
    n : int
        Windows in the epoch.
    batch_size : int
        Windows per optimizer step, over all processes.
    generator : torch.Generator, optional
        Draws each epoch's order; None visits the windows in order.
    rank, world_size : int
        This process and the number of processes.
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None, rank: int = 0,
                 world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of {world_size} processes.")
        self.n, self.batch_size, self.generator, self.rank, self.world_size = n, batch_size, generator, rank, world_size

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def shares(self, index: int) -> tuple[int, int]:
        """The windows of batch ``index`` that this process trains on, and the batch's windows in all.

        Parameters
        ----------
        index : int
            The batch, from 0.

        Returns
        -------
        tuple of int
            ``(mine, total)``; ``mine`` is 0 where this process only loads a stand-in window.
        """
        total = min(self.batch_size, self.n - index * self.batch_size)
        return len(range(self.rank, total, self.world_size)), total

    def __iter__(self) -> Iterator[list[int]]:
        # A generator, as EpochOrder: the order is drawn when the first batch is taken.
        order = run_shuffled(self.n, self.generator) if self.generator is not None else list(range(self.n))
        for first in range(0, self.n, self.batch_size):
            batch = order[first:first + self.batch_size]
            yield batch[self.rank::self.world_size] or [batch[self.rank % len(batch)]]

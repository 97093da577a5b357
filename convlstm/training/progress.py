"""Progress within an epoch as log lines, for when no progress bar is shown: a log file, a batch job's
output. One line per epoch leaves minutes of silence on long epochs; a line every
:data:`PROGRESS_INTERVAL_S` seconds says the run is alive, how fast it goes and when the epoch ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``: short enough for a progress line.

    Parameters
    ----------
    seconds : float
        A duration (rounded to whole seconds).

    Returns
    -------
    str
        The duration in the two largest units.
    """
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLog:
    """Logs ``batch i/n``, the running loss, samples per second and the epoch's ETA, at most once per
    interval.

    Parameters
    ----------
    label : str
        What the lines start with, e.g. ``epoch 3/10``.
    total : int
        Batches in the epoch.
    interval_s : float
        Seconds between lines (0: a line after every batch).
    clock : callable
        Monotonic seconds; replaceable so tests need not wait.
    """

    def __init__(self, label: str, total: int, interval_s: float = PROGRESS_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.interval_s, self.clock = label, total, interval_s, clock
        self.started = self.last = clock()

    def update(self, batches: int, samples: int, loss: float) -> None:
        """Log a line if ``interval_s`` has passed since the last one (or the start).

        Parameters
        ----------
        batches : int
            Batches done in this epoch.
        samples : int
            Windows done in this epoch.
        loss : float
            The running mean loss.
        """
        now = self.clock()
        if now - self.last < self.interval_s:
            return
        self.last = now
        elapsed = now - self.started
        rate = f"{samples / elapsed:.1f} samples/s" if elapsed > 0 else "- samples/s"
        eta = format_duration(elapsed / batches * (self.total - batches)) if batches else "-"
        logger.info("%s  batch %d/%d  loss %.4f  %s  ETA %s", self.label, batches, self.total, loss, rate, eta)

"""SIGTERM and SIGINT turned into an :class:`~convlstm.errors.Interrupted` error, so a stopped command ends
its MLflow run (KILLED, with the signal in its ``error`` tag) instead of dying with the run left RUNNING.

``timeout``, Slurm, Kubernetes and docker stop a process with SIGTERM, which by default ends Python at
once, without running ``finally`` blocks or context managers. Every command catches both signals for
its whole life (:func:`convlstm.cli.run_cli`); the training loop also *defers* the first one to a safe
point (the end of an optimizer step) so it can write ``last.pt`` first. A second signal stops at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from convlstm.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalCatcher:
    """The handler installed by :func:`catching_signals`.

    Parameters
    ----------
    defer : bool
        Record the first signal (see :attr:`received`) instead of raising; the second one raises.

    Attributes
    ----------
    received : int or None
        The first signal received while deferring; the owner checks it at its safe points.
    """

    def __init__(self, defer: bool) -> None:
        self.defer = defer
        self.received: int | None = None
        self._pid = os.getpid()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        """Raise :class:`Interrupted`, or record the signal when deferring the first one.

        DataLoader worker processes inherit the handler; they ignore the signal, and the main process
        shuts them down when it stops (a worker dying first would fail the step being finished).
        """
        if os.getpid() != self._pid:
            return
        if self.defer and self.received is None:
            self.received = signum
            return
        raise Interrupted(signum)


@contextmanager
def catching_signals(defer: bool = False) -> Iterator[SignalCatcher]:
    """Handle SIGTERM and SIGINT with a :class:`SignalCatcher` inside the block; restore the previous
    handlers after it.

    Outside the main thread Python cannot set handlers; the block then runs with the process's handlers
    and the catcher never records anything.

    Parameters
    ----------
    defer : bool
        Record the first signal instead of raising (the caller stops at its next safe point).

    Yields
    ------
    SignalCatcher
        Its ``received`` tells whether a stop was asked for.
    """
    catcher = SignalCatcher(defer)
    if threading.current_thread() is not threading.main_thread():
        yield catcher
        return
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, catcher)
    try:
        yield catcher
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

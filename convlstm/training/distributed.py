"""Several training processes (PyTorch DDP under ``torchrun``): who this process is, how the processes agree,
how they are started, and how they end together.

One training loop serves one process and many. The :class:`~convlstm.training.trainer.Trainer` asks a
:class:`DistributedContext` to add up sums over the processes, to share what rank 0 decided, and which part of
the data is this process's; without a process group each of those is the identity, so a single-process run
is what it always was. ``torchrun`` starts the processes with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`process_group` joins them: gloo on CPUs, NCCL on CUDA with one
GPU per process (its ``LOCAL_RANK``). :func:`launch` is ``torchrun --standalone`` run in this process, for the
``train`` command's ``--nproc-per-node``.

**Ending together.** Rank 0 alone owns the MLflow run, and ``torchrun`` stops every process as soon as one of
them exits with an error. So a process must not fail out from under rank 0 before rank 0 has recorded why:

- a failure that every process meets (a stop signal, a diverging loss: agreed at each step; bad data or
  settings, met by each alike) ends rank 0's run first: the others wait for rank 0 to say it is done (a key
  in ``torchrun``'s store, at most :data:`END_WAIT_S`) before they exit;
- a process that fails alone leaves the process group at once, so that rank 0, waiting for it in a collective,
  learns of it within a second (gloo: "Connection closed by peer") instead of at the collective's timeout;
  rank 0 then raises :class:`LostProcess`, ignores ``torchrun``'s stop signal while it ends the run FAILED,
  and exits; a process killed outright (SIGKILL, the OOM killer) is seen by rank 0 the same way.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from convlstm.device import select_device
from convlstm.errors import ConfigError, ConvLSTMError, Interrupted

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a collective waits for the other processes: long enough for rank 0 to write checkpoints and log an
#: epoch to a slow tracking server while the others already wait at the next step's collective.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
#: How long a failing process other than rank 0 waits for rank 0 to end the MLflow run before it exits.
END_WAIT_S = 60.0
#: What ``torchrun`` sets in every process it starts.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
#: The start of :class:`LostProcess`'s message (the launcher tells such a process from the one that failed first).
LOST_PROCESS = "Lost another training process"
#: Exit statuses of processes that stopped on SIGTERM or SIGINT (``convlstm.errors.Interrupted``).
_STOP_STATUSES = {128 + signal.SIGTERM: signal.SIGTERM, 128 + signal.SIGINT: signal.SIGINT}
#: What a collective's error says when a process it waited for is gone (gloo, NCCL, the store).
_LOST_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL", "timed out",
               "Timed out", "Socket Timeout")


class LostProcess(ConvLSTMError):
    """Another training process stopped (killed, out of memory, its machine lost) and this one cannot go on."""


class ProcessesFailed(ConvLSTMError):
    """Training processes started by :func:`launch` failed.

    Parameters
    ----------
    message : str
        Which processes failed and how, root cause first (see :func:`describe_failures`).
    exit_code : int
        The first failed process's exit status (a refusal's 2 stays 2), or 1 for a process killed by a signal.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def launched_by_torchrun() -> bool:
    """Whether ``torchrun`` (or another launcher setting its variables) started this process.

    Returns
    -------
    bool
        True when ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` are set.
    """
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


@dataclass(frozen=True)
class DistributedContext:
    """This process among the training processes; one process (the default) is a context of one.

    Parameters
    ----------
    rank : int
        This process, 0 to ``world_size - 1``; rank 0 writes checkpoints and talks to MLflow.
    world_size : int
        Processes training together.
    local_rank : int
        This process on its machine: its GPU on CUDA.
    backend : str, optional
        ``gloo`` or ``nccl``; None without a process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @classmethod
    def current(cls) -> DistributedContext:
        """The context of the process group this process joined (:func:`process_group`), else one process.

        Returns
        -------
        DistributedContext
            Rank, world size, local rank and backend.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, str(dist.get_backend()))

    @property
    def is_distributed(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0: the process that writes checkpoints and logs to MLflow."""
        return self.rank == 0

    @property
    def part(self) -> tuple[int, int]:
        """``(rank, world_size)``: which part of the data is this process's."""
        return self.rank, self.world_size

    def device(self, chosen: torch.device) -> torch.device:
        """Where this process computes: on CUDA the GPU of its local rank (one GPU a process), else ``chosen``.

        Parameters
        ----------
        chosen : torch.device
            What ``--device`` chose (``select_device``).

        Returns
        -------
        torch.device
            The process's device.
        """
        return torch.device("cuda", self.local_rank) if self.is_distributed and chosen.type == "cuda" else chosen

    def _tensor_device(self) -> torch.device:
        """Where the tensors of collectives live: NCCL takes GPU tensors only, gloo CPU ones."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def sum(self, values: Sequence[float]) -> list[float]:
        """``values`` added up over the processes (float64), the same on every process; as given with one.

        Sums and counts, never means: a mean of means would weigh a process's few windows like another's many.

        Parameters
        ----------
        values : sequence of float
            This process's sums and counts.

        Returns
        -------
        list of float
            The totals.
        """
        if not self.is_distributed:
            return [float(value) for value in values]
        tensor = torch.tensor([float(value) for value in values], dtype=torch.float64, device=self._tensor_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def share(self, value: T) -> T:
        """Rank 0's ``value`` on every process (pickled): what rank 0 decided or read, so that all go on alike.

        Parameters
        ----------
        value : object
            Rank 0's value; the others' is ignored.

        Returns
        -------
        object
            Rank 0's value.
        """
        if not self.is_distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._tensor_device())
        return box[0]  # type: ignore[return-value]

    def share_weights(self, module: torch.nn.Module) -> None:
        """Give every process rank 0's weights (e.g. the best model, which only rank 0 reads from disk).

        Parameters
        ----------
        module : torch.nn.Module
            The model, on this process's device; changed in place.
        """
        if self.is_distributed:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training steps run: DDP around ``model`` (gradients averaged over the processes in the
        backward pass, rank 0's initial weights given to all), or ``model`` itself for one process.

        Parameters
        ----------
        model : torch.nn.Module
            On this process's device.

        Returns
        -------
        torch.nn.Module
            The module to call for training steps (``model`` keeps the weights either way).
        """
        if not self.is_distributed:
            return model
        device = next(model.parameters()).device
        device_ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    @contextmanager
    def naming_lost_processes(self) -> Iterator[None]:
        """Turn a collective's failure because another process is gone into :class:`LostProcess` (one line), and
        on rank 0 ignore SIGTERM and SIGINT from then on: ``torchrun`` is about to stop it too, and rank 0 must
        first end the MLflow run FAILED with the reason (``torchrun`` kills it after 30 s all the same).

        Yields
        ------
        None
        """
        try:
            yield
        except RuntimeError as exc:
            if not self.is_distributed or not _lost_process(exc):
                raise
            if self.is_main:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_IGN)
            raise LostProcess(
                f"{LOST_PROCESS}: one of the {self.world_size} training processes stopped (killed, out of memory, or "
                f"its machine was lost), so process {self.rank} stopped too ({_gist(exc)}). last.pt in the output "
                "directory holds the last completed epoch; continue with --resume, on as many processes as are "
                "available."
            ) from exc


def _gist(exc: BaseException) -> str:
    """The first sentence of a collective's error, without gloo's source location: ``Read error [127.0.0.1]:2037:
    Connection reset by peer``."""
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h)[^\]]*\]\s*", "", str(exc).strip())
    return (re.split(r"(?<=[a-z])\. ", text, maxsplit=1)[0].rstrip(".")[:200] or type(exc).__name__)


def _lost_process(exc: BaseException) -> bool:
    """Whether ``exc`` says a process a collective waited for is gone (rather than, say, memory running out)."""
    dist_error = getattr(dist, "DistError", None)
    return (dist_error is not None and isinstance(exc, dist_error)) or any(sign in str(exc) for sign in _LOST_SIGNS)


@contextmanager
def process_group(device_name: str) -> Iterator[DistributedContext]:
    """Join the training processes ``torchrun`` started (nothing to join outside ``torchrun``, or with one
    process), and end together with them (see the module's docstring).

    Parameters
    ----------
    device_name : str
        ``--device``: CUDA means NCCL and one GPU per process, a CPU gloo.

    Yields
    ------
    DistributedContext
        This process among the others.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        yield DistributedContext()
        return
    device, local_rank = select_device(device_name), int(os.environ["LOCAL_RANK"])
    if device.type == "mps":
        raise ConfigError("Several training processes run on CUDA GPUs or on CPUs, not on MPS: use --device cpu.",
                          "device")
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise ConfigError(f"This machine has {gpus} GPU(s) but torchrun started process {local_rank} on it: start "
                              f"at most {gpus} processes a machine (--nproc-per-node), or use --device cpu.",
                              "nproc_per_node")
        torch.cuda.set_device(local_rank)
        # device_id (torch 2.3+) binds the group to the GPU at once; older torch finds it from set_device
        bound = {"device_id": torch.device("cuda", local_rank)} \
            if "device_id" in inspect.signature(dist.init_process_group).parameters else {}
        dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, **bound)
    else:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    context = DistributedContext.current()
    logger.debug("Process %d of %d (local rank %d) joined with %s.", context.rank, context.world_size,
                 context.local_rank, context.backend)
    try:
        yield context
    except BaseException:
        dist.destroy_process_group()  # a process waiting for this one in a collective learns of it now
        if not context.is_main:
            _wait_for_rank0(END_WAIT_S)
        raise
    else:
        dist.destroy_process_group()
    finally:
        if context.is_main:
            _announce_end()


def _end_key() -> str:
    """The store key rank 0 sets when it is done; one per ``torchrun`` job and attempt."""
    job, attempt = os.environ.get("TORCHELASTIC_RUN_ID", "run"), os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"convlstm/{job}/{attempt}/end"


def _store() -> Any:
    """A client of ``torchrun``'s key-value store (it lives in ``torchrun``'s agent, so it outlives rank 0)."""
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=5), wait_for_workers=False)


def _announce_end() -> None:
    """Tell the other processes that rank 0 is done (its run ended): those that failed may exit now."""
    try:
        _store().set(_end_key(), "1")
    except Exception:  # noqa: BLE001 - no store (torchrun gone): nobody is left to wait
        logger.debug("Could not tell the other processes that rank 0 ended.", exc_info=True)


def _wait_for_rank0(timeout_s: float) -> None:
    """Wait (at most ``timeout_s``) until rank 0 says it is done, or its store is gone."""
    deadline = time.monotonic() + timeout_s
    try:
        store = _store()
        while time.monotonic() < deadline:
            if store.check([_end_key()]):
                return
            time.sleep(0.2)
        logger.warning("Rank 0 did not end within %.0f s; stopping anyway.", timeout_s)
    except Exception:  # noqa: BLE001 - the store is gone with torchrun: nothing to wait for
        logger.debug("Stopped waiting for rank 0.", exc_info=True)


def check_processes(nproc: int, device: torch.device, batch_size: int, master_port: int | None = None,
                    gpu_count: int | None = None) -> None:
    """Refuse, in one line naming the flag, a launch that cannot work, before anything starts.

    Parameters
    ----------
    nproc : int
        ``--nproc-per-node``.
    device : torch.device
        The device ``--device`` chose.
    batch_size : int
        ``--batch-size``: each optimizer step's windows, split among the processes.
    master_port : int, optional
        ``--master-port``, checked free on this machine.
    gpu_count : int, optional
        GPUs on this machine (default: as many as torch sees).
    """
    if nproc < 1:
        raise ConfigError(f"--nproc-per-node must be at least 1, got {nproc}.", "nproc_per_node")
    if nproc > 1 and device.type == "mps":
        raise ConfigError("Several training processes run on CUDA GPUs or on CPUs, not on MPS: use --device cpu, or "
                          "--nproc-per-node 1.", "nproc_per_node")
    if device.type == "cuda":
        gpus = torch.cuda.device_count() if gpu_count is None else gpu_count
        if nproc > gpus:
            raise ConfigError(f"--nproc-per-node {nproc} is more than the {gpus} GPU(s) of this machine (one process "
                              f"per GPU): use --nproc-per-node {gpus} or fewer, or --device cpu.", "nproc_per_node")
    if batch_size < nproc:
        raise ConfigError(f"--batch-size {batch_size} is smaller than --nproc-per-node {nproc}: each optimizer step's "
                          f"batch is split among the processes, so each needs a window; use --batch-size {nproc} or "
                          "more, or fewer processes.", "batch_size")
    if master_port is not None:
        check_port_free(master_port)


def check_port_free(port: int) -> None:
    """Refuse ``--master-port`` when another program listens on it here (``torchrun`` would fail later, verbosely).

    Parameters
    ----------
    port : int
        A TCP port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to a server
        try:
            probe.bind(("", port))
        except OSError as exc:
            raise ConfigError(f"--master-port {port} is in use on this machine ({exc.strerror}): choose another port, "
                              "or leave --master-port out and a free one is chosen.", "master_port") from None


def torchrun_args(nproc: int, master_port: int | None) -> list[str]:
    """``torchrun``'s arguments for ``nproc`` processes on this machine: ``--standalone`` (a free port), or a
    c10d rendezvous on ``master_port``.

    Parameters
    ----------
    nproc : int
        Processes to start.
    master_port : int, optional
        The rendezvous port.

    Returns
    -------
    list of str
        Arguments before the worker's module.
    """
    where = ["--standalone"] if master_port is None else [
        "--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{master_port}",
        "--rdzv-id", f"convlstm-{os.getpid()}"]
    return [*where, "--nproc-per-node", str(nproc), "--max-restarts", "0"]


def launch(nproc: int, module: str, args: Sequence[str], master_port: int | None = None) -> None:
    """Run ``torchrun <torchrun_args> -m MODULE ARGS`` in this process and wait for its processes.

    ``torch.distributed.run`` is called rather than started as a program so that a failure comes back as data
    (each failed process's rank, exit status or signal, and the one line it recorded) instead of a report to parse.
    A SIGTERM or SIGINT to this process reaches the training processes once (they run in sessions of their
    own), and ``torchrun`` gives them 30 s to stop before killing them.

    Parameters
    ----------
    nproc : int
        Processes to start on this machine.
    module : str
        The module each runs (``python -m``).
    args : sequence of str
        Its arguments.
    master_port : int, optional
        The rendezvous port; default: a free one.

    Raises
    ------
    ProcessesFailed
        When a process failed; which, and how, in the message.
    Interrupted
        When this process, or every training process, was stopped by SIGTERM or SIGINT.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = [*torchrun_args(nproc, master_port), "-m", module, *args]
    logger.info("Starting %d training processes: torchrun %s", nproc, " ".join(argv))
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}  # torchrun sets its own
    try:
        run(parse_args(argv))
    except SignalException as exc:
        raise Interrupted(exc.sigval, f"stopped the {nproc} training processes (at their next step; rank 0 wrote "
                                      "last.pt).") from None
    except ChildFailedError as exc:
        signums = {_STOP_STATUSES.get(failure.exitcode) for failure in exc.failures.values()}
        if len(signums) == 1 and None not in signums:  # every process stopped on a signal (Slurm's scancel, ...)
            raise Interrupted(signums.pop(), "the training processes stopped.") from None
        first = sorted(exc.failures.items(), key=_root_cause_first)[0][1]
        raise ProcessesFailed(describe_failures(exc.failures), first.exitcode if first.exitcode > 0 else 1) from None
    except Exception as exc:  # noqa: BLE001 - the rendezvous failed (a port taken meanwhile, ...): one line
        raise ProcessesFailed(f"torchrun could not start the training processes: {_gist(exc)}.") from exc
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _recorded(failure: Any) -> str:
    """The one line a failed process left for ``torchrun`` (``convlstm.cli``), or ''."""
    data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
    message = data.get("message")
    return message.rstrip(".") if isinstance(message, str) and message != "<NONE>" else ""


def _root_cause_first(item: tuple[int, Any]) -> tuple[int, int, int]:
    """Sort key of ``(rank, failure)``: killed by a signal, then failed on its own, then stopped on losing another;
    earlier before later."""
    rank, failure = item
    kind = 0 if failure.exitcode < 0 else 2 if _recorded(failure).startswith(LOST_PROCESS) else 1
    return kind, int(failure.timestamp), rank


def describe_failures(failures: dict[int, Any]) -> str:
    """One line on the failed processes, the likely root cause first: a process killed by a signal, then one
    that failed with its own error, then those that stopped because another was lost.

    Parameters
    ----------
    failures : dict of int to ProcessFailure
        ``torchrun``'s failures by global rank.

    Returns
    -------
    str
        E.g. ``Training process 1 (pid 123) was killed by SIGKILL; process 0 ...``.
    """
    parts = []
    for number, (rank, failure) in enumerate(sorted(failures.items(), key=_root_cause_first)):
        subject = f"{'Training process' if number == 0 else 'process'} {rank} (pid {failure.pid})"
        text = _recorded(failure)
        if failure.exitcode < 0:
            parts.append(f"{subject} was killed by {failure.signal_name()}" + (f": {text}" if text else ""))
        elif text.startswith(LOST_PROCESS):
            parts.append(f"{subject} stopped on losing it")
        else:
            parts.append(f"{subject} exited with status {failure.exitcode}" + (f": {text}" if text else ""))
    return "; ".join(parts) + "."

"""Starting the stack's servers in sessions of their own, finding them again by pid and start time, and
stopping them with everything they spawned (SIGTERM, a wait, then SIGKILL).

Each server runs in its own session, so ``mlflow server`` and its uvicorn workers (and job runners, when
job execution is on) form one process group that is signalled as a whole. PostgreSQL's children start
sessions of their own, so a part's *family* is also its descendants, collected before it is signalled.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import psutil

from deploy.stack.layout import StackError

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 30.0
KILL_TIMEOUT_S = 10.0

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Servers this process started: kept so that they are reaped when they stop (no zombies, no warnings)."""


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` (a server may bind it; leftover TIME_WAIT sockets do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_port(part: str, port: int) -> None:
    """Refuse, in one line naming the fix, a port something else listens on."""
    if not port_is_free(port):
        raise StackError(f"port {port} for {part} on 127.0.0.1 is in use: stop what listens there "
                         f"(ss -ltnp 'sport = :{port}') or pass another --{part}-port.")


def spawn(command: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path) -> psutil.Process:
    """Start ``command`` in a new session, output appended to ``log``.

    Returns
    -------
    psutil.Process
        The new process (the leader of its process group).
    """
    with log.open("ab") as out:
        child = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 env=dict(env), cwd=cwd, start_new_session=True)
    _CHILDREN[child.pid] = child
    return psutil.Process(child.pid)


def record(process: psutil.Process) -> dict[str, float]:
    """What ``stack.json`` keeps of a process to find it again: its pid and its start, both as a time of day and
    as seconds since the machine booted."""
    started = process.create_time()
    return {"pid": process.pid, "create_time": started, "since_boot": started - psutil.boot_time()}


def find(entry: Mapping[str, float] | None) -> psutil.Process | None:
    """The recorded process if it still runs (not a zombie, not a new program under a reused pid).

    The start is compared both ways because a step of the wall clock (NTP, a virtual machine restored) moves one of
    them: on Linux psutil derives the time of day from the boot time, which the step moves, while the seconds since
    boot stay; elsewhere the kernel keeps the time of day it recorded. A match on either is the same process.
    """
    if not entry:
        return None
    try:
        process = psutil.Process(int(entry["pid"]))
        started = process.create_time()
        same_time = abs(started - float(entry["create_time"])) <= 0.01
        same_since_boot = "since_boot" in entry and abs(
            started - psutil.boot_time() - float(entry["since_boot"])) <= 0.01
        if not (same_time or same_since_boot):
            return None
        return process if is_alive(process) else None
    except (psutil.Error, KeyError, ValueError):
        return None


def is_alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a stopped server whose parent has not reaped it yet has stopped)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def family(process: psutil.Process) -> list[psutil.Process]:
    """The process, its descendants and the rest of its process group (when it leads one)."""
    members = {process.pid: process}
    try:
        members.update({child.pid: child for child in process.children(recursive=True)})
    except psutil.Error:
        pass
    for candidate in psutil.process_iter():
        try:
            if candidate.pid not in members and os.getpgid(candidate.pid) == process.pid:
                members[candidate.pid] = candidate
        except (psutil.Error, OSError):
            continue
    return list(members.values())


def living(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` that still run."""
    return [process for process in processes if is_alive(process)]


def terminate(processes: Sequence[psutil.Process], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to every process (and to the groups they lead), wait up to ``timeout``, then SIGKILL the rest.

    Raises
    ------
    StackError
        Some process survived SIGKILL (it belongs to another user, or is stuck in the kernel).
    """
    _signal_all(processes, signal.SIGTERM)
    alive = _wait_gone(processes, timeout)
    if alive:
        logger.warning("%d process(es) still running %.0f s after SIGTERM; sending SIGKILL: %s", len(alive),
                       timeout, ", ".join(str(process.pid) for process in alive))
        _signal_all(alive, signal.SIGKILL)
        alive = _wait_gone(alive, KILL_TIMEOUT_S)
    if alive:
        raise StackError(f"processes {', '.join(str(p.pid) for p in alive)} survived SIGKILL: check them with "
                         "ps and stop them by hand.")


def _wait_gone(processes: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (a zombie has: its parent, maybe another program, reaps it
    when it will); the ones still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        reap()
        alive = living(processes)
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _signal_all(processes: Iterable[psutil.Process], signum: signal.Signals) -> None:
    for process in processes:
        try:
            if not process.is_running():  # gone, and its pid perhaps another program's now
                continue
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue


def reap() -> None:
    """Collect the exit status of servers this process started that have stopped."""
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a log, joined into one line for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())

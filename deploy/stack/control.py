"""Start, stop and inspect a stack: the order of the parts, the ports and processes kept in
``stack.json``, and one lock so that two commands on the same directory take turns."""

from __future__ import annotations

import logging
import os
import stat
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import psutil
from filelock import FileLock, Timeout

from deploy.stack import mlflow_server, objectstore, postgres
from deploy.stack.layout import (
    AUTH_DATABASE,
    DEFAULT_USER,
    PARTS,
    Layout,
    State,
    StackError,
    client_env,
    load_secrets,
    write_credentials,
)
from convlstm.scoring_client import free_port
from deploy.stack.processes import check_port, family, find, living, record, terminate

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 600.0  # a start on 2 busy cores takes a minute or two; ten mean something is stuck


@dataclass(frozen=True)
class Stack:
    """A stack's addresses and users, as ``start`` left them.

    Attributes
    ----------
    root : pathlib.Path
        The stack's directory.
    ports : dict of str to int
        Each part's port on 127.0.0.1.
    users : dict of str to str
        User name to password (``admin``, ``researcher``, ``reader``).
    """

    root: Path
    ports: dict[str, int]
    users: dict[str, str]

    @property
    def layout(self) -> Layout:
        return Layout(self.root)

    @property
    def tracking_uri(self) -> str:
        return mlflow_server.url(self.ports["mlflow"])

    @property
    def bucket_dir(self) -> Path:
        """Where the artifacts land on disk."""
        return self.layout.bucket_dir

    def env(self, user: str = DEFAULT_USER) -> dict[str, str]:
        """``MLFLOW_TRACKING_URI``, ``_USERNAME`` and ``_PASSWORD`` for ``user``."""
        if user not in self.users:
            raise StackError(f"no user {user!r} in this stack: choose one of {', '.join(self.users)}.")
        return client_env(self.tracking_uri, user, self.users[user])

    @classmethod
    def open(cls, root: Path | str) -> Stack:
        """The stack in ``root`` (started before; it need not be running)."""
        layout = Layout(Path(root).resolve())
        state = State.load(layout)
        if state is None or not layout.secrets.is_file():
            raise StackError(f"{layout.root} holds no stack: run `deploy/tracking-server start {layout.root}` first.")
        secrets = load_secrets(layout)
        return cls(layout.root, dict(state.ports), dict(secrets["users"]))


def _prepare_root(root: Path) -> Layout:
    """Create the stack's directory, check it is writable, and let PostgreSQL's user through it (as root)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise StackError(f"the stack directory {root} is not writable ({exc.strerror}): choose another DIR or "
                         "fix its permissions.") from exc
    if os.geteuid() == 0:  # the postgres user must traverse DIR to reach DIR/postgres; others may not list it
        mode = stat.S_IMODE(root.stat().st_mode)
        if not mode & stat.S_IXOTH:
            root.chmod(mode | stat.S_IXOTH)
    layout = Layout(root)
    layout.logs.mkdir(mode=0o700, exist_ok=True)
    return layout


def _lock(layout: Layout) -> FileLock:
    return FileLock(str(layout.lock), timeout=LOCK_TIMEOUT_S)


def _parts(only: Collection[str] | None) -> list[str]:
    chosen = list(only or PARTS)
    unknown = [part for part in chosen if part not in PARTS]
    if unknown:
        raise StackError(f"unknown part {', '.join(unknown)} for --only: choose from {', '.join(PARTS)}.")
    return [part for part in PARTS if part in chosen]


def start(root: Path | str, *, only: Collection[str] | None = None, ports: dict[str, int | None] | None = None,
          workers: int | None = None, job_execution: bool | None = None, pg_bin: str | None = None) -> Stack:
    """Start the stack in ``root`` (creating it on first use); parts that already run are left alone.

    The same directory restarts with the same data, ports and passwords; a port given in ``ports``
    replaces the recorded one. ``only`` starts some parts (e.g. ``["mlflow"]`` after ``stop(only=["mlflow"])``);
    the parts they need must be running. A part that fails to start stops what this call started.

    Parameters
    ----------
    root : path
        The stack's directory (created if missing).
    only : collection of str, optional
        Parts to start: ``postgres``, ``s3``, ``mlflow`` (default: all).
    ports : dict, optional
        Part → port on 127.0.0.1 (None or absent: the recorded one, else a free one).
    workers : int, optional
        MLflow server workers (default: recorded, else the number of CPUs up to 4).
    job_execution : bool, optional
        ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` (default: recorded, else False).
    pg_bin : str, optional
        The folder with ``initdb`` and ``pg_ctl``.

    Returns
    -------
    Stack
        Its tracking URI, users and keys.
    """
    parts = _parts(only)
    layout = _prepare_root(Path(root).resolve())
    try:
        with _lock(layout):
            return _start(layout, parts, ports or {}, workers, job_execution, pg_bin)
    except Timeout as exc:
        raise StackError(f"another command holds {layout.lock} for {LOCK_TIMEOUT_S:.0f} s: wait for it or stop it.") from exc


def _start(layout: Layout, parts: list[str], ports: dict[str, int | None], workers: int | None,
           job_execution: bool | None, pg_bin: str | None) -> Stack:
    began = time.monotonic()
    state = State.load(layout) or State(workers=min(4, os.cpu_count() or 1))
    if workers is not None:
        state.workers = workers
    if job_execution is not None:
        state.job_execution = job_execution
    if pg_bin is not None:
        state.pg_bin = pg_bin
    secrets = load_secrets(layout)
    access, secret = secrets["s3_access_key"], secrets["s3_secret_key"]
    running = {part: find(state.processes.get(part)) for part in PARTS}
    for part in PARTS:
        if running[part] is None:
            state.processes.pop(part, None)
            given = ports.get(part)
            state.ports[part] = given or state.ports.get(part) or free_port()
        elif ports.get(part) and ports[part] != state.ports[part]:
            raise StackError(f"{part} already runs on port {state.ports[part]}: stop it first to move it to {ports[part]}.")
    missing = [need for part in parts for need in _needs(part) if need not in parts and running[need] is None]
    if missing:
        raise StackError(f"{', '.join(sorted(set(missing)))} must run before {', '.join(parts)}: start it "
                         f"(deploy/tracking-server start {layout.root}).")
    for part in parts:  # all before any start: a busy port must not leave a stack half started
        if running[part] is None:
            check_port(part, state.ports[part])
    bin_dir = postgres.find_bin_dir(state.pg_bin) if "postgres" in parts else None
    started: list[str] = []
    try:
        for part in parts:
            if running[part] is not None:
                logger.info("%s already runs (pid %d, port %d); checking that it answers.", part, running[part].pid,
                            state.ports[part])
                _wait_ready(part, layout, running[part], state, secrets)
                continue
            part_began = time.monotonic()
            if part == "postgres":
                postgres.prepare(layout, bin_dir)
                process = postgres.start(layout, bin_dir, state.ports[part])
            elif part == "s3":
                objectstore.prepare(layout)
                process = objectstore.start(layout, state.ports[part], access, secret, os.environ)
            else:
                process = _start_mlflow(layout, state, secrets)
            started.append(part)
            state.processes[part] = record(process)
            state.save(layout)
            _wait_ready(part, layout, process, state, secrets)
            logger.info("%s runs on 127.0.0.1:%d (pid %d, ready in %.1f s).", part, state.ports[part], process.pid,
                        time.monotonic() - part_began)
    except BaseException:
        if started:
            logger.error("Start failed; stopping what this start began: %s.", ", ".join(started))
            _stop(layout, started, state, quiet=True)
        raise
    state.save(layout)
    stack = Stack(layout.root, dict(state.ports), dict(secrets["users"]))
    write_credentials(layout, stack.tracking_uri, stack.users)
    logger.info("Stack ready in %.1f s.", time.monotonic() - began)
    return stack


def _needs(part: str) -> tuple[str, ...]:
    return ("postgres", "s3") if part == "mlflow" else ()


def _start_mlflow(layout: Layout, state: State, secrets: dict) -> psutil.Process:
    pg_port, pg_password = state.ports["postgres"], secrets["postgres_password"]
    mlflow_server.write_auth_config(layout, postgres.uri(pg_port, pg_password, AUTH_DATABASE), secrets["users"]["admin"])
    env = mlflow_server.server_env(postgres.uri(pg_port, pg_password), layout, secrets["flask_secret_key"],
                                   objectstore.endpoint(state.ports["s3"]), secrets["s3_access_key"],
                                   secrets["s3_secret_key"], state.job_execution)
    return mlflow_server.start(layout, state.ports["mlflow"], state.workers, env)


def _wait_ready(part: str, layout: Layout, process: psutil.Process, state: State, secrets: dict) -> None:
    """Until the part answers as its clients will use it (PostgreSQL: the MLflow role logs in; S3: an
    object goes in and out; MLflow: /health, then the users and roles are in place)."""
    port = state.ports[part]
    if part == "postgres":
        postgres.bootstrap(layout, port, secrets["postgres_password"])
        postgres.check_login(port, secrets["postgres_password"])
    elif part == "s3":
        objectstore.wait_ready(layout, process, port, secrets["s3_access_key"], secrets["s3_secret_key"])
    else:
        mlflow_server.wait_healthy(layout, process, port)
        mlflow_server.ensure_users(port, secrets["users"])


def stop(root: Path | str, *, only: Collection[str] | None = None) -> list[str]:
    """Stop the stack's parts (MLflow, then S3, then PostgreSQL), leaving none of their processes behind.

    Returns
    -------
    list of str
        The parts that were running and are stopped now.
    """
    parts = _parts(only)
    layout = Layout(Path(root).resolve())
    state = State.load(layout)
    if state is None:
        raise StackError(f"{layout.root} holds no stack (no stack.json): nothing to stop.")
    try:
        with _lock(layout):
            state = State.load(layout) or state
            return _stop(layout, parts, state)
    except Timeout as exc:
        raise StackError(f"another command holds {layout.lock} for {LOCK_TIMEOUT_S:.0f} s: wait for it or stop it.") from exc


def _stop(layout: Layout, parts: list[str], state: State, quiet: bool = False) -> list[str]:
    stopped = []
    for part in reversed(parts):
        process = find(state.processes.get(part))
        if part == "postgres" and process is None:
            process = postgres.postmaster_process(layout)  # started by hand, or stack.json lost it
        if process is None:
            if not quiet:
                logger.info("%s is not running.", part)
            state.processes.pop(part, None)
            continue
        members = family(process)
        if part == "postgres":
            try:
                postgres.stop(layout, postgres.find_bin_dir(state.pg_bin))
            except StackError as exc:
                logger.warning("%s; stopping its processes with signals.", exc)
        terminate(living(members))
        state.processes.pop(part, None)
        state.save(layout)
        stopped.append(part)
        logger.info("%s stopped.", part)
    return stopped


@dataclass(frozen=True)
class PartStatus:
    """One part of a stack: its port and, when it runs, its process."""

    part: str
    port: int | None
    process: psutil.Process | None

    @property
    def running(self) -> bool:
        return self.process is not None


def status(root: Path | str) -> list[PartStatus]:
    """Each part's port and process (None when it is stopped)."""
    layout = Layout(Path(root).resolve())
    state = State.load(layout)
    if state is None:
        raise StackError(f"{layout.root} holds no stack (no stack.json): start one with `deploy/tracking-server start`.")
    return [PartStatus(part, state.ports.get(part), find(state.processes.get(part))) for part in PARTS]


def processes(root: Path | str) -> list[psutil.Process]:
    """Every running process of the stack (each part's process, its descendants and its process group)."""
    found: dict[int, psutil.Process] = {}
    for part in status(root):
        if part.process is not None:
            found.update({member.pid: member for member in living(family(part.process))})
    return list(found.values())


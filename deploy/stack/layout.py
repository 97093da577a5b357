"""Where a stack keeps everything, under one directory, and the two files that describe it:
``stack.json`` (ports and processes, no secrets) and ``secrets.json`` (passwords and keys, mode 0600).

One directory holds the whole stack so that it can be backed up, moved or deleted as one thing, and so
that ``start`` on the same directory finds the same data, ports and passwords again.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PARTS = ("postgres", "s3", "mlflow")
"""The parts, in start order (stop goes the other way)."""
BUCKET = "mlflow-artifacts"
WORKSPACE = "default"
"""MLflow's workspace the team's roles live in (the one clients use when they name none)."""
USERS = ("admin", "researcher", "reader")
DEFAULT_USER = "researcher"
DATABASE, AUTH_DATABASE, DB_ROLE = "mlflow", "mlflow_auth", "mlflow"


class StackError(Exception):
    """The stack cannot be started, stopped or read; the message is one line naming the fix."""


@dataclass(frozen=True)
class Layout:
    """The paths of a stack under its directory.

    Attributes
    ----------
    root : pathlib.Path
        The stack's directory (absolute).
    """

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "stack.json"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def credentials(self) -> Path:
        """One sourceable ``<user>.env`` per user, mode 0600."""
        return self.root / "credentials"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def lock(self) -> Path:
        return self.root / "stack.lock"

    @property
    def postgres(self) -> Path:
        """Owned by the ``postgres`` user when we run as root: its data, socket and log."""
        return self.root / "postgres"

    @property
    def pg_data(self) -> Path:
        return self.postgres / "data"

    @property
    def pg_socket(self) -> Path:
        return self.postgres / "socket"

    @property
    def pg_log(self) -> Path:
        return self.postgres / "postgres.log"

    @property
    def objects(self) -> Path:
        """What the S3 server serves: each folder is a bucket."""
        return self.root / "objects"

    @property
    def bucket_dir(self) -> Path:
        return self.objects / BUCKET

    @property
    def rclone_config(self) -> Path:
        return self.root / "rclone.conf"

    @property
    def auth_config(self) -> Path:
        return self.root / "auth.ini"

    def log(self, part: str) -> Path:
        """The log file of ``s3`` or ``mlflow`` (PostgreSQL writes :attr:`pg_log`)."""
        return self.pg_log if part == "postgres" else self.logs / f"{part}.log"

    def credentials_file(self, user: str) -> Path:
        return self.credentials / f"{user}.env"


@dataclass
class State:
    """``stack.json``: what a later ``start``, ``stop`` or ``status`` needs to find the stack again.

    Attributes
    ----------
    ports : dict of str to int
        Each part's port on 127.0.0.1; kept across restarts so the tracking URI stays the same.
    processes : dict of str to dict
        Each running part's ``pid``, ``create_time`` and ``since_boot`` (a pid alone may be reused by another program).
    workers : int
        ``mlflow server --workers``.
    job_execution : bool
        ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` for the MLflow server.
    pg_bin : str or None
        The PostgreSQL programs' folder given at start (None: found again each time).
    """

    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, dict[str, float]] = field(default_factory=dict)
    workers: int = 2
    job_execution: bool = False
    pg_bin: str | None = None

    @classmethod
    def load(cls, layout: Layout) -> State | None:
        """The stack's state, or None when the directory holds no stack yet."""
        if not layout.state.is_file():
            return None
        try:
            data = json.loads(layout.state.read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise StackError(f"{layout.state} cannot be read ({exc}): restore it, or stop the stack's processes "
                             "and start on a new directory.") from exc

    def save(self, layout: Layout) -> None:
        _write_atomic(layout.state, json.dumps(asdict(self), indent=2) + "\n", mode=0o644)


def _write_atomic(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` with ``mode`` from the first byte (a secret is never readable by others)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (mode 0600)."""
    _write_atomic(path, text, mode=0o600)


def _password() -> str:
    """24 URL-safe characters (MLflow's basic-auth app wants at least 12)."""
    return secrets.token_urlsafe(18)


def load_secrets(layout: Layout) -> dict[str, Any]:
    """The stack's passwords and keys, generated on first use and kept in ``secrets.json`` (0600).

    Returns
    -------
    dict
        ``postgres_password``, ``s3_access_key``, ``s3_secret_key``, ``flask_secret_key`` and
        ``users`` (user name to password).
    """
    if layout.secrets.is_file():
        try:
            return json.loads(layout.secrets.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StackError(f"{layout.secrets} cannot be read ({exc}): restore it from a backup; the stack's "
                             "databases and users were made with the passwords it held.") from exc
    values = {"postgres_password": _password(), "s3_access_key": secrets.token_hex(10),
              "s3_secret_key": _password(), "flask_secret_key": secrets.token_hex(32),
              "users": {user: _password() for user in USERS}}
    write_private(layout.secrets, json.dumps(values, indent=2) + "\n")
    return values


def write_credentials(layout: Layout, tracking_uri: str, users: dict[str, str]) -> None:
    """``credentials/<user>.env``: the exports a user sources to work against the server (0600 each)."""
    layout.credentials.mkdir(mode=0o700, exist_ok=True)
    for user, password in users.items():
        write_private(layout.credentials_file(user), "".join(
            f"export {name}={shlex.quote(value)}\n" for name, value in client_env(tracking_uri, user, password).items()))


def client_env(tracking_uri: str, user: str, password: str) -> dict[str, str]:
    """The environment an MLflow client needs: no S3 credentials, the server proxies artifacts."""
    return {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}

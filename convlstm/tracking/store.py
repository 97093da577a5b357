"""Check the tracking store before any work, so a wrong or unreachable ``MLFLOW_TRACKING_URI`` fails in
seconds with one line instead of minutes of MLflow's retries and a traceback.

Every tracked entry point (train, infer, compare) calls :func:`check_tracking_store` first;
``python -m convlstm.tracking.store`` runs it alone. Its first contact with a SQLite store happens under
a file lock beside the database: MLflow creates a new database's schema on first contact, and two
processes doing so at once collide (``duplicate column name: step``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlparse

import click
import mlflow
import requests
from filelock import FileLock, Timeout
from mlflow.environment_variables import (
    MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
    MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    MLFLOW_HTTP_REQUEST_TIMEOUT,
    MLFLOW_TRACKING_INSECURE_TLS,
    MLFLOW_TRACKING_SERVER_CERT_PATH,
)
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from convlstm.cli import run_cli
from convlstm.errors import TrackingError

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 10
PROBE_RETRIES = 1
INIT_LOCK_TIMEOUT_S = 300  # creating a new SQLite schema takes seconds; minutes mean something is stuck
CHECK_HINT = "check MLFLOW_TRACKING_URI and that the server is running"


@contextmanager
def bounded_requests() -> Iterator[None]:
    """MLflow's HTTP calls inside the block give up after :data:`PROBE_TIMEOUT_S` and
    :data:`PROBE_RETRIES` retry (its defaults, 120 s and 7 retries with backoff, take minutes to fail).

    Yields
    ------
    None
        The previous values are restored on exit.
    """
    bounded = {MLFLOW_HTTP_REQUEST_TIMEOUT.name: str(PROBE_TIMEOUT_S),
               MLFLOW_HTTP_REQUEST_MAX_RETRIES.name: str(PROBE_RETRIES),
               MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.name: "1"}
    saved = {name: os.environ.get(name) for name in bounded}
    os.environ.update(bounded)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps (causes, contexts, urllib3's ``reason`` and ``args``)."""
    seen: set[int] = set()
    stack: list[object] = [exc]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])


def _connection_failure(exc: requests.RequestException) -> str:
    """Why a request got no answer, in a few words."""
    causes = list(_causes(exc))
    if any(isinstance(c, requests.Timeout) for c in causes):
        return f"no answer within {PROBE_TIMEOUT_S} s"
    if any(isinstance(c, requests.exceptions.SSLError) for c in causes):
        return ("TLS failed: check the server's certificate, MLFLOW_TRACKING_SERVER_CERT_PATH or "
                "MLFLOW_TRACKING_INSECURE_TLS")
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return "unknown host name"
    return type(exc).__name__


class StoreUnreachable(TrackingError):
    """Nothing answers at the tracking server's address (refused, unknown host, timed out): a training may go
    on offline, keeping its record for ``sync`` (:mod:`convlstm.tracking.journal`)."""


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the server did not answer, or answered that it is not up (a 5xx from a proxy
    or a restarting server, 429): worth asking again later, unlike a refusal (401, 403, a bad value).

    Parameters
    ----------
    exc : BaseException
        What an MLflow call raised.

    Returns
    -------
    bool
        True for a connection failure, a timeout, HTTP 5xx or 429.
    """
    for cause in _causes(exc):
        if isinstance(cause, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                              ConnectionError, TimeoutError, StoreUnreachable)):
            return True
        if isinstance(cause, RestException) and (cause.get_http_status_code() >= 500
                                                 or cause.get_http_status_code() == 429):
            return True
    return False


def unreachable_reason(exc: BaseException) -> str:
    """Why a server did not answer, in a few words (``connection refused``), for a failure :func:`is_unreachable`."""
    for cause in _causes(exc):
        if isinstance(cause, requests.RequestException):
            return _connection_failure(cause)
        if isinstance(cause, RestException):
            return f"HTTP {cause.get_http_status_code()}"
    return first_line(exc)[:200]


def _probe_server(uri: str) -> None:
    """One plain request: is anything answering at ``uri``? (Any HTTP answer counts; the API call after
    it tells about credentials.)"""
    verify: bool | str = MLFLOW_TRACKING_SERVER_CERT_PATH.get() or not MLFLOW_TRACKING_INSECURE_TLS.get()
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S, verify=verify)
    except requests.RequestException as exc:
        raise StoreUnreachable(f"cannot reach the MLflow tracking server at {uri} ({_connection_failure(exc)}): "
                            f"{CHECK_HINT}.") from exc


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (MLflow's and the database drivers' run to many lines)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:600]


def _server_error(uri: str, exc: MlflowException) -> TrackingError:
    """One line for an MLflow API call the server refused."""
    status = exc.get_http_status_code()
    if status == 401:
        return TrackingError(f"the MLflow tracking server at {uri} refused the credentials (HTTP 401): set "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN).")
    if status == 403:
        return TrackingError(f"the MLflow tracking server at {uri} denied access (HTTP 403): ask its administrator "
                             "for permission for the user in MLFLOW_TRACKING_USERNAME, or use another account.")
    return TrackingError(f"the MLflow tracking server at {uri} answered with an error ({first_line(exc)}): "
                         f"{CHECK_HINT} (is it an MLflow server, with the right path and port?).")


def _sqlite_lock(uri: str) -> AbstractContextManager[object]:
    """A lock file beside a SQLite database (``mlflow.db.lock``); no lock for other stores and in-memory SQLite."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or parsed.path in ("", "/", "/:memory:"):
        return nullcontext()
    database = Path(parsed.path[1:])  # sqlite:///relative.db → "/relative.db"; sqlite:////abs.db → "//abs.db"
    database.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does for a new SQLite store
    return FileLock(f"{database}.lock", timeout=INIT_LOCK_TIMEOUT_S)


def _open_store(uri: str) -> None:
    """The first contact: a one-row experiment search (MLflow creates a new database's schema here)."""
    try:
        with _sqlite_lock(uri):
            MlflowClient(uri).search_experiments(max_results=1)
    except Timeout as exc:
        raise TrackingError(f"the MLflow tracking store {uri} stayed locked for {INIT_LOCK_TIMEOUT_S} s by another "
                            f"process setting it up ({exc.lock_file}): wait for it or stop it.") from exc
    except Exception as exc:  # noqa: BLE001 - MLflow's errors and a database driver's own (SQLAlchemy, sqlite3, ...)
        if isinstance(exc, MlflowException) and urlparse(uri).scheme in ("http", "https"):
            raise _server_error(uri, exc) from exc
        raise TrackingError(f"cannot open the MLflow tracking store {uri} ({first_line(exc)}): "
                            "check MLFLOW_TRACKING_URI.") from exc


def check_tracking_store(uri: str | None = None) -> None:
    """Fail at once, in one line naming the URI and what to check, when the tracking store cannot be used.

    A server is first asked with one plain request (refused, unknown host, timeout and TLS are told
    apart), then with one bounded MLflow API call (credentials, permissions, a server that is not
    MLflow). A database store gets the same API call, under a file lock for SQLite so concurrent first
    starts on a new database take turns creating its schema.

    Parameters
    ----------
    uri : str, optional
        Default: MLflow's current tracking URI (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``).

    Raises
    ------
    TrackingError
        The store cannot be reached or used.
    """
    uri = uri or mlflow.get_tracking_uri()
    if urlparse(uri).scheme in ("http", "https"):
        _probe_server(uri)
    with bounded_requests():
        _open_store(uri)
    logger.debug("Tracking store %s is usable.", uri)


@click.command()
def main() -> None:
    """Check the tracking store in MLFLOW_TRACKING_URI (default sqlite:///mlflow.db) in seconds, e.g.
    before `mlflow run`, whose launcher retries an unreachable server for minutes."""
    check_tracking_store()
    click.echo(f"The MLflow tracking store {mlflow.get_tracking_uri()} is usable.")


if __name__ == "__main__":
    run_cli(main)

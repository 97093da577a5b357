"""A local ``mlflow models serve`` process, started, waited for, asked and stopped from Python.

The tests and ``benchmarks/bench_serving.py`` talk to the real scoring server through this one
helper; a user can do the same to try a registered model before deploying it::

    with ScoringServer("models:/convlstm-precipitation@champion", Path("server.log")) as server:
        status, answer = server.post(request_body(window))

``request_body`` writes the tensor JSON MLflow documents (``{"inputs": [...]}``) with each float32 in at
most 9 significant digits, which read back as exactly the same float32: about 40 % fewer bytes than
``json.dumps({"inputs": window.tolist()})`` (17 digits a number), which halves the time the scoring
server spends decoding it (it parses a request's JSON twice, then deep-copies the lists).
``request_parquet`` sends the same windows as Parquet (one row per flattened window), which the
scoring server reads without any of that: for large grids it is the fast way in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from io import BytesIO
from types import TracebackType

import numpy as np
import pandas as pd

from convlstm.checks import require_finite
from convlstm.errors import DataError

HOST = "127.0.0.1"
JSON_CONTENT_TYPE = "application/json"
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"  # what MLflow's scoring server reads as Parquet
_WORKER_STARTED = "Application startup complete."  # what uvicorn logs once a worker has loaded the model
# No proxy, whatever the environment says: the server is on this machine.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(RuntimeError):
    """The scoring server did not come up; the message holds the end of its log."""


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now (another process may still take it before the server does).

    Parameters
    ----------
    host : str
        The address to bind.

    Returns
    -------
    int
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _finite_windows(windows: np.ndarray) -> np.ndarray:
    array = np.asarray(windows, dtype=np.float32)
    if array.ndim == 0 or array.size == 0:
        raise DataError(f"A request needs a non-empty array of windows, got shape {list(array.shape)}.")
    require_finite(array, "The windows")  # the model's own check, before anything is sent
    return array


def request_body(windows: np.ndarray, key: str = "inputs") -> bytes:
    """``{key: windows}`` as compact JSON bytes; every float32 reads back exactly (``%.9g`` round-trips float32).

    Parameters
    ----------
    windows : numpy.ndarray
        Raw fields ``[N, T, C, H, W]``, finite.
    key : str
        The top-level key: ``inputs`` (tensor input) or ``instances``.

    Returns
    -------
    bytes
        The request body.
    """
    array = _finite_windows(windows)
    row = ",".join(["%.9g"] * array.shape[-1])
    items = ["[" + row % tuple(values) + "]" for values in array.reshape(-1, array.shape[-1]).tolist()]
    for size in reversed(array.shape[:-1]):  # group the innermost lists into their parents, dimension by dimension
        items = ["[" + ",".join(items[i:i + size]) + "]" for i in range(0, len(items), size)]
    return ('{"%s": %s}' % (key, items[0])).encode()


def request_parquet(windows: np.ndarray) -> bytes:
    """Windows ``[N, ...]`` as Parquet bytes, one row per flattened window; the served model reshapes them.

    Parameters
    ----------
    windows : numpy.ndarray
        Raw fields ``[N, T, C, H, W]``, finite.

    Returns
    -------
    bytes
        The request body, to send as ``PARQUET_CONTENT_TYPE``.
    """
    array = _finite_windows(windows)
    buffer = BytesIO()
    pd.DataFrame({"windows": list(array.reshape(len(array), -1))}).to_parquet(buffer)
    return buffer.getvalue()


def post(url: str, body: object, timeout_s: float = 60.0, content_type: str = JSON_CONTENT_TYPE) -> tuple[int, dict]:
    """POST a JSON body (or raw bytes of ``content_type``) to ``url``; error statuses are returned, not raised.

    Parameters
    ----------
    url : str
        The endpoint.
    body : object
        Bytes as they are, anything else encoded as JSON.
    timeout_s : float
        Seconds to wait for the answer.
    content_type : str
        The body's media type.

    Returns
    -------
    tuple of (int, dict)
        The HTTP status and the decoded JSON answer.
    """
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class ScoringServer:
    """``mlflow models serve -m <uri> --env-manager local`` on ``host`` at a free port, as a context manager.

    The server runs in its own process group with its output in ``log_path``; leaving the context
    stops it (and anything it started) even when the block failed.

    Parameters
    ----------
    model_uri : str
        What ``-m`` takes: ``models:/<name>@<alias>``, ``runs:/<id>/model`` or a local folder.
    log_path : pathlib.Path
        The server's stdout and stderr (overwritten).
    env : dict of str to str, optional
        The server's environment (default: this process's).
    cwd : pathlib.Path, optional
        The server's working directory.
    host : str
        The address it listens on.
    start_timeout_s : float
        Seconds to wait for ``/ping`` before :class:`ServerError`.
    workers : int
        Server processes (``--workers``), each with its own copy of the model.

    Attributes
    ----------
    port : int
        The port, chosen when made.
    process : subprocess.Popen or None
        The running server; None outside the context.
    """

    def __init__(self, model_uri: str, log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, host: str = HOST, start_timeout_s: float = 90.0, workers: int = 1) -> None:
        self.model_uri = model_uri
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.host = host
        self.start_timeout_s = start_timeout_s
        self.workers = workers
        self.port = free_port(host)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """``http://<host>:<port>``."""
        return f"http://{self.host}:{self.port}"

    def post(self, body: object, timeout_s: float = 60.0, content_type: str = JSON_CONTENT_TYPE) -> tuple[int, dict]:
        """POST to ``/invocations``: a forecast request.

        Parameters
        ----------
        body : object
            :func:`request_body` or :func:`request_parquet` bytes, or anything JSON-encodable.
        timeout_s : float
            Seconds to wait for the answer.
        content_type : str
            The body's media type (``PARQUET_CONTENT_TYPE`` for Parquet).

        Returns
        -------
        tuple of (int, dict)
            The HTTP status and the decoded answer (``{"predictions": ...}`` on success).
        """
        return post(f"{self.url}/invocations", body, timeout_s, content_type)

    def __enter__(self) -> "ScoringServer":
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "models", "serve", "-m", self.model_uri, "--env-manager", "local",
                 "-h", self.host, "-p", str(self.port), "--workers", str(self.workers)],
                cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _wait_until_ready(self) -> None:
        """Until ``/ping`` answers and every worker has loaded the model (the first one answers ``/ping`` alone)."""
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with _OPENER.open(f"{self.url}/ping", timeout=5) as response:
                    started = self.log_path.read_text().count(_WORKER_STARTED)
                    if response.status == 200 and started >= self.workers:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise ServerError(f"`mlflow models serve -m {self.model_uri}` (--workers {self.workers}) was not ready within "
                          f"{self.start_timeout_s:g} s (exit code {self.process.poll()}); its log "
                          f"{self.log_path}:\n{self.log_path.read_text()[-5000:]}")

    def stop(self) -> None:
        """Terminate the server (mlflow passes the signal on to uvicorn); kill its process group if it lingers."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything of the group still alive (ours: start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
        process.wait(timeout=20)
        self.process = None

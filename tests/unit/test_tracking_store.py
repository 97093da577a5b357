"""The tracking-store check: an unreachable or refusing store fails in seconds with one line naming its
URI, and concurrent first starts on a new SQLite store do not collide while creating its schema."""

from __future__ import annotations

import http.server
import multiprocessing
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient

from convlstm.errors import TrackingError
from convlstm.scoring_client import free_port
from convlstm.tracking import store
from convlstm.tracking.runs import fail_pending_run
from convlstm.tracking.store import check_tracking_store
from convlstm.tracking.uris import resolve_members, resolve_resume
from tests.integration.workspace import subprocess_env

#: Hang guards, not speed targets: without the check these cases wait out MLflow's retries (about 4 minutes).
HANG_GUARD_S = 30
#: A new process also imports torch and mlflow first, which alone takes half a minute on a busy 2-core machine.
PROCESS_HANG_GUARD_S = 120


@pytest.fixture
def answering(request: pytest.FixtureRequest) -> Iterator[str]:
    """A local HTTP server answering every request with the status code the test is parametrized with."""
    status = request.param

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"no")

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_ensemble_fails_at_once_with_one_line_when_the_server_is_unreachable(tmp_path: Path) -> None:
    """Its parent run must be on the server (a single training goes on offline instead: test_record.py)."""
    uri = f"http://127.0.0.1:{free_port()}"
    env = {**subprocess_env(tmp_path), "MLFLOW_TRACKING_URI": uri}
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "entrypoints.train", "--num-epochs", "1", "--seeds", "0,1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    elapsed = time.monotonic() - start
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: cannot reach the MLflow tracking server at {uri} (connection refused): check MLFLOW_TRACKING_URI "
        "and that the server is running."]
    assert elapsed < PROCESS_HANG_GUARD_S
    assert not (tmp_path / "outputs").exists()  # nothing was started


@pytest.mark.parametrize(("answering", "expected"), [
    (401, "refused the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    (403, "denied access (HTTP 403)"),
    (404, "answered with an error"),
], indirect=["answering"])
def test_a_refusing_server_is_named_with_the_reason(answering: str, expected: str) -> None:
    with pytest.raises(TrackingError) as caught:
        check_tracking_store(answering)
    message = str(caught.value)
    assert message.startswith(f"the MLflow tracking server at {answering} ")
    assert expected in message
    assert "\n" not in message


def test_a_server_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "PROBE_TIMEOUT_S", 1)
    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(TrackingError, match=r"cannot reach the MLflow tracking server at .* \(no answer within 1 s\)"):
            check_tracking_store(uri)


def test_failing_the_pending_run_gives_up_when_the_store_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``mlflow run`` a failed start marks the launcher's run FAILED; with the store gone that must
    not wait out MLflow's default retries (minutes)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    start = time.monotonic()
    fail_pending_run("the store check failed")
    assert time.monotonic() - start < HANG_GUARD_S


def test_resuming_a_run_id_checks_the_store_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the run id is not a local path either
    with pytest.raises(TrackingError, match=f"cannot reach the MLflow tracking server at {uri} "):
        resolve_resume("0123456789abcdef")


def test_a_comparison_side_is_taken_for_a_file_only_when_the_store_says_it_is_no_run(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A store that answers "no such run" leaves the reference to resolve_model (a file, a URI); one that
    cannot be asked is an error naming it, not a misleading "no such file"."""
    monkeypatch.chdir(tmp_path)  # the run id is not a local path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert resolve_members("0123456789abcdef") == ["0123456789abcdef"]
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(TrackingError, match=f"Cannot tell whether '0123456789abcdef' is a run of {uri} "):
        resolve_members("0123456789abcdef")


def _start_tracked(uri: str, barrier: multiprocessing.synchronize.Barrier, name: str) -> None:
    """What a training does first, in a process of its own: check the store, then log a run to it."""
    barrier.wait()
    check_tracking_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("together")
    with mlflow.start_run(run_name=name):
        mlflow.log_metric("loss", 1.0)


@pytest.mark.slow
def test_two_starts_on_a_new_sqlite_store_both_succeed(tmp_path: Path) -> None:
    """Without the lock MLflow's schema creation collides here (``duplicate column name: step``) nearly always."""
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    context = multiprocessing.get_context("fork")  # the children inherit the imports
    barrier = context.Barrier(2)
    processes = [context.Process(target=_start_tracked, args=(uri, barrier, name)) for name in ("first", "second")]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0, 0]
    experiment = MlflowClient(uri).get_experiment_by_name("together")
    runs = MlflowClient(uri).search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["first", "second"]
    assert all(run.data.metrics == {"loss": 1.0} for run in runs)


def _raised_inside(outer: Exception, inner: Exception) -> Exception:
    """``outer`` raised while handling ``inner``, as MLflow wraps a failed request."""
    try:
        try:
            raise inner
        except Exception:  # noqa: BLE001
            raise outer  # noqa: B904 - MLflow raises without `from`: the cause is only the context
    except Exception as exc:  # noqa: BLE001
        return exc


@pytest.mark.parametrize(("error", "unreachable"), [
    (_raised_inside(MlflowException("API request to /runs/log-batch failed"), requests.ConnectionError("refused")),
     True),
    (_raised_inside(MlflowException("API request failed"), requests.exceptions.RetryError("too many 503 error")), True),
    (requests.Timeout("read timed out"), True),
    (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "restarting"}), True),
    (RestException({"error_code": "PERMISSION_DENIED", "message": "no"}), False),
    (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}), False),
    (MlflowException("Run not found"), False),
    (ValueError("a bug"), False),
])
def test_only_a_server_that_does_not_answer_is_worth_asking_again(error: Exception, unreachable: bool) -> None:
    """The journal's sender retries an outage for as long as the training runs, and stops at a refusal."""
    assert store.is_unreachable(error) is unreachable

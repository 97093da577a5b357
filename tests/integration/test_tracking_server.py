"""The team's tracking server (``deploy/tracking-server``: PostgreSQL, an S3 object store, MLflow with basic
auth) end to end: the researcher logs through it and the artifact lands in the bucket, the anonymous, the
wrongly signed-in and the reader are refused what they may not do, and stopping leaves no process while
starting again finds the same data.

One stack serves the whole file (``server_stack``, started once per session); the last two tests stop and
start it with the script, as a user would, in the order they are written.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
import psutil
import pytest
import requests
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from convlstm.config import DEFAULT_REGISTERED_NAME
from convlstm.errors import TrackingError
from convlstm.tracking.store import check_tracking_store
from tests.helpers import REPO
from tests.integration.server_stack import alive, as_user, refused

pytestmark = pytest.mark.slow

SCRIPT = REPO / "deploy" / "tracking-server"
ARTIFACT = "checkpoints/weights.bin"
VAL_LOSS = [0.9, 0.5, 0.4]


@dataclass(frozen=True)
class Logged:
    """What the researcher logged: a finished run with params, metrics and an artifact, and a registered
    model version of it with the ``champion`` alias."""

    experiment_id: str
    run_id: str
    artifact_uri: str
    payload: bytes
    version: str


@pytest.fixture(scope="module")
def logged(server_stack, tmp_path_factory: pytest.TempPathFactory) -> Logged:
    folder = tmp_path_factory.mktemp("artifact")
    payload = os.urandom(300_000)
    (folder / Path(ARTIFACT).name).write_bytes(payload)
    with as_user(server_stack, "researcher") as client:
        experiment_id = client.create_experiment(f"stack-{uuid.uuid4().hex[:8]}")
        run = client.create_run(experiment_id)
        run_id = run.info.run_id
        client.log_param(run_id, "hidden_channels", "16,32,64")
        client.log_batch(run_id, metrics=[Metric("val_loss", value, 0, step) for step, value in enumerate(VAL_LOSS)])
        client.log_artifact(run_id, str(folder / Path(ARTIFACT).name), str(Path(ARTIFACT).parent))
        client.set_terminated(run_id)
        try:
            client.create_registered_model(DEFAULT_REGISTERED_NAME)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(DEFAULT_REGISTERED_NAME, f"{run.info.artifact_uri}/checkpoints",
                                              run_id=run_id).version
        client.set_registered_model_alias(DEFAULT_REGISTERED_NAME, "champion", version)
    return Logged(experiment_id, run_id, run.info.artifact_uri, payload, version)


def download(stack, user: str, run_id: str, destination: Path) -> bytes:
    """The run's artifact, downloaded through the server as ``user``."""
    with as_user(stack, user):
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ARTIFACT, dst_path=str(destination),
                                                   tracking_uri=stack.tracking_uri)
    return Path(path).read_bytes()


def test_researcher_logs_through_the_server_into_the_bucket(server_stack, logged: Logged, tmp_path: Path) -> None:
    # proxied: the run's artifacts live behind the server, and the client had no S3 credentials
    assert logged.artifact_uri.startswith("mlflow-artifacts:/")
    on_disk = server_stack.bucket_dir / logged.artifact_uri.removeprefix("mlflow-artifacts:/").lstrip("/") / ARTIFACT
    assert on_disk.read_bytes() == logged.payload
    assert download(server_stack, "researcher", logged.run_id, tmp_path) == logged.payload
    with as_user(server_stack, "researcher") as client:
        run = client.get_run(logged.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {"hidden_channels": "16,32,64"}
        assert [m.value for m in sorted(client.get_metric_history(logged.run_id, "val_loss"), key=lambda m: m.step)] == VAL_LOSS
        assert client.get_model_version_by_alias(DEFAULT_REGISTERED_NAME, "champion").version == logged.version


def test_anonymous_and_wrong_credentials_are_refused(server_stack, logged: Logged) -> None:
    api = f"{server_stack.tracking_uri}/api/2.0/mlflow/experiments/search"
    artifact = (f"{server_stack.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/"
                f"{logged.artifact_uri.removeprefix('mlflow-artifacts:/').lstrip('/')}/{ARTIFACT}")
    reader_password = server_stack.users["reader"]
    assert requests.get(api, params={"max_results": 1}, timeout=30).status_code == 401
    assert requests.get(artifact, timeout=30).status_code == 401
    assert requests.get(api, params={"max_results": 1}, auth=("reader", reader_password + "x"), timeout=30).status_code == 401
    assert requests.get(api, params={"max_results": 1}, auth=("nobody", reader_password), timeout=30).status_code == 401
    assert requests.get(api, params={"max_results": 1}, auth=("reader", reader_password), timeout=30).status_code == 200
    with as_user(server_stack, None) as client:
        assert refused(client.search_experiments) == 401
    with pytest.MonkeyPatch.context() as mp:  # what train / infer / compare check before any work: one line
        mp.setenv("MLFLOW_TRACKING_USERNAME", "researcher")
        mp.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
        with pytest.raises(TrackingError, match=r"refused the credentials \(HTTP 401\)"):
            check_tracking_store(server_stack.tracking_uri)


def test_reader_reads_but_may_not_write(server_stack, logged: Logged, tmp_path: Path) -> None:
    with as_user(server_stack, "reader") as client:
        assert client.get_run(logged.run_id).data.params == {"hidden_channels": "16,32,64"}
        assert client.get_model_version_by_alias(DEFAULT_REGISTERED_NAME, "champion").version == logged.version
        assert refused(client.create_run, logged.experiment_id) == 403
        assert refused(client.log_metric, logged.run_id, "val_loss", 0.1, step=3) == 403
        assert refused(client.create_model_version, DEFAULT_REGISTERED_NAME, f"{logged.artifact_uri}/checkpoints",
                       run_id=logged.run_id) == 403
        assert refused(client.set_registered_model_alias, DEFAULT_REGISTERED_NAME, "challenger", logged.version) == 403
        # not even a run in an experiment or a model of their own (the stack runs with workspaces on)
        assert refused(client.create_experiment, f"reader-{uuid.uuid4().hex[:8]}") == 403
        assert refused(client.create_registered_model, f"reader-{uuid.uuid4().hex[:8]}") == 403
    upload = (f"{server_stack.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/"
              f"{logged.artifact_uri.removeprefix('mlflow-artifacts:/').lstrip('/')}/intruder.txt")
    assert requests.put(upload, data=b"x", auth=("reader", server_stack.users["reader"]), timeout=30).status_code == 403
    assert download(server_stack, "reader", logged.run_id, tmp_path) == logged.payload
    with as_user(server_stack, "researcher") as client:
        assert client.get_metric_history(logged.run_id, "val_loss")[-1].step == len(VAL_LOSS) - 1
        assert client.get_model_version_by_alias(DEFAULT_REGISTERED_NAME, "champion").version == logged.version


def script(*args: object) -> subprocess.CompletedProcess[str]:
    """``deploy/tracking-server ARGS`` as a user runs it (with this interpreter as its Python)."""
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True, timeout=420,
                          check=False)


def members(stack, part: str) -> list[psutil.Process]:
    """The running processes of one part (its process, descendants and process group)."""
    from deploy.stack import status
    from deploy.stack.processes import family

    (found,) = [entry for entry in status(stack.root) if entry.part == part]
    assert found.process is not None, f"{part} is not running"
    return family(found.process)


def test_env_prints_the_exports_of_a_user(server_stack) -> None:
    printed = script("env", server_stack.root, "--user", "reader")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == "".join(f"export {name}={shlex.quote(value)}\n"
                                     for name, value in server_stack.env("reader").items())


def test_stop_and_start_the_mlflow_server_alone(server_stack, logged: Logged) -> None:
    workers = members(server_stack, "mlflow")
    assert len(workers) > 1  # the server and its uvicorn workers
    others = [members(server_stack, part)[0] for part in ("postgres", "s3")]  # the postmaster and rclone

    stopped = script("stop", server_stack.root, "--only", "mlflow")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "Stopped: mlflow."
    assert not [process.pid for process in workers if alive(process)]
    assert all(alive(process) for process in others)  # (PostgreSQL's sessions of the MLflow server have ended)
    shown = script("status", server_stack.root)
    assert shown.returncode == 3
    assert {line.split()[0]: line.split()[2] for line in shown.stdout.splitlines()} == {
        "postgres": "running", "s3": "running", "mlflow": "stopped"}

    started = script("start", server_stack.root, "--only", "mlflow")
    assert started.returncode == 0, started.stderr
    assert f"export MLFLOW_TRACKING_URI={server_stack.tracking_uri}\n" in started.stdout
    with as_user(server_stack, "researcher") as client:
        assert client.get_run(logged.run_id).info.status == "FINISHED"


def test_stop_leaves_no_process_and_start_finds_the_data(server_stack, logged: Logged, tmp_path: Path) -> None:
    from deploy.stack import processes
    from deploy.stack.processes import port_is_free

    running = processes(server_stack.root)
    assert {process.name() for process in running} >= {"postgres", "rclone"}

    stopped = script("stop", server_stack.root)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "Stopped: mlflow, s3, postgres."
    assert not [(process.pid, process.name()) for process in running if alive(process)]
    assert all(port_is_free(port) for port in server_stack.ports.values())
    assert script("status", server_stack.root).returncode == 3

    started = script("start", server_stack.root)
    assert started.returncode == 0, started.stderr
    assert f"export MLFLOW_TRACKING_URI={server_stack.tracking_uri}\n" in started.stdout
    assert "export MLFLOW_TRACKING_USERNAME=researcher\n" in started.stdout
    assert script("status", server_stack.root).returncode == 0
    # the same users, passwords, runs, registry and artifacts
    with as_user(server_stack, "reader") as client:
        run = client.get_run(logged.run_id)
        assert run.data.metrics == {"val_loss": VAL_LOSS[-1]}
        assert client.get_model_version_by_alias(DEFAULT_REGISTERED_NAME, "champion").version == logged.version
    assert download(server_stack, "reader", logged.run_id, tmp_path) == logged.payload

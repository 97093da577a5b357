"""Training in two CPU processes (gloo), as ``mlflow run . -e train -P nproc_per_node=2`` and ``convlstm-train
--nproc-per-node 2`` start it: one MLflow run logged once, the same weights and metrics as one process with the
same batch, resume on another number of processes, a killed process, and launches refused before they start.

Each launch starts three Python processes (the launcher and two trainers) on the tiny file with a tiny model:
about 20-30 s here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from convlstm.checkpoint import LAST_NAME, load_checkpoint, periodic_name
from convlstm.commands.train import train
from convlstm.config import DEFAULT_REGISTERED_NAME, TrainSettings
from convlstm.settings import build
from convlstm.training.experiment import new_run_settings, run_training
from tests.integration.workspace import (
    EPOCH_METRICS,
    all_runs,
    artifact_paths,
    invoke,
    mlflow_run_command,
    run_module,
    steps,
    subprocess_env,
)

#: The tiny run of these tests; batches of 4 over 45 windows end with a batch of one, which one of two processes
#: takes and the other stands in for.
FLAGS = {"hidden_channels": "4,8", "batch_size": "4", "num_epochs": "2", "checkpoint_frequency": "1",
         "visualize": "false", "early_stopping_patience": "0"}
LAUNCH_TIMEOUT_S = 240
#: Float32 differences from summing the gradients of two halves of a batch instead of the whole, through AdamW.
WEIGHT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}
COMPARED = ("train_loss", "val_loss", "val_rmse_mm", "val_mae_mm", "lr")


def args_of(flags: dict[str, str], **more: object) -> list[str]:
    """Command-line flags of ``flags`` and ``more`` (``--num-epochs 2 ...``)."""
    items = {**flags, **{key: str(value) for key, value in more.items()}}
    return [token for key, value in items.items() for token in (f"--{key.replace('_', '-')}", value)]


def client_of(directory: Path) -> MlflowClient:
    uri = f"sqlite:///{directory}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def one_process(directory: Path, data: Path, flags: dict[str, str]) -> Path:
    """The same training in this process, untracked: its output directory (the reference)."""
    settings = build(TrainSettings, train.make_context("train", ["--data", str(data), "--output-dir",
                                                                 str(directory), *args_of(flags)]).params)
    run_training(new_run_settings(settings), str(data))
    return directory


def assert_same_training(distributed: Path, alone: Path, epochs: int) -> None:
    """Weights after every epoch within float32 tolerance, and the epoch metrics to 1e-5 (relative)."""
    for epoch in range(1, epochs + 1):
        ours, reference = (load_checkpoint(path / periodic_name(epoch)) for path in (distributed, alone))
        for name, tensor in reference["model_state_dict"].items():
            torch.testing.assert_close(ours["model_state_dict"][name], tensor, **WEIGHT_TOLERANCE,
                                       msg=lambda m, name=name, epoch=epoch: f"epoch {epoch}, {name}: {m}")
    ours, reference = (load_checkpoint(path / LAST_NAME)["training_state"]["history"] for path in (distributed, alone))
    assert len(ours) == len(reference) == epochs
    for row, expected in zip(ours, reference):
        for key in COMPARED:
            assert row[key] == pytest.approx(expected[key], rel=1e-5), (row["epoch"], key)


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err[-3000:]
    return [line for line in err.splitlines() if line.startswith("Error")]


@dataclass
class Launched:
    """A finished launch: where it ran and what it printed."""

    directory: Path
    result: subprocess.CompletedProcess[str]

    @property
    def output(self) -> Path:
        return self.directory / "out"


# ---------------------------------------------------------------------------------------------- mlflow run, 2 processes


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory, tiny_nc: Path) -> Launched:
    """``mlflow run . -e train -P nproc_per_node=2 ...``: two epochs of the tiny run in two processes."""
    directory = tmp_path_factory.mktemp("two-processes")
    env = {**subprocess_env(directory), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.25"}
    params = {"data": tiny_nc, "output_dir": directory / "out", **FLAGS, "nproc_per_node": 2}
    result = subprocess.run(mlflow_run_command("train", params, "ddp"), cwd=directory, env=env, capture_output=True,
                            text=True, timeout=LAUNCH_TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return Launched(directory, result)


@pytest.mark.slow
def test_mlflow_run_with_two_processes_logs_one_run_once(two_processes: Launched) -> None:
    client = client_of(two_processes.directory)
    (run,) = all_runs(client)  # mlflow run's own run, joined by rank 0: no run per process
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["nproc_per_node"] == "2" and run.data.tags["world_size"] == "2"
    for key in EPOCH_METRICS:
        assert steps(client, run_id, key) == [1, 2], key  # each epoch once
    for key in ("test_rmse_mm", "best_val_loss", "epochs_trained"):
        assert len(client.get_metric_history(run_id, key)) == 1, key
    assert [key for key in run.data.metrics if key.startswith("system/")], "no system metrics"
    (version,) = client.search_model_versions(f"name='{DEFAULT_REGISTERED_NAME}'")
    assert version.run_id == run_id
    found = artifact_paths(client, run_id)
    assert {"checkpoints/last.pt", "checkpoints/best_model.pt", "checkpoints/checkpoint_epoch_2.pt",
            "training.log", "config.json", "normalizer.pkl"} <= found
    log = (two_processes.output / "training.log").read_text()
    assert "rank 0 of 2 processes, gloo" in log and "epoch 2/2" in log
    assert log.count("epoch 1/2  train_loss") == 1  # rank 0 alone reports
    assert f"Finished baseline run {run_id} in 2 processes" in two_processes.result.stdout
    assert "Traceback" not in two_processes.result.stderr


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains_with_the_same_batch(two_processes: Launched, tiny_nc: Path,
                                                                         tmp_path: Path) -> None:
    """Two processes taking 2 windows of each batch of 4 give one process's weights and metrics (batches of 4)."""
    assert_same_training(two_processes.output, one_process(tmp_path / "alone", tiny_nc, FLAGS), epochs=2)


# ---------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_a_run_trained_in_one_process_resumes_in_two(tracked: Path, tiny_nc: Path, tmp_path: Path) -> None:
    """One epoch in one process, the second in two: the same run, each epoch logged once, and the weights of a
    two-epoch training in one process. Batches of 7 split 4 + 3 (the last, of 3 windows, 2 + 1): each process's
    loss is weighted by its share."""
    flags = {**FLAGS, "batch_size": "7"}
    first = {**flags, "num_epochs": "1"}
    assert invoke(train, ["--data", tiny_nc, "--output-dir", "out", *args_of(first)]) == 0
    (run,) = all_runs(MlflowClient())
    result = run_module(tracked, "entrypoints.train", "--resume", run.info.run_id, "--num-epochs", "2",
                        "--nproc-per-node", "2", timeout=LAUNCH_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    client = client_of(tracked)
    assert [r.info.run_id for r in all_runs(client)] == [run.info.run_id]
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    for key in EPOCH_METRICS:
        assert steps(client, run.info.run_id, key) == [1, 2], key
    # one version when the first process ended, one for the continuation
    assert len(client.search_model_versions(f"name='{DEFAULT_REGISTERED_NAME}'")) == 2
    assert_same_training(tracked / "out", one_process(tmp_path / "alone", tiny_nc, flags), epochs=2)


# ---------------------------------------------------------------------------------------------- a process killed


def _rank_process(launcher: psutil.Process, rank: str, timeout_s: float = 60) -> psutil.Process:
    """The training process of ``rank`` among the launcher's descendants."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in launcher.children(recursive=True):
            try:
                if child.environ().get("RANK") == rank and "convlstm.commands.train" in " ".join(child.cmdline()):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no training process of rank {rank}")


@pytest.mark.slow
def test_a_killed_process_stops_the_others_fails_the_run_and_leaves_last_pt(tracked: Path, tiny_nc: Path) -> None:
    args = ["--data", tiny_nc, "--output-dir", "out", *args_of(FLAGS, num_epochs=500), "--nproc-per-node", "2",
            "--registered-model-name", ""]
    launcher = subprocess.Popen([sys.executable, "-m", "entrypoints.train", *map(str, args)], cwd=tracked,
                                env=subprocess_env(tracked), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        process = psutil.Process(launcher.pid)
        victim, survivor = _rank_process(process, "1"), _rank_process(process, "0")
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not (tracked / "out" / LAST_NAME).exists():  # mid-training: an epoch is done
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[1][-3000:]
            time.sleep(0.1)
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        _, err = launcher.communicate(timeout=90)
        stopped_after = time.monotonic() - killed
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 1
    assert stopped_after < 60, stopped_after  # no hang: the others noticed and stopped
    assert not survivor.is_running() or survivor.status() == psutil.STATUS_ZOMBIE
    *own, summary = error_lines(err)  # rank 0's own line (it lost the other), then the launcher's
    assert summary == (f"Error: Training process 1 (pid {victim.pid}) was killed by SIGKILL; process 0 (pid "
                       f"{survivor.pid}) stopped on losing it."), summary
    assert [line for line in own if "Lost another training process" in line and "--resume" in line] == own

    client = client_of(tracked)
    (run,) = all_runs(client)
    assert run.info.status == "FAILED"
    assert "Training process 1" in run.data.tags["error"] and "SIGKILL" in run.data.tags["error"]
    assert "process 0" in run.data.tags["processes_failed"]  # rank 0 stopped, having lost the other
    trained = load_checkpoint(tracked / "out" / LAST_NAME)["training_state"]["epoch"]  # intact, and loads
    assert trained >= 1

    # and it resumes on the one process left (two processes before): one more epoch, the same run
    assert invoke(train, ["--resume", run.info.run_id, "--num-epochs", trained + 1]) == 0
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert steps(client, run.info.run_id, "val_loss") == list(range(1, trained + 2))


# ---------------------------------------------------------------------------------------------- refusals


def _busy_port() -> tuple[socket.socket, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server, server.getsockname()[1]


@pytest.mark.parametrize(("extra", "flag"), [
    (["--nproc-per-node", "0"], "--nproc-per-node"),
    (["--nproc-per-node", "2", "--batch-size", "1"], "--batch-size"),
    (["--nproc-per-node", "2", "--master-port", "BUSY"], "--master-port"),
    (["--nproc-per-node", "2", "--seeds", "1", "2"], "--nproc-per-node"),
], ids=["no-process", "batch-smaller-than-processes", "port-in-use", "seeds"])
def test_a_launch_that_cannot_work_is_refused_in_one_line_before_it_starts(
        tracked: Path, tiny_nc: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        extra: list[str], flag: str) -> None:
    server, port = _busy_port()
    with server:
        extra = [str(port) if arg == "BUSY" else arg for arg in extra]
        args = ["--data", tiny_nc, "--output-dir", "out", *args_of(FLAGS), *extra]
        assert invoke(train, args) == 2  # no run is made
        (line,) = error_lines(capsys.readouterr().err)
        assert flag in line, line
        assert all_runs(MlflowClient()) == [] and not (tracked / "out").exists()

        # under mlflow run the run exists already: it ends FAILED, not RUNNING
        client = MlflowClient()
        run_id = client.create_run(client.create_experiment("pending")).info.run_id
        monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
        assert invoke(train, args) == 2
        capsys.readouterr()
        assert client.get_run(run_id).info.status == "FAILED"
        assert flag.lstrip("-").replace("-", "_") in client.get_run(run_id).data.tags["error"] or \
            flag in client.get_run(run_id).data.tags["error"]
    assert os.environ.get("RANK") is None  # nothing here ran as a training process

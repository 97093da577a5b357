"""Trainings that outlive the team's tracking server: the server is killed while one trains and started again
:data:`OUTAGE_S` seconds later (5 minutes: longer than MLflow's own retries last); a second training starts while
it is down and ends before it is back. Neither stops computing; the first ends FINISHED with its whole history
once the server is back, the second keeps its record locally and ``python -m entrypoints.sync`` sends it.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from convlstm.data.demo import demo_data_path
from tests.integration.entry_processes import Process
from tests.integration.server_stack import as_user, session_stack, user_env

pytestmark = [pytest.mark.slow, pytest.mark.waits]

#: How long the server stays down (CONVLSTM_TEST_OUTAGE_S shortens it while working on this test).
OUTAGE_S = float(os.environ.get("CONVLSTM_TEST_OUTAGE_S", "300"))
#: Epochs of the training that lives through the outage, and of the one that starts during it.
EPOCHS, OFFLINE_EPOCHS = 5, 2
#: A small model on the demo grid: a few seconds an epoch, so that all epochs but the first fall inside the outage.
ARGS = ["--hidden-channels", "4", "8", "--batch-size", "8", "--visualize", "false", "--upload-wait", "900"]
EPOCH_METRICS = ("train_loss", "val_loss", "val_rmse_mm")


def _training(name: str, epochs: int, folder: Path, env: dict[str, str], experiment: str, model: str) -> Process:
    """A training on the demo atmosphere (this session's cached copy: made once, shared with the other tests)."""
    args = ["--data", demo_data_path(), "--output-dir", folder / name, *ARGS, "--num-epochs", epochs,
            "--experiment-name", experiment, "--registered-model-name", model]
    return Process.start(name, "entrypoints.train", args, folder, env)


def _wait_for(condition, timeout: float, what: str) -> None:  # noqa: ANN001 - a zero-argument predicate
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _kill_server(stack: object) -> None:
    """SIGKILL the MLflow server and its workers (no clean shutdown), as a crash would."""
    from deploy.stack import status
    from deploy.stack.processes import family

    (server,) = [part.process for part in status(stack.root) if part.part == "mlflow"]  # type: ignore[attr-defined]
    assert server is not None, "the server is not running"
    for process in family(server):
        process.send_signal(signal.SIGKILL)


def _epoch_times(client: MlflowClient, run_id: str, epochs: int) -> dict[int, int]:
    """Step → timestamp (ms) of the run's val_loss, checking every epoch metric is there once per epoch."""
    for key in EPOCH_METRICS:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, epochs + 1)), f"{key}: {steps}"
    return {m.step: m.timestamp for m in client.get_metric_history(run_id, "val_loss")}


def _check_complete(client: MlflowClient, run_id: str, model: str, epochs: int) -> dict[int, int]:
    """A FINISHED run with every epoch once, its checkpoints, log, model and one registered version."""
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    times = _epoch_times(client, run_id, epochs)
    assert {"test_rmse_mm", "best_epoch"} <= set(run.data.metrics)
    assert run.data.params["num_epochs"] == str(epochs)
    root = {a.path for a in client.list_artifacts(run_id)}
    assert {"checkpoints", "training.log", "normalizer.pkl", "config.json"} <= root
    assert {"checkpoints/last.pt", "checkpoints/best_model.pt"} <= {a.path for a in client.list_artifacts(run_id,
                                                                                                      "checkpoints")}
    (version,) = client.search_model_versions(f"name='{model}' and run_id='{run_id}'")
    assert run.data.tags["registered_model"] == f"{model}/{version.version}"
    return times


def test_trainings_go_on_through_an_outage_and_reach_the_server_after_it(tmp_path: Path) -> None:
    with session_stack() as stack:
        from deploy.stack import start

        env = user_env(stack, "researcher", tmp_path)
        experiment, model = f"outage-{uuid.uuid4().hex[:8]}", f"outage-{uuid.uuid4().hex[:8]}"
        with as_user(stack, "researcher") as client:
            experiment_id = client.create_experiment(experiment)

        through = _training("through", EPOCHS, tmp_path, env, experiment, model)
        with as_user(stack, "researcher") as client:
            def first_epoch_sent() -> bool:
                runs = client.search_runs([experiment_id])
                return bool(runs) and bool(client.get_metric_history(runs[0].info.run_id, "val_loss"))

            _wait_for(first_epoch_sent, 180, "the first epoch on the server")
            (run,) = client.search_runs([experiment_id])
        _kill_server(stack)
        down = time.time()

        # starts while the server is down
        offline = _training("offline", OFFLINE_EPOCHS, tmp_path, env, experiment, model)
        assert offline.popen.wait(timeout=max(OUTAGE_S - 10, 1)) == 0, offline.output[-3000:]
        assert "Training goes on offline" in offline.output
        assert "entrypoints.sync" in offline.output.splitlines()[-1]
        assert through.popen.poll() is None, "the first training should be waiting for the server, not ended"

        time.sleep(max(0.0, down + OUTAGE_S - time.time()))
        up = time.time()
        start(stack.root, only=["mlflow"])  # type: ignore[attr-defined]
        through.finish()
        assert through.run_id == run.info.run_id
        log = (tmp_path / "through" / "training.log").read_text()
        assert "does not answer" in log and "answers again" in log

        with as_user(stack, "researcher") as client:
            times = _check_complete(client, run.info.run_id, model, EPOCHS)
            # the epochs after the first were computed while the server was down: their metrics carry those times
            # (one may have ended between the first reaching the server and the kill)
            during = [step for step, stamp in times.items() if down * 1000 <= stamp <= up * 1000]
            assert len(during) >= EPOCHS - 2, (times, down, up)
            assert len(client.search_runs([experiment_id])) == 1  # the offline training's run is not there yet

            sync = Process.start("sync", "entrypoints.sync", [tmp_path / "offline"], tmp_path, env)
            sync.finish()
            runs = client.search_runs([experiment_id], "tags.experiment_type = 'baseline'")
            synced = [r for r in runs if r.info.run_id != run.info.run_id]
            assert len(synced) == 1
            offline_times = _check_complete(client, synced[0].info.run_id, model, OFFLINE_EPOCHS)
            # as if it had been online: the run started, and every epoch was measured, while the server was down
            assert down * 1000 <= synced[0].info.start_time <= synced[0].info.end_time <= up * 1000
            assert all(down * 1000 <= stamp <= up * 1000 for stamp in offline_times.values())

            again = Process.start("sync-again", "entrypoints.sync", [tmp_path / "offline"], tmp_path, env)
            again.finish()
            assert "already on the tracking server" in again.output
            assert len(client.search_runs([experiment_id])) == 2
            assert len(client.search_model_versions(f"name='{model}'")) == 2

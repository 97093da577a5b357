"""``--resume`` of a run that ended: refused without ``--num-epochs``, continued (same run, one new model
version, each epoch's metrics once) with it; a run's missing or corrupt local ``last.pt`` replaced by its
artifact; an unreadable checkpoint named in one line. Tiny runs of one or two epochs, trained here.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from convlstm.checkpoint import LAST_NAME, load_checkpoint, save_checkpoint
from convlstm.config import DEFAULT_REGISTERED_NAME
from convlstm.training.experiment import run_training, settings_from_checkpoint
from convlstm.training.trainer import TrainingCallback
from convlstm.commands.train import train
from tests.integration.workspace import EPOCH_METRICS, TINY_ARGS, all_runs, invoke, steps


def train_run(tiny_nc: Path, *extra: str) -> str:
    """Train a tiny one-epoch run into ``out`` (tracked, registered); its run id."""
    assert invoke(train, ["--data", tiny_nc, "--output-dir", "out", *TINY_ARGS, *extra]) == 0
    (run,) = all_runs(MlflowClient())
    assert run.info.status == "FINISHED"
    return run.info.run_id


def versions() -> list[str]:
    return sorted(v.run_id for v in MlflowClient().search_model_versions(f"name='{DEFAULT_REGISTERED_NAME}'"))


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("Error")]


def test_resuming_a_finished_run_is_refused_in_one_line(tracked: Path, tiny_nc: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run_id = train_run(tiny_nc)
    capsys.readouterr()
    for target in (run_id, "out", f"out/{LAST_NAME}"):
        assert invoke(train, ["--resume", target]) == 2, target
        (line,) = error_lines(capsys.readouterr().err)
        assert f"run {run_id} already FINISHED after 1 epoch" in line and "--num-epochs" in line, line
    assert invoke(train, ["--resume", run_id, "--num-epochs", "1"]) == 2  # no more than it has trained
    (line,) = error_lines(capsys.readouterr().err)
    assert "--num-epochs 1" in line and "already trained 1 epoch" in line, line

    foreign = load_checkpoint(Path("out") / LAST_NAME)
    save_checkpoint("foreign.pt", {**foreign, "run_id": "f" * 32})  # trained against another tracking store
    assert invoke(train, ["--resume", "foreign.pt"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert f"run {'f' * 32}, which is not in the tracking store" in line, line

    client = MlflowClient()
    assert versions() == [run_id]  # nothing registered again
    assert [run.info.run_id for run in all_runs(client)] == [run_id]
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("val_loss", "best_epoch", "epochs_trained", "test_rmse_mm"):
        assert len(client.get_metric_history(run_id, key)) == 1, key  # nothing logged twice


def test_more_epochs_continue_the_finished_run_and_register_once(tracked: Path, tiny_nc: Path) -> None:
    run_id = train_run(tiny_nc)
    assert versions() == [run_id]
    assert invoke(train, ["--resume", run_id, "--num-epochs", "3"]) == 0

    client = MlflowClient()
    run = client.get_run(run_id)
    assert [r.info.run_id for r in all_runs(client)] == [run_id] and run.info.status == "FINISHED"
    assert versions() == [run_id, run_id]  # one new version: the continuation's
    for key in EPOCH_METRICS:
        assert steps(client, run_id, key) == [1, 2, 3], key  # the new epochs only, none twice
    assert run.data.metrics["epochs_trained"] == 3
    history = sorted(client.get_metric_history(run_id, "epochs_trained"), key=lambda m: m.timestamp)
    assert [m.value for m in history] == [1, 3]  # the final metrics once more
    assert run.data.tags["num_epochs_extended_to"] == "3"
    assert load_checkpoint(Path("out") / LAST_NAME)["training_state"]["epoch"] == 3
    assert "Continuing to 3 epochs" in (Path("out") / "training.log").read_text()


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_resume_by_run_id_uses_the_artifact_when_the_local_checkpoint_is_unusable(
        tracked: Path, tiny_nc: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    run_id = train_run(tiny_nc)
    local = (tracked / "out" / LAST_NAME).resolve()
    if damage == "corrupt":
        local.write_bytes(local.read_bytes()[:1000])  # truncated, as by a full disk or an interrupted copy
    else:
        local.unlink()
    capsys.readouterr()
    assert invoke(train, ["--resume", run_id, "--num-epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert f"Local checkpoint {local} is {damage}" in err and "using the run's artifact checkpoints/last.pt" in err, err
    client = MlflowClient()
    assert steps(client, run_id, "val_loss") == [1, 2]
    assert load_checkpoint(local)["training_state"]["epoch"] == 2  # training continued where the artifact left off
    assert client.get_run(run_id).info.status == "FINISHED"


def test_an_unreadable_checkpoint_is_named_in_one_line(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for content in (b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"):
        (workdir / "broken.pt").write_bytes(content)
        assert invoke(train, ["--resume", "broken.pt"]) == 1
        (line,) = error_lines(capsys.readouterr().err)
        assert "broken.pt is not a readable convlstm checkpoint" in line and "corrupt" in line, line
        assert "weights_only" not in line  # not torch's advice to load untrusted code
    assert not (workdir / "mlflow.db").exists()


class Epochs(TrainingCallback):
    """Records the epochs trained."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.seen.append(epoch)


def test_an_early_stopped_run_continues_with_fresh_patience_and_a_stretched_schedule(tracked: Path,
                                                                                     tiny_nc: Path) -> None:
    """A run that stopped early trains on when more epochs are asked for (without re-arming, it would not train
    at all); the learning rate of the new epochs follows the cosine over the new total, as a run planned that long."""
    assert invoke(train, ["--data", tiny_nc, "--output-dir", "planned", *TINY_ARGS, "--num-epochs", "4",
                          "--registered-model-name", ""]) == 0
    assert invoke(train, ["--data", tiny_nc, "--output-dir", "short", *TINY_ARGS, "--num-epochs", "2",
                          "--early-stopping-patience", "3", "--registered-model-name", ""]) == 0
    checkpoint = tracked / "short" / LAST_NAME
    state = load_checkpoint(checkpoint)
    # as early stopping would leave it (the tiny run is too short to stop by itself): with the count kept, even
    # a re-armed run would stop after one more epoch
    state["training_state"].update(stopped_early=True, epochs_without_improvement=3)
    save_checkpoint(checkpoint, state)

    settings, _ = settings_from_checkpoint(checkpoint)
    epochs = Epochs()
    assert run_training(settings, tiny_nc, callbacks=[epochs]).state.stopped_early  # plain resume: nothing to train
    assert epochs.seen == []

    settings, _ = settings_from_checkpoint(checkpoint, num_epochs=4)
    outcome = run_training(settings, tiny_nc, callbacks=[epochs], extend=True)
    assert epochs.seen == [3, 4] and outcome.state.epoch == 4
    planned = load_checkpoint(tracked / "planned" / LAST_NAME)["training_state"]["history"]
    for row, expected in zip(outcome.state.history[2:], planned[2:]):
        assert math.isclose(row["lr"], expected["lr"], rel_tol=1e-9), (row["lr"], expected["lr"])

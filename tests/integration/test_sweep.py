"""Sweeps: a tiny sweep (3 trials, 1 epoch) is one parent with a finished child run per trial, numeric params,
the best trial on the parent and its model registered, and a rerun continues the same study and parent; pruned and
failed trials end tagged, never RUNNING; both experiments get a study each; a killed sweep resumes; two sweep
processes share one study and parent; ``mlflow run -e sweep`` makes its own run the parent. Seconds a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from convlstm.commands.sweep import sweep
from convlstm.errors import TrainingDiverged
from convlstm.tracking import sweep as tracking_sweep
from convlstm.tracking import training as tracking_training
from convlstm.tracking.sweep import BEST_TRIAL, HISTORY_PLOT, IMPORTANCE_PLOT, SWEEP_PREFIX, TRIALS_TABLE
from convlstm.tracking.uris import resolve_members
from tests.integration.workspace import all_runs, artifact_paths, invoke, mlflow_run, subprocess_env

TINY = ["--hidden-channels", "4", "8", "--batch-size", "8", "--num-epochs", "1", "--visualize", "false"]
SPACE = """\
hidden_channels:
  choices: [[4, 8], [8, 8]]
learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
batch_size:
  choices: [4, 8]
"""


@pytest.fixture
def space(tracked: Path) -> Path:
    path = tracked / "space.yaml"
    path.write_text(SPACE)
    return path


def sweep_args(tiny_nc: Path, space: Path, n_trials: int, *extra: object) -> list[object]:
    return ["--data", tiny_nc, "--output-dir", "sweeps", *TINY, "--space", space, "--n-trials", n_trials,
            "--experiment-name", "e", *extra]


def parents_and_children(client: MlflowClient) -> tuple[list, dict[str, list]]:
    runs = all_runs(client)
    parents = [run for run in runs if run.data.tags.get("run_type") == "sweep"]
    children = {p.info.run_id: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id] for p in parents}
    return parents, children


def test_a_tiny_sweep_is_one_parent_with_a_child_per_trial_and_registers_the_best(tracked: Path, tiny_nc: Path,
                                                                                   space: Path, tmp_path: Path) -> None:
    assert invoke(sweep, sweep_args(tiny_nc, space, 3)) == 0
    client = MlflowClient()
    runs = all_runs(client)
    assert {run.info.status for run in runs} == {"FINISHED"}  # nothing left RUNNING
    (parent,), children = parents_and_children(client)
    trials = sorted(children[parent.info.run_id], key=lambda run: int(run.data.tags["sweep_trial"]))
    assert len(runs) == 4 and [run.data.tags["sweep_trial"] for run in trials] == ["0", "1", "2"]
    assert {run.data.tags["sweep_state"] for run in trials} == {"complete"}
    for run in trials:  # the trial's values are params the UI reads as numbers
        assert 1e-3 <= float(run.data.params["learning_rate"]) <= 1e-2
        assert int(run.data.params["batch_size"]) in (4, 8) and run.data.params["hidden_channels"] in ("4,8", "8,8")
        assert "val_rmse_mm" in run.data.metrics
    # trial 0 is the base configuration (the command line's values)
    assert (trials[0].data.params["learning_rate"], trials[0].data.params["batch_size"]) == ("0.001", "8")
    # the best trial on the parent: the lowest validation RMSE of the children
    scores = {run.info.run_id: run.data.metrics["val_rmse_mm"] for run in trials}
    best = min(scores, key=scores.get)
    assert parent.data.tags["best_run_id"] == best
    assert parent.data.metrics[f"{SWEEP_PREFIX}best_value"] == pytest.approx(scores[best])
    assert parent.data.metrics[f"{SWEEP_PREFIX}n_complete"] == 3
    best_params = json.loads(parent.data.tags["best_params"])
    best_run = client.get_run(best)
    assert str(best_params["learning_rate"]) == best_run.data.params["learning_rate"]
    assert {BEST_TRIAL, TRIALS_TABLE, HISTORY_PLOT, IMPORTANCE_PLOT, "sweep.log"} <= artifact_paths(client, parent.info.run_id)
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, TRIALS_TABLE, str(tmp_path))).read_text())
    assert len(table["data"]) == 3 and "run_id" in table["columns"]
    # only the best trial's model is registered
    versions = client.search_model_versions("name='convlstm-precipitation'")
    assert [v.run_id for v in versions] == [best]
    assert parent.data.tags["registered_model"] == f"convlstm-precipitation/{versions[0].version}"
    assert resolve_members(parent.info.run_id) == [best]  # compare takes a sweep's parent as its best trial

    # the same command again: the study is complete, the same parent run is summarized again, nothing added
    assert invoke(sweep, sweep_args(tiny_nc, space, 3)) == 0
    (again,), children = parents_and_children(client)
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert len(children[again.info.run_id]) == 3 and len(client.search_model_versions("name='convlstm-precipitation'")) == 1
    # two more trials asked for: the study continues under the same parent
    assert invoke(sweep, sweep_args(tiny_nc, space, 5)) == 0
    (again,), children = parents_and_children(client)
    assert again.info.run_id == parent.info.run_id
    assert sorted(int(r.data.tags["sweep_trial"]) for r in children[again.info.run_id]) == [0, 1, 2, 3, 4]


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_a_pruned_trial_ends_killed_and_tagged(tracked: Path, tiny_nc: Path, space: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking_sweep, "make_pruner", lambda settings: AlwaysPrune())
    assert invoke(sweep, sweep_args(tiny_nc, space, 2, "--num-epochs", "3")) == 0
    client = MlflowClient()
    (parent,), children = parents_and_children(client)
    trials = children[parent.info.run_id]
    assert len(trials) == 2 and parent.info.status == "FINISHED"
    for run in trials:
        assert run.info.status == "KILLED" and run.data.tags["sweep_state"] == "pruned"
        assert "pruned after epoch 1" in run.data.tags["error"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_rmse_mm")] == [1]  # stopped at once
    assert parent.data.metrics[f"{SWEEP_PREFIX}n_pruned"] == 2
    assert "No trial completed" in parent.data.tags["sweep_note"]
    assert client.search_model_versions("name='convlstm-precipitation'") == []


def test_a_failed_trial_ends_failed_and_tagged_and_the_sweep_goes_on(tracked: Path, tiny_nc: Path, space: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = tracking_training.run_training

    def diverging_second(settings, *args, **kwargs):
        if settings.output_dir.endswith("trial-001"):
            raise TrainingDiverged("The loss became nan.")
        return real(settings, *args, **kwargs)

    monkeypatch.setattr(tracking_training, "run_training", diverging_second)
    assert invoke(sweep, sweep_args(tiny_nc, space, 3)) == 0
    client = MlflowClient()
    (parent,), children = parents_and_children(client)
    states = {r.data.tags["sweep_trial"]: (r.info.status, r.data.tags["sweep_state"]) for r in children[parent.info.run_id]}
    assert states == {"0": ("FINISHED", "complete"), "1": ("FAILED", "failed"), "2": ("FINISHED", "complete")}
    assert parent.info.status == "FINISHED" and parent.data.metrics[f"{SWEEP_PREFIX}n_failed"] == 1


def test_both_experiments_get_a_study_and_parent_each_with_the_same_budget(tracked: Path, tiny_nc: Path,
                                                                           space: Path) -> None:
    assert invoke(sweep, sweep_args(tiny_nc, space, 2, "--experiments", "both")) == 0
    client = MlflowClient()
    parents, children = parents_and_children(client)
    assert sorted(p.data.tags["experiment_type"] for p in parents) == ["baseline", "upstream"]
    assert sorted(p.data.tags["sweep_study"] for p in parents) == ["e-baseline", "e-upstream"]
    for parent in parents:
        trials = children[parent.info.run_id]
        assert len(trials) == 2 and {r.data.tags["experiment_type"] for r in trials} == {parent.data.tags["experiment_type"]}
        assert parent.data.params["include_upstream"] == str(parent.data.tags["experiment_type"] == "upstream").lower()
    assert {run.info.status for run in all_runs(client)} == {"FINISHED"}
    assert len(client.search_model_versions("name='convlstm-precipitation'")) == 2


def test_a_bad_space_file_is_refused_before_any_run(tracked: Path, tiny_nc: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tracked / "bad.yaml").write_text("kernel_size: {choices: [3, 4]}\n")
    assert invoke(sweep, sweep_args(tiny_nc, tracked / "bad.yaml", 3)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--space" in errors[0] and "kernel_size value 4 is not accepted" in errors[0]
    assert all_runs(MlflowClient()) == []


def test_both_experiments_check_the_upstream_region_before_the_baseline_study(tracked: Path, tiny_nc: Path, space: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    outside = ["--upstream-lon-min", "20", "--upstream-lon-max", "40"]  # west of downstream, outside the data
    assert invoke(sweep, sweep_args(tiny_nc, space, 2, "--experiments", "both", *outside)) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "upstream" in errors[0], errors
    assert all_runs(MlflowClient()) == []  # no study was started


@pytest.mark.slow
def test_a_killed_sweep_resumes(tracked: Path, tiny_nc: Path, space: Path) -> None:
    """SIGKILL during trial 1; the same command again fails that trial (and its run) and completes the study."""
    command = [sys.executable, "-m", "entrypoints.sweep",
               *map(str, sweep_args(tiny_nc, space, 3, "--num-epochs", "6", "--heartbeat-s", "1"))]
    env = subprocess_env(tracked)
    sweep_dir = tracked / "sweeps" / "e-baseline"
    with open(tracked / "first.log", "w") as log:
        process = subprocess.Popen(command, cwd=tracked, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not (sweep_dir / "trial-001" / "last.pt").exists():  # trial 1 has trained an epoch: mid-trial
            assert process.poll() is None and time.monotonic() < deadline, (tracked / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    client = MlflowClient()
    (parent,), children = parents_and_children(client)
    assert parent.info.status == "RUNNING"  # SIGKILL cannot be caught
    time.sleep(2.5)  # past the heartbeat's grace period (2 × 1 s): the trial is stale
    done = subprocess.run(command, cwd=tracked, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="e-baseline", storage=f"sqlite:///{tracked / 'sweeps' / 'optuna.db'}")
    states = [trial.state for trial in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                      optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.COMPLETE]
    (again,), children = parents_and_children(client)
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"  # the same parent
    runs = {r.data.tags["sweep_trial"]: r for r in children[again.info.run_id]}
    assert (runs["1"].info.status, runs["1"].data.tags["sweep_state"]) == ("FAILED", "failed")
    assert all(runs[n].info.status == "FINISHED" for n in ("0", "2", "3"))
    assert "RUNNING" not in {run.info.status for run in all_runs(client)}
    assert again.data.metrics[f"{SWEEP_PREFIX}n_complete"] == 3 and again.data.metrics[f"{SWEEP_PREFIX}n_failed"] == 1


def sweep_command(tiny_nc: Path, space: Path, n_trials: int, *extra: object) -> list[str]:
    return [sys.executable, "-m", "entrypoints.sweep", *map(str, sweep_args(tiny_nc, space, n_trials, *extra))]


@pytest.mark.slow
def test_two_sweep_processes_share_one_study_and_one_parent(tracked: Path, tiny_nc: Path, space: Path) -> None:
    """Started together on a new study: one parent, the budget shared (no extra trial), different values drawn,
    trials trained at the same time, the parent ended FINISHED by the last process with the whole summary."""
    command, env = sweep_command(tiny_nc, space, 4, "--num-epochs", "2"), subprocess_env(tracked)
    processes = [subprocess.Popen(command, cwd=tracked, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], "\n".join(out[-2000:] for out in outputs)
    study = optuna.load_study(study_name="e-baseline", storage=f"sqlite:///{tracked / 'sweeps' / 'optuna.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 4
    client = MlflowClient()
    (parent,), children = parents_and_children(client)
    trials = children[parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.metrics[f"{SWEEP_PREFIX}n_complete"] == 4
    assert sorted(int(r.data.tags["sweep_trial"]) for r in trials) == [0, 1, 2, 3]
    assert {r.info.status for r in all_runs(client)} == {"FINISHED"}
    assert len({r.data.params["learning_rate"] for r in trials}) == 4  # the processes did not propose the same values
    spans = sorted((r.info.start_time, r.info.end_time) for r in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))  # two trials trained at once
    table = json.loads(Path(client.download_artifacts(parent.info.run_id, TRIALS_TABLE, str(tracked))).read_text())
    assert len(table["data"]) == 4


@pytest.mark.slow
def test_mlflow_run_sweep_makes_its_own_run_the_parent(tracked: Path, tiny_nc: Path, space: Path) -> None:
    params = {"data": tiny_nc, "output_dir": tracked / "sweeps", "hidden_channels": "4,8", "batch_size": 8,
              "num_epochs": 1, "visualize": "false", "space": space, "n_trials": 2, "include_upstream": "true"}
    done = mlflow_run(tracked, "sweep", params, "e")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient()
    (parent,), children = parents_and_children(client)
    assert parent.data.tags["mlflow.project.entryPoint"] == "sweep"  # the launcher's own run
    assert parent.info.run_name.startswith("upstream-sweep-") and parent.data.tags["sweep_study"] == "e-upstream"
    assert parent.data.params["n_trials"] == "2" and parent.data.tags["best_run_id"] in {
        r.info.run_id for r in children[parent.info.run_id]}
    assert len(children[parent.info.run_id]) == 2 and {r.info.status for r in all_runs(client)} == {"FINISHED"}

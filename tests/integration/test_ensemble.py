"""Seeds: ``train --seeds`` gives one parent run with a FINISHED child training run per seed (distinct seeds,
different weights, the parent's summary), a failing seed fails its child and the parent naming the seed, and
``compare`` on two ensembles (parent runs or comma-separated runs) scores the ensemble means and reports the
difference over seeds. Tiny models, one epoch, two seeds: seconds a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from convlstm.checkpoint import BEST_NAME, load_checkpoint
from convlstm.commands.compare import compare as compare_command
from convlstm.commands.train import train
from convlstm.errors import TrackingError, TrainingDiverged
from convlstm.evaluation.comparison import compare, ensemble_mean, inputs_from_models
from convlstm.evaluation.report import REPORT_NAME, SEEDS_NAME
from convlstm.forecast import load_forecast_model
from convlstm.tracking import training as tracking_training
from convlstm.tracking.ensemble import ENSEMBLE_PREFIX, SEEDS_TABLE
from convlstm.tracking.reports import METRIC_PREFIX, latest_training_runs
from convlstm.tracking.reports import SEEDS_TABLE as COMPARE_SEEDS_TABLE
from convlstm.tracking.uris import resolve_members
from tests.integration.workspace import TINY_ARGS, all_runs, artifact_paths, invoke, mlflow_run, tracking_environment

SEEDS = (0, 1)
N_BOOT = 200


def children(client: MlflowClient, parent) -> list:
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return sorted(runs, key=lambda run: int(run.data.tags["seed"]))


def load_table(client: MlflowClient, run_id: str, name: str, tmp: Path) -> pd.DataFrame:
    return pd.read_json(Path(client.download_artifacts(run_id, name, str(tmp))), orient="split")


@pytest.fixture(scope="module")
def ensembles(tiny_nc: Path, empty_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A baseline and an upstream ensemble of two seeds each, in one tracking store: ``(root, {kind: parent run})``."""
    root = tmp_path_factory.mktemp("ensembles")
    shutil.copyfile(empty_store, root / "mlflow.db")
    parents = {}
    with pytest.MonkeyPatch.context() as mp, tracking_environment(root, mp):
        for kind, flag in (("baseline", "false"), ("upstream", "true")):
            args = ["--data", tiny_nc, "--output-dir", root / kind, *TINY_ARGS, "--include-upstream", flag,
                    "--seeds", ",".join(map(str, SEEDS)), "--experiment-name", "e"]
            assert invoke(train, args) == 0, kind
        client = MlflowClient()
        for run in all_runs(client):
            if run.data.tags.get("run_type") == "ensemble":
                parents[run.data.tags["experiment_type"]] = run
    return root, parents


def test_an_ensemble_is_one_parent_with_a_finished_child_per_seed(ensembles, tmp_path: Path) -> None:
    root, parents = ensembles
    with pytest.MonkeyPatch.context() as mp, tracking_environment(root, mp):
        client = MlflowClient()
        assert len(all_runs(client)) == 2 * (1 + len(SEEDS))
        for kind, parent in parents.items():
            assert parent.info.status == "FINISHED"
            assert parent.data.params["seeds"] == parent.data.tags["seeds"] == "0,1"
            assert parent.data.params["include_upstream"] == str(kind == "upstream").lower()
            runs = children(client, parent)
            assert [run.info.status for run in runs] == ["FINISHED"] * len(SEEDS)
            assert [run.data.params["seed"] for run in runs] == ["0", "1"]
            assert all(run.data.tags["run_type"] == "training" and run.data.params["seeds"] == "none" for run in runs)
            assert all(run.info.experiment_id == parent.info.experiment_id for run in runs)
            assert {"checkpoints/best_model.pt", "training.log"} <= artifact_paths(client, runs[0].info.run_id)
            # different seeds, different weights
            weights = [load_checkpoint(root / kind / f"seed-{seed}" / BEST_NAME)["model_state_dict"] for seed in SEEDS]
            assert any(not torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
            # the parent's summary: one row per seed, their mean and spread
            table = load_table(client, parent.info.run_id, SEEDS_TABLE, tmp_path)
            assert list(table["seed"]) == list(SEEDS)
            assert list(table["run_id"]) == [run.info.run_id for run in runs]
            test_rmse = [run.data.metrics["test_rmse_mm"] for run in runs]
            assert table["test_rmse_mm"].tolist() == pytest.approx(test_rmse)
            metrics = parent.data.metrics
            assert metrics[f"{ENSEMBLE_PREFIX}test_rmse_mm_mean"] == pytest.approx(sum(test_rmse) / 2)
            assert metrics[f"{ENSEMBLE_PREFIX}test_rmse_mm_std"] == pytest.approx(pd.Series(test_rmse).std())
            assert "ensemble.log" in artifact_paths(client, parent.info.run_id)


def test_compare_with_no_runs_named_never_picks_a_seed_of_an_ensemble(ensembles) -> None:
    root, _parents = ensembles
    with pytest.MonkeyPatch.context() as mp, tracking_environment(root, mp):
        with pytest.raises(TrackingError, match="seeds of an ensemble and sweep trials are not picked"):
            latest_training_runs("e")  # only seeds are finished training runs here


def test_a_failing_seed_fails_its_child_and_the_parent_naming_the_seed(tracked: Path, tiny_nc: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    real = tracking_training.run_training

    def diverging_seed_one(settings, *args, **kwargs):
        if settings.model.seed == 1:
            raise TrainingDiverged("The loss became nan.")
        return real(settings, *args, **kwargs)

    monkeypatch.setattr(tracking_training, "run_training", diverging_seed_one)
    args = ["--data", tiny_nc, "--output-dir", "out", *TINY_ARGS, "--seeds", "0", "1", "2"]
    assert invoke(train, args) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error")]
    assert errors == ["Error: seed 1: The loss became nan."]
    runs = all_runs(MlflowClient())
    (parent,) = [run for run in runs if run.data.tags.get("run_type") == "ensemble"]
    assert parent.info.status == "FAILED" and "seed 1" in parent.data.tags["error"]
    seeds = {run.data.tags["seed"]: run.info.status for run in children(MlflowClient(), parent)}
    assert seeds == {"0": "FINISHED", "1": "FAILED"}  # the first failure stops the ensemble
    assert "RUNNING" not in {run.info.status for run in runs}


def test_resume_with_several_seeds_is_refused_before_any_run(tracked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(train, ["--resume", "abc", "--seeds", "0,1"]) == 2
    assert "--resume continues one run, not an ensemble" in capsys.readouterr().err
    assert all_runs(MlflowClient()) == []


def test_compare_two_ensembles_reports_the_difference_over_seeds(ensembles, tiny_nc: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    root, parents = ensembles
    out = tmp_path / "compare"
    with pytest.MonkeyPatch.context() as mp, tracking_environment(root, mp):
        client = MlflowClient()
        members = {kind: [run.info.run_id for run in children(client, parent)] for kind, parent in parents.items()}
        # a parent run and its children named one by one are the same members, in the same order
        assert resolve_members(parents["baseline"].info.run_id) == members["baseline"]
        assert resolve_members(",".join(members["upstream"])) == members["upstream"]
        code = invoke(compare_command, ["--baseline", parents["baseline"].info.run_id, "--upstream",
                                        ",".join(members["upstream"]), "--data", tiny_nc, "--n-boot", N_BOOT,
                                        "--output-dir", out])
        assert code == 0
        printed = capsys.readouterr().out
        (run,) = [r for r in all_runs(client) if r.data.tags.get("run_type") == "comparison"]
        assert run.info.status == "FINISHED" and run.info.experiment_id == parents["baseline"].info.experiment_id
        assert run.data.tags["baseline_run_id"] == ",".join(members["baseline"])
        seeds = load_table(client, run.info.run_id, COMPARE_SEEDS_TABLE, tmp_path)
        # the library on the same models gives the same numbers
        models = {kind: [load_forecast_model(root / kind / f"seed-{seed}") for seed in SEEDS] for kind in parents}
        inputs = inputs_from_models(models["baseline"], models["upstream"], tiny_nc)
    metrics = {key.removeprefix(METRIC_PREFIX): value for key, value in run.data.metrics.items()}
    assert list(zip(seeds["baseline_seed"], seeds["upstream_seed"])) == [(0, 0), (1, 1)]  # paired by seed
    assert metrics["seeds_delta_rmse_mm_mean"] == pytest.approx(seeds["delta_rmse_mm"].mean(), abs=1e-9)
    assert metrics["seeds_delta_rmse_mm_min"] == pytest.approx(seeds["delta_rmse_mm"].min(), abs=1e-9)
    assert metrics["seeds_delta_rmse_mm_max"] == pytest.approx(seeds["delta_rmse_mm"].max(), abs=1e-9)
    assert metrics["seeds_delta_rmse_mm_ci_low"] <= metrics["seeds_delta_rmse_mm_ci_high"]
    every = bool((seeds["delta_rmse_mm"] < 0).all())
    assert metrics["seeds_gain_every_seed"] == float(every)
    assert run.data.tags["seed_verdict"].startswith(f"Every seed: {'yes' if every else 'no'}")
    assert run.data.tags["seed_verdict"] in printed and run.data.tags["seed_verdict"] in (out / REPORT_NAME).read_text()
    assert (out / SEEDS_NAME).is_file() and "registered_model" not in run.data.tags
    # each side's forecast is the ensemble mean of its seeds, scored like any model
    for kind in parents:
        mean = ensemble_mean(inputs.members[kind])
        assert float(abs(inputs.forecasts[kind] - mean).max()) == 0.0
    reference = compare(inputs, tmp_path / "library", n_boot=N_BOOT)
    for kind in parents:
        assert metrics[f"{kind}_rmse_mm"] == pytest.approx(float(reference.scores["rmse_mm"].sel(forecast=kind)), abs=1e-6)
    assert metrics["seeds_delta_rmse_mm_ci_low"] == pytest.approx(reference.seeds.low, abs=1e-9)


@pytest.mark.slow
def test_mlflow_run_with_seeds_makes_its_own_run_the_parent(tracked: Path, tiny_nc: Path) -> None:
    params = {"data": tiny_nc, "output_dir": tracked / "out", "hidden_channels": "4,8", "batch_size": 8,
              "num_epochs": 1, "visualize": "false", "seeds": "0,1"}
    done = mlflow_run(tracked, "train", params, "e")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient()
    runs = all_runs(client)
    (parent,) = [run for run in runs if run.data.tags.get("run_type") == "ensemble"]
    assert len(runs) == 3 and {run.info.status for run in runs} == {"FINISHED"}
    assert parent.data.params["seeds"] == "0,1"  # as -P gave it, not shell-quoted
    assert [run.data.params["seed"] for run in children(client, parent)] == ["0", "1"]

"""The ``train`` entry point: what lands in MLflow for the shared pair (baseline trained in process,
upstream through ``mlflow run``), refusals before any work, errors during a run, and (slow) kill and resume.

Tests that need a tracking store of their own copy an empty one (creating one takes seconds of schema
migrations, copying it milliseconds).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import torch
from mlflow.tracking import MlflowClient

from convlstm import atomic
from convlstm.checkpoint import LAST_NAME, load_checkpoint
from convlstm.config import TrainSettings
from convlstm.settings import build, fields_of
from convlstm.commands.train import train
from convlstm.tracking.runs import managed_run
from convlstm.training.experiment import new_run_settings, settings_from_checkpoint
from tests.integration.workspace import (
    EPOCH_METRICS,
    PAIR_ARGS,
    PAIR_EPOCHS,
    TINY_ARGS,
    Workspace,
    all_runs,
    artifact_paths,
    invoke,
    mlflow_run_command,
    run_module,
    steps,
    subprocess_env,
)

ARTIFACTS = {"checkpoints/best_model.pt", "checkpoints/last.pt", "checkpoints/checkpoint_epoch_2.pt", "normalizer.pkl",
             "config.json", "training.log", "loss_curve.png", "precipitation_maps.png"}
#: Every MLproject parameter of the train entry point is a param of every training run, however started.
MLPROJECT_PARAMS = {f.name for f in fields_of(TrainSettings) if f.spec.cli and f.spec.mlproject}
DERIVED_PARAMS = {"input_channels", "input_height", "input_width", "downstream_columns", "data_digest", "data_path",
                  "data_time_start", "data_time_end", "n_levels", "levels", "n_windows_train", "n_windows_val",
                  "n_windows_test", "version_torch", "version_numpy", "version_xarray", "version_convlstm"}


# ---------------------------------------------------------------------------------------------- helpers


def settings_of(args: list[str]) -> TrainSettings:
    """The settings the train command builds from ``args``."""
    return build(TrainSettings, train.make_context("train", args).params)


def names_flag(message: str, flag: str) -> bool:
    """The message names ``--flag`` (or its parameter spelling flag_name, as library messages do)."""
    return flag in message or flag.lstrip("-").replace("-", "_") in message


# ---------------------------------------------------------------------------------------------- the shared pair


@pytest.mark.parametrize("kind", ["baseline", "upstream"])
def test_run_finishes_with_every_setting_and_the_derived_shapes_as_params(pair: Workspace, kind: str) -> None:
    run = pair.client().get_run(pair.run_ids[kind])
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith(f"{kind}-")
    assert run.data.tags["experiment_type"] == kind
    assert run.data.tags["include_upstream"] == str(kind == "upstream").lower()
    assert run.data.tags["stopped_early"] == "false"
    params = run.data.params
    assert {key: value for key, value in params.items() if "'" in value} == {}  # as meant, not shell-quoted
    assert MLPROJECT_PARAMS <= params.keys(), f"not logged: {sorted(MLPROJECT_PARAMS - params.keys())}"
    assert DERIVED_PARAMS <= params.keys(), f"not logged: {sorted(DERIVED_PARAMS - params.keys())}"
    upstream = kind == "upstream"
    width = 12 if upstream else 4
    assert params["include_upstream"] == str(upstream).lower()
    assert {key: params[key] for key in PAIR_ARGS} == PAIR_ARGS
    assert (params["window_size"], params["num_epochs"]) == ("6", str(PAIR_EPOCHS[kind]))
    assert (params["downstream_lon_min"], params["upstream_lon_max"]) == ("110.0", "110.0")
    assert params["data"] == str(pair.tiny) and params["use_amp"] == "true" and params["resume"] == "none"
    assert (params["input_channels"], params["input_height"], params["input_width"]) == ("56", "4", str(width))
    assert params["downstream_columns"] == ("8:12" if upstream else "0:4")
    assert params["data_digest"] == hashlib.sha256(pair.tiny.read_bytes()).hexdigest()[:16]
    assert params["data_time_start"] == "2000-01-01T00"
    assert params["version_torch"] == str(torch.__version__)


@pytest.mark.parametrize("kind", ["baseline", "upstream"])
def test_one_metric_value_per_epoch_test_scores_and_the_checkpoint_history(pair: Workspace, kind: str,
                                                                           tmp_path: Path) -> None:
    client, run_id, epochs = pair.client(), pair.run_ids[kind], PAIR_EPOCHS[kind]
    for key in EPOCH_METRICS:
        assert steps(client, run_id, key) == list(range(1, epochs + 1)), key
    metrics = client.get_run(run_id).data.metrics
    for key in ("test_rmse_mm", "test_mae_mm", "test_loss", "best_val_loss", "best_epoch"):
        assert key in metrics, key
    assert metrics["test_rmse_mm"] > 0 and metrics["test_rmse_mm"] >= metrics["test_mae_mm"]
    assert metrics["epochs_trained"] == epochs
    val_loss = [m.value for m in sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)]
    assert metrics["best_val_loss"] == min(val_loss)
    last = load_checkpoint(client.download_artifacts(run_id, "checkpoints/last.pt", str(tmp_path)))
    assert [row["val_loss"] for row in last["training_state"]["history"]] == val_loss  # MLflow holds what the checkpoint holds
    assert last["training_state"]["epoch"] == epochs and last["run_id"] == run_id  # the final last.pt was uploaded


@pytest.mark.parametrize("kind", ["baseline", "upstream"])
def test_artifacts_log_and_dataset_input(pair: Workspace, kind: str, tmp_path: Path) -> None:
    client, run_id, epochs = pair.client(), pair.run_ids[kind], PAIR_EPOCHS[kind]
    found = artifact_paths(client, run_id)
    assert ARTIFACTS <= found, f"missing: {sorted(ARTIFACTS - found)}"
    assert f"epoch {epochs}/{epochs}" in Path(client.download_artifacts(run_id, "training.log", str(tmp_path))).read_text()
    run = client.get_run(run_id)
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.name == "tiny.nc" and dataset.digest == run.data.params["data_digest"]
    assert str(pair.tiny) in dataset.source
    assert {tag.key: tag.value for tag in dataset_input.tags}.get("mlflow.data.context") == "training"


def test_system_metrics_and_the_same_keys_for_both_experiments(pair: Workspace) -> None:
    baseline, upstream = (pair.client().get_run(pair.run_ids[kind]).data for kind in pair.KINDS)
    assert [key for key in baseline.metrics if key.startswith("system/")], "no system metrics were logged"
    assert baseline.params.keys() == upstream.params.keys()
    own = {key for key in baseline.metrics if not key.startswith("system/")}
    assert own == {key for key in upstream.metrics if not key.startswith("system/")}
    assert (baseline.params["include_upstream"], upstream.params["include_upstream"]) == ("false", "true")


# ---------------------------------------------------------------------------------------------- refusals


REFUSALS = [
    pytest.param(["--include-upstream", "maybe"], "--include-upstream", id="bool"),
    pytest.param(["--batch-size", "0"], "--batch-size", id="batch-size"),
    pytest.param(["--learning-rate", "-1"], "--learning-rate", id="learning-rate"),
    pytest.param(["--train-ratio", "0.9", "--val-ratio", "0.2"], "--train-ratio", id="ratios"),
    pytest.param(["--data", "missing.nc"], "--data", id="missing-data"),
    pytest.param(["--kernel-size", "4"], "--kernel-size", id="even-kernel"),
    pytest.param(["--include-upstream", "--upstream-lon-max", "115"], "--upstream-lon-max", id="overlap"),
    pytest.param(["--hidden-channels", "0"], "--hidden-channels", id="hidden-channels"),
]


def _refusable(tiny_nc: Path, extra: list[str]) -> list[str]:
    """Arguments that would train (briefly) but for ``extra``; later flags win."""
    return ["--data", tiny_nc, "--output-dir", "out", *TINY_ARGS, "--experiment-name", "refused", *extra]


@pytest.mark.parametrize(("extra", "flag"), REFUSALS)
def test_refused_before_any_work(workdir: Path, tiny_nc: Path, capsys: pytest.CaptureFixture[str],
                                 extra: list[str], flag: str) -> None:
    assert invoke(train, _refusable(tiny_nc, extra)) == 2
    err = capsys.readouterr().err
    message = "\n".join(line for line in err.splitlines() if line.startswith("Error"))
    assert message and names_flag(message, flag), err
    assert "Traceback" not in err
    # no run: the tracking store was never even created; and no output directory either
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlruns").exists()
    assert not (workdir / "out").exists() and not (workdir / "outputs").exists()


def test_refusal_fails_the_run_mlflow_run_created(tracked: Path, tiny_nc: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Under ``mlflow run`` the run exists before the script starts (MLFLOW_RUN_ID): a refusal ends it FAILED."""
    client = MlflowClient()
    experiment = client.create_experiment("pending")
    for case in REFUSALS:
        extra, flag = case.values
        run_id = client.create_run(experiment).info.run_id
        monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
        assert invoke(train, _refusable(tiny_nc, extra)) == 2, case.id
        run = client.get_run(run_id)
        assert run.info.status == "FAILED", case.id
        assert names_flag(run.data.tags["error"], flag), (case.id, run.data.tags["error"])
    runs = all_runs(client)
    assert len(runs) == len(REFUSALS)  # none was added
    assert {run.info.status for run in runs} == {"FAILED"}
    capsys.readouterr()


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False), ("1", True), ("0", False),
                                                 ("yes", True), ("no", False), ("True", True), ("FALSE", False)])
def test_include_upstream_accepts_the_usual_boolean_spellings(workdir: Path, value: str, expected: bool) -> None:
    settings = settings_of(["--include-upstream", value, "--output-dir", "out"])
    assert settings.include_upstream is expected
    assert settings.experiment_type == ("upstream" if expected else "baseline")


def test_include_upstream_alone_means_true_and_absent_means_false() -> None:
    assert settings_of(["--include-upstream", "--batch-size", "3"]).include_upstream is True
    assert settings_of([]).include_upstream is False


@pytest.mark.parametrize("args", [["--hidden-channels", "8", "16"], ["--hidden-channels", "8 16"],
                                  ["--hidden-channels", "8", "16", "--batch-size", "3"], ["--hidden-channels=8 16"]],
                         ids=["space-separated", "one-value", "followed-by-option", "equals"])
def test_hidden_channels_spellings(workdir: Path, args: list[str]) -> None:
    settings = settings_of([*args, "--output-dir", "out"])
    assert settings.model.hidden_channels == [8, 16]
    if "--batch-size" in args:
        assert settings.model.batch_size == 3


def test_existing_output_dir_is_refused_without_resume(workdir: Path, tiny_nc: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "out").mkdir()
    (workdir / "out" / "keep.txt").write_text("earlier results")
    assert invoke(train, _refusable(tiny_nc, [])) == 2
    err = capsys.readouterr().err
    assert "--output-dir" in err and "--resume" in err
    assert sorted(path.name for path in (workdir / "out").iterdir()) == ["keep.txt"]
    assert (workdir / "out" / "keep.txt").read_text() == "earlier results"
    assert not (workdir / "mlflow.db").exists()
    # an existing but empty directory is fine
    (workdir / "empty").mkdir()
    assert new_run_settings(settings_of(["--output-dir", "empty"])).output_dir == str((workdir / "empty").resolve())


def test_unknown_resume_target_is_a_clean_error(tracked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(train, ["--resume", "0123456789abcdef0123456789abcdef"]) == 1
    err = capsys.readouterr().err
    assert "--resume 0123456789abcdef0123456789abcdef" in err and "Traceback" not in err
    assert all_runs(MlflowClient()) == []


# ---------------------------------------------------------------------------------------------- errors during a run


@pytest.mark.parametrize("pending", [False, True], ids=["own-run", "mlflow-run-id"])
def test_region_outside_the_data_fails_the_run_with_one_line(tracked: Path, tiny_nc: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str], pending: bool) -> None:
    client = MlflowClient()
    if pending:
        monkeypatch.setenv("MLFLOW_RUN_ID", client.create_run(client.create_experiment("pending")).info.run_id)
    assert invoke(train, ["--data", tiny_nc, "--output-dir", "out", *TINY_ARGS, "--downstream-lon-max", "200"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, err
    assert "110..200" in errors[0] and "lon 70..125" in errors[0] and "--downstream" in errors[0]
    runs = all_runs(client)
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "110..200" in runs[0].data.tags["error"]


def test_diverging_training_fails_the_run_with_one_line(tracked: Path, tiny_nc: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data", tiny_nc, "--output-dir", "out", *TINY_ARGS, "--learning-rate", "1e30", "--gradient-clip-norm", "1e30"]
    assert invoke(train, args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "The loss became" in errors[0], err
    (run,) = all_runs(MlflowClient())
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["error"]
    assert "training.log" in artifact_paths(MlflowClient(), run.info.run_id)


def test_read_only_output_dir_is_refused_in_one_line_before_any_run(workdir: Path, tiny_nc: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """What a read-only folder does to the first file written there (simulated: root ignores chmod)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "TemporaryFile", refuse)
    assert invoke(train, ["--data", tiny_nc, "--output-dir", "out", *TINY_ARGS]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("Error")]
    assert f"Cannot write {workdir / 'out'}: not writable (permission denied)" in line and "--output-dir" in line
    assert all_runs(MlflowClient()) == []  # refused before any run (the store was checked first, so it exists)


def test_disk_full_mid_run_fails_the_run_with_one_line_and_leaves_nothing_partial(tracked: Path, tiny_nc: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # every checkpoint's bytes go to /dev/full, which fails writes with ENOSPC as a full disk does
    monkeypatch.setattr("convlstm.checkpoint.open", lambda path, mode: builtins.open("/dev/full", mode), raising=False)
    assert invoke(train, ["--data", tiny_nc, "--output-dir", "out", *TINY_ARGS]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("Error")]
    assert f"Cannot write {tracked / 'out' / 'best_model.pt'}: No space left on device" in line
    (run,) = all_runs(MlflowClient())
    assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["error"]
    assert not [path.name for path in (tracked / "out").iterdir() if path.suffix in (".pt", ".tmp")]


def test_sigterm_ends_the_run_of_any_command_killed(tracked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """infer and compare run inside ``managed_run`` too: a signal during their run ends it KILLED."""
    @click.command()
    def report() -> None:
        with managed_run(None, "report", "signals", {}):
            os.kill(os.getpid(), signal.SIGTERM)

    assert invoke(report, []) == 143
    (run,) = all_runs(MlflowClient())
    assert run.info.status == "KILLED" and run.data.tags["error"] == "Interrupted: SIGTERM received: stopped."
    assert capsys.readouterr().err.strip().splitlines()[-1] == "SIGTERM received: stopped."


@pytest.mark.slow
def test_sigterm_stops_training_with_last_pt_and_ends_the_run_killed(tmp_path: Path, tiny_nc: Path,
                                                                     empty_store: Path) -> None:
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "entrypoints.train", "--data", str(tiny_nc), "--output-dir", str(out),
               *TINY_ARGS[:-4], "--num-epochs", "50", "--visualize", "false", "--early-stopping-patience", "0"]
    process = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(tmp_path), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:  # until the first epoch is logged
            if EPOCH_LINE.search((out / "training.log").read_text() if (out / "training.log").is_file() else ""):
                process.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    last = out / LAST_NAME
    assert stderr.strip().splitlines()[-1].startswith("SIGTERM received: training stopped")
    assert f"--resume {last}" in stderr
    checkpoint = load_checkpoint(last)
    assert 1 <= checkpoint["training_state"]["epoch"] < 50
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(checkpoint["run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["error"].startswith("Interrupted: SIGTERM received: training stopped")
    assert "training.log" in artifact_paths(client, run.info.run_id)
    resumed, run_id = settings_from_checkpoint(last)  # what --resume starts from
    assert run_id == run.info.run_id and resumed.resume == str(last) and resumed.model.num_epochs == 50


@pytest.mark.slow
def test_without_an_experiment_name_both_ways_land_in_one_experiment_with_params_as_meant(
        tmp_path: Path, tiny_nc: Path, empty_store: Path) -> None:
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    params = {"data": tiny_nc, "hidden_channels": "4,8", "batch_size": 8, "num_epochs": 1, "visualize": "false",
              "early_stopping_patience": 0}
    direct = run_module(tmp_path, "entrypoints.train", "--output-dir", tmp_path / "direct",
                        *[arg for key, value in params.items() for arg in (f"--{key.replace('_', '-')}", value)])
    assert direct.returncode == 0, direct.stderr[-3000:]
    launched = subprocess.run(mlflow_run_command("train", {**params, "output_dir": tmp_path / "launched"}, None),
                              cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]

    runs = all_runs(MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    assert len(runs) == 2 and {run.info.status for run in runs} == {"FINISHED"}
    assert {run.info.experiment_id for run in runs} == {"0"}  # MLflow's Default, as `mlflow run` chooses
    for run in runs:
        assert {key: value for key, value in run.data.params.items() if "'" in value} == {}
        assert (run.data.params["hidden_channels"], run.data.params["resume"]) == ("4,8", "none")
    assert runs[0].data.params.keys() == runs[1].data.params.keys()


# ---------------------------------------------------------------------------------------------- end to end (slow)


EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) ")


@pytest.mark.slow
def test_killed_run_resumes_the_same_mlflow_run(tmp_path: Path, tiny_nc: Path, empty_store: Path) -> None:
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    epochs = 6  # of about 0.3 s each: the kill after epoch 2 comes long before the run could end
    out = tmp_path / "out"
    env = subprocess_env(tmp_path)
    command = [sys.executable, "-m", "entrypoints.train", "--data", str(tiny_nc), "--output-dir", str(out),
               "--include-upstream", "--hidden-channels", "8", "16", "--batch-size", "8", "--num-epochs", str(epochs),
               "--visualize", "false",
               "--early-stopping-patience", "0", "--experiment-name", "kill"]
    with open(tmp_path / "first.log", "w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and process.poll() is None:
                if (out / LAST_NAME).is_file() and load_checkpoint(out / LAST_NAME)["training_state"]["epoch"] >= 2:
                    os.kill(process.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
        finally:
            if process.poll() is None and time.monotonic() >= deadline:
                process.kill()
            process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    checkpoint = load_checkpoint(out / LAST_NAME)
    killed_at = checkpoint["training_state"]["epoch"]
    assert 2 <= killed_at < epochs
    run_id = checkpoint["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: nobody ended it

    resumed = subprocess.run([sys.executable, "-m", "entrypoints.train", "--resume", run_id], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Finished upstream run {run_id}" in resumed.stdout

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the same run, not a new one
    for key in ("train_loss", "val_loss", "val_rmse_mm", "lr"):
        assert steps(client, run_id, key) == list(range(1, epochs + 1)), key  # each epoch once: no gaps, no duplicates
    assert run.data.metrics["epochs_trained"] == epochs
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
    assert [logged[row["epoch"]] for row in checkpoint["training_state"]["history"]] == [
        row["val_loss"] for row in checkpoint["training_state"]["history"]]
    final = load_checkpoint(out / LAST_NAME)["training_state"]
    assert [row["epoch"] for row in final["history"]] == list(range(1, epochs + 1))

    # training.log: the resumed process started from the checkpoint's epoch and trained only the rest
    text = (out / "training.log").read_text()
    assert re.search(rf"Resumed from .*{LAST_NAME} at epoch {killed_at} ", text), text[-3000:]
    after = text.split("Resumed from", 1)[1]
    assert [int(m.group(1)) for m in EPOCH_LINE.finditer(after)] == list(range(killed_at + 1, epochs + 1))
    assert "training.log" in artifact_paths(client, run_id)

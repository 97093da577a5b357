"""The ``train`` entry point: what lands in MLflow, refusals before any work, errors during a run, and
(slow) ``mlflow run`` and kill-and-resume end to end.

Every test has its own working directory (so ``./mlruns`` artifacts land there), its own SQLite
tracking store and demo cache. The in-process tests call ``run_cli(train, argv)`` as ``python -m
entrypoints.train`` does; the slow ones start real processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click
import mlflow
import mlflow.tracking._tracking_service.utils as tracking_utils
import pytest
import torch
from mlflow.tracking import MlflowClient

import convlstm.tracking
from conftest import REPO, subprocess_env
from convlstm.cli import run_cli
from convlstm.data.demo import write_demo_dataset
from convlstm.training.checkpoint import LAST_NAME, load_checkpoint
from entrypoints.train import build_options, train

TINY_ARGS = ["--hidden-channels", "4", "8", "--batch-size", "8", "--num-epochs", "1"]
EPOCH_METRICS = ("train_loss", "val_loss", "val_rmse_mm", "val_mae_mm", "lr", "epoch_time_s", "train_step_time_s",
                 "val_time_s")
ARTIFACTS = {"checkpoints/best_model.pt", "checkpoints/last.pt", "normalizer.pkl", "config.json", "training.log",
             "loss_curve.png", "precipitation_maps.png"}
#: Flags that choose how to run or where to record rather than what is trained: not logged as params.
NOT_PARAMS = {"resume", "experiment_name", "registered_model_name", "log_level"}
#: Every real option of the command (click-option-group adds hidden placeholder options for group titles).
CLI_SETTINGS = {param.name for param in train.params if isinstance(param, click.Option) and not param.hidden}
DERIVED_PARAMS = {"input_channels", "input_height", "input_width", "downstream_columns", "data_digest", "data_path",
                  "data_time_start", "data_time_end", "n_levels", "levels", "n_windows_train", "n_windows_val",
                  "n_windows_test", "version_torch", "version_numpy", "version_xarray", "version_convlstm"}


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny_nc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5° demo data: 4 × 12 cells (downstream 4 columns, upstream 8), 73 twelve-hourly steps."""
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "tiny.nc", years=0.1, resolution=5.0)


@contextmanager
def tracking_environment(directory: Path, mp: pytest.MonkeyPatch):
    """Run from ``directory`` against its own store; afterwards no run stays active, logging is restored."""
    mp.chdir(directory)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{directory}/mlflow.db")
    mp.setenv("CONVLSTM_CACHE_DIR", str(directory / "cache"))
    mp.setattr(tracking_utils, "_tracking_uri", None)  # in case anything called mlflow.set_tracking_uri
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        mp.delenv(name, raising=False)
    # training_run sets this variable process-wide: make sure it is removed again afterwards
    mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    mp.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster than 2 threads on a busy 2-core machine
    try:
        yield directory
    finally:
        while mlflow.active_run():
            mlflow.end_run("FAILED")
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty SQLite tracking store. Creating one takes seconds (schema migrations), copying
    it milliseconds: each test that needs a store gets its own copy."""
    directory = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp, tracking_environment(directory, mp):
        MlflowClient().search_experiments()
    return directory / "mlflow.db"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh working directory and tracking location; no store exists yet."""
    with tracking_environment(tmp_path, monkeypatch):
        yield tmp_path


@pytest.fixture
def tracked(workdir: Path, empty_store: Path) -> Path:
    """``workdir`` with its own (empty) tracking store."""
    shutil.copyfile(empty_store, workdir / "mlflow.db")
    assert all_runs(MlflowClient()) == []
    return workdir


def invoke(args: list[str]) -> int:
    """``python -m entrypoints.train ARGS`` in this process; the exit code."""
    try:
        run_cli(train, [str(arg) for arg in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def all_runs(client: MlflowClient) -> list:
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


def names_flag(message: str, flag: str) -> bool:
    """The message names ``--flag`` (or its parameter spelling flag_name, as library messages do)."""
    return flag in message or flag.lstrip("-").replace("-", "_") in message


# ---------------------------------------------------------------------------------------------- a baseline and an upstream run


@pytest.fixture(scope="module")
def compared(tiny_nc: Path, empty_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """A baseline run (2 epochs) and an upstream run (3 epochs) in one experiment, through the CLI."""
    directory = tmp_path_factory.mktemp("compare")
    shutil.copyfile(empty_store, directory / "mlflow.db")
    runs = {}
    with pytest.MonkeyPatch.context() as mp, tracking_environment(directory, mp):
        # System metrics are sampled every SYSTEM_METRICS_INTERVAL_S (5 s) and only a full interval is
        # logged, so a run of a few seconds may have none; sample faster here to check they are recorded.
        mp.setattr(convlstm.tracking, "SYSTEM_METRICS_INTERVAL_S", 0.25)
        for kind, upstream, epochs in (("baseline", "false", 2), ("upstream", "true", 3)):
            code = invoke(["--data", tiny_nc, "--output-dir", directory / kind, "--include-upstream", upstream,
                           "--hidden-channels", "4", "8", "--batch-size", "8", "--num-epochs", epochs,
                           "--learning-rate", "0.002", "--seed", "3", "--checkpoint-frequency", "2",
                           "--early-stopping-patience", "0", "--experiment-name", "compare"])
            assert code == 0, f"{kind} run exited {code}"
        client = MlflowClient()
        experiment = client.get_experiment_by_name("compare")
        for run in client.search_runs([experiment.experiment_id]):
            kind = run.data.tags["experiment_type"]
            download = directory / f"{kind}-artifacts"
            download.mkdir()
            runs[kind] = {
                "run": run,
                "epochs": {"baseline": 2, "upstream": 3}[kind],
                "steps": {key: steps(client, run.info.run_id, key) for key in EPOCH_METRICS},
                "val_loss": [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_loss"), key=lambda m: m.step)],
                "artifacts": artifact_paths(client, run.info.run_id),
                "last_artifact": load_checkpoint(client.download_artifacts(run.info.run_id, "checkpoints/last.pt", str(download))),
                "log": Path(client.download_artifacts(run.info.run_id, "training.log", str(download))).read_text(),
            }
    assert sorted(runs) == ["baseline", "upstream"]
    return runs


@pytest.mark.parametrize("kind", ["baseline", "upstream"])
def test_run_finishes_with_every_setting_and_the_derived_shapes_as_params(compared, tiny_nc: Path, kind: str) -> None:
    run = compared[kind]["run"]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith(f"{kind}-")
    assert run.data.tags["experiment_type"] == kind
    assert run.data.tags["include_upstream"] == str(kind == "upstream").lower()
    assert run.data.tags["stopped_early"] == "false"
    params = run.data.params
    cli_settings = CLI_SETTINGS - NOT_PARAMS
    assert {"include_upstream", "hidden_channels", "learning_rate", "batch_size", "window_size", "downstream_lon_min",
            "upstream_lon_max", "seed", "data", "output_dir", "use_amp", "nan_policy"} <= cli_settings
    assert cli_settings <= params.keys(), f"not logged: {sorted(cli_settings - params.keys())}"
    assert DERIVED_PARAMS <= params.keys(), f"not logged: {sorted(DERIVED_PARAMS - params.keys())}"
    upstream = kind == "upstream"
    width = 12 if upstream else 4
    assert params["include_upstream"] == str(upstream).lower()
    assert params["hidden_channels"] == "4 8"
    assert (params["batch_size"], params["learning_rate"], params["seed"]) == ("8", "0.002", "3")
    assert (params["window_size"], params["num_epochs"]) == ("6", str(compared[kind]["epochs"]))
    assert (params["downstream_lon_min"], params["upstream_lon_max"]) == ("110.0", "110.0")
    assert params["data"] == str(tiny_nc)
    assert (params["input_channels"], params["input_height"], params["input_width"]) == ("56", "4", str(width))
    assert params["downstream_columns"] == ("8:12" if upstream else "0:4")
    assert params["data_digest"] == hashlib.sha256(tiny_nc.read_bytes()).hexdigest()[:16]
    assert params["data_time_start"] == "2000-01-01T00"
    assert params["version_torch"] == str(torch.__version__)


@pytest.mark.parametrize("kind", ["baseline", "upstream"])
def test_one_metric_value_per_epoch_and_test_scores(compared, kind: str) -> None:
    run, epochs = compared[kind]["run"], compared[kind]["epochs"]
    for key in EPOCH_METRICS:
        assert compared[kind]["steps"][key] == list(range(1, epochs + 1)), key
    metrics = run.data.metrics
    for key in ("test_rmse_mm", "test_mae_mm", "test_loss", "best_val_loss", "best_epoch"):
        assert key in metrics, key
    assert metrics["test_rmse_mm"] > 0 and metrics["test_rmse_mm"] >= metrics["test_mae_mm"]
    assert metrics["epochs_trained"] == epochs
    assert metrics["best_val_loss"] == min(compared[kind]["val_loss"])
    # MLflow holds what the checkpoint holds
    history = compared[kind]["last_artifact"]["training_state"]["history"]
    assert [row["val_loss"] for row in history] == compared[kind]["val_loss"]


@pytest.mark.parametrize("kind", ["baseline", "upstream"])
def test_artifacts_dataset_input_and_system_metrics(compared, tiny_nc: Path, kind: str) -> None:
    run, epochs = compared[kind]["run"], compared[kind]["epochs"]
    expected = ARTIFACTS | ({"checkpoints/checkpoint_epoch_2.pt"} if epochs >= 2 else set())
    assert expected <= compared[kind]["artifacts"], f"missing: {sorted(expected - compared[kind]['artifacts'])}"
    assert compared[kind]["last_artifact"]["training_state"]["epoch"] == epochs  # the final last.pt was uploaded
    assert compared[kind]["last_artifact"]["run_id"] == run.info.run_id
    assert f"epoch {epochs}/{epochs}" in compared[kind]["log"]

    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.name == "tiny.nc" and dataset.digest == run.data.params["data_digest"]
    assert str(tiny_nc) in dataset.source
    assert {tag.key: tag.value for tag in inputs[0].tags}.get("mlflow.data.context") == "training"

    system = [key for key in run.data.metrics if key.startswith("system/")]
    assert system, "no system metrics were logged"


def test_baseline_and_upstream_runs_have_the_same_param_and_metric_keys(compared) -> None:
    baseline, upstream = compared["baseline"]["run"].data, compared["upstream"]["run"].data
    assert baseline.params.keys() == upstream.params.keys()
    assert baseline.metrics.keys() == upstream.metrics.keys()
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
    assert invoke(_refusable(tiny_nc, extra)) == 2
    err = capsys.readouterr().err
    message = "\n".join(line for line in err.splitlines() if line.startswith("Error:"))
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
        assert invoke(_refusable(tiny_nc, extra)) == 2, case.id
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
    ctx = train.make_context("train", ["--include-upstream", value, "--output-dir", "out"])
    assert ctx.params["include_upstream"] is expected
    options = build_options(ctx.params)
    assert options.include_upstream is expected
    assert options.experiment_type == ("upstream" if expected else "baseline")


def test_include_upstream_alone_means_true_and_absent_means_false() -> None:
    assert train.make_context("train", ["--include-upstream", "--batch-size", "3"]).params["include_upstream"] is True
    assert train.make_context("train", []).params["include_upstream"] is False


@pytest.mark.parametrize("args", [["--hidden-channels", "8", "16"], ["--hidden-channels", "8 16"],
                                  ["--hidden-channels", "8", "16", "--batch-size", "3"], ["--hidden-channels=8 16"]],
                         ids=["space-separated", "one-value", "followed-by-option", "equals"])
def test_hidden_channels_spellings(workdir: Path, args: list[str]) -> None:
    ctx = train.make_context("train", [*args, "--output-dir", "out"])
    assert ctx.params["hidden_channels"] == [8, 16]
    assert build_options(ctx.params).config.hidden_channels == [8, 16]
    if "--batch-size" in args:
        assert ctx.params["batch_size"] == 3


def test_existing_output_dir_is_refused_without_resume(workdir: Path, tiny_nc: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "out").mkdir()
    (workdir / "out" / "keep.txt").write_text("earlier results")
    assert invoke(_refusable(tiny_nc, [])) == 2
    err = capsys.readouterr().err
    assert "--output-dir" in err and "--resume" in err
    assert sorted(path.name for path in (workdir / "out").iterdir()) == ["keep.txt"]
    assert (workdir / "out" / "keep.txt").read_text() == "earlier results"
    assert not (workdir / "mlflow.db").exists()
    # an existing but empty directory is fine
    (workdir / "empty").mkdir()
    assert build_options(train.make_context("train", ["--output-dir", "empty"]).params).output_dir == (workdir / "empty").resolve()


def test_unknown_resume_target_is_a_clean_error(tracked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert invoke(["--resume", "0123456789abcdef0123456789abcdef"]) == 1
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
    assert invoke(["--data", tiny_nc, "--output-dir", "out", *TINY_ARGS, "--downstream-lon-max", "200"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, err
    assert "110..200" in errors[0] and "lon 70..125" in errors[0] and "--downstream" in errors[0]
    runs = all_runs(client)
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "110..200" in runs[0].data.tags["error"]


def test_diverging_training_fails_the_run_with_one_line(tracked: Path, tiny_nc: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data", tiny_nc, "--output-dir", "out", *TINY_ARGS, "--learning-rate", "1e30", "--gradient-clip-norm", "1e30"]
    assert invoke(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "The loss became" in errors[0], err
    (run,) = all_runs(MlflowClient())
    assert run.info.status == "FAILED" and "TrainingDiverged" in run.data.tags["error"]
    assert "training.log" in artifact_paths(MlflowClient(), run.info.run_id)


# ---------------------------------------------------------------------------------------------- end to end (slow)


def store(directory: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{directory}/mlflow.db")


def _mlflow_run(directory: Path, *params: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
            "--experiment-name", "t"]
    for param in params:
        args += ["-P", param]
    return subprocess.run(args, cwd=directory, env=subprocess_env(directory), capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
def test_mlflow_run_upstream_then_a_refused_one(tmp_path: Path, tiny_nc: Path, empty_store: Path) -> None:
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    done = _mlflow_run(tmp_path, f"data={tiny_nc}", f"output_dir={tmp_path / 'out'}", "include_upstream=true",
                       "hidden_channels=4 8", "num_epochs=2", "batch_size=8")
    assert done.returncode == 0, done.stderr[-3000:]
    client = store(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["experiment_type"] == "upstream" and run.info.run_name.startswith("upstream-")
    # `mlflow run` logs the -P values itself before the script starts, shell-quoted ('4 8'); the script
    # adds only the params not there yet, such as the derived shapes
    assert run.data.params["hidden_channels"].strip("'") == "4 8"
    assert (run.data.params["input_width"], run.data.params["downstream_columns"]) == ("12", "8:12")
    assert steps(client, run.info.run_id, "val_loss") == [1, 2]
    assert {"checkpoints/last.pt", "training.log"} <= artifact_paths(client, run.info.run_id)
    assert (tmp_path / "mlruns").is_dir()  # artifacts land under the working directory, not the project

    refused = _mlflow_run(tmp_path, f"data={tiny_nc}", f"output_dir={tmp_path / 'out2'}", "batch_size=0")
    assert refused.returncode != 0
    assert "--batch-size" in refused.stderr
    runs = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert len(runs) == 2
    assert "RUNNING" not in {r.info.status for r in runs}
    (failed,) = [r for r in runs if r.info.run_id != run.info.run_id]
    assert failed.info.status == "FAILED" and "--batch-size" in failed.data.tags.get("error", "")
    assert not (tmp_path / "out2").exists()


@pytest.fixture(scope="module")
def medium_nc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2.5° demo data over ~110 days: epochs of the upstream model take a good fraction of a second."""
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "medium.nc", years=0.3, resolution=2.5)


EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) ")


@pytest.mark.slow
def test_killed_run_resumes_the_same_mlflow_run(tmp_path: Path, medium_nc: Path, empty_store: Path) -> None:
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    epochs = 8
    out = tmp_path / "out"
    env = subprocess_env(tmp_path)
    command = [sys.executable, "-m", "entrypoints.train", "--data", str(medium_nc), "--output-dir", str(out),
               "--include-upstream", "--hidden-channels", "8", "16", "--batch-size", "8", "--num-epochs", str(epochs),
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
    client = store(tmp_path)
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

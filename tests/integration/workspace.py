"""A working directory with its own tracking store and demo cache, entry points run in it (in this process
or as the real commands), and the tiny baseline/upstream pair the integration tests share.

The pair is trained once per test session, in the background from the moment the session starts
(``tests/conftest.py``): the baseline with ``python -m entrypoints.train``, the upstream model with
``mlflow run . -e train`` (the MLproject path end to end), side by side. Tests read it; a test that
changes the tracking store or the registry works on :meth:`Workspace.copy`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import mlflow.tracking._tracking_service.utils as tracking_utils
import pytest
from mlflow.tracking import MlflowClient

from convlstm.cli import run_cli
from convlstm.config import DEFAULT_REGISTERED_NAME
from tests.helpers import REPO

#: The pair's training flags: tiny (4 × 12 cells at 5°, 146 steps), a few seconds an epoch.
PAIR_ARGS = {"hidden_channels": "4,8", "batch_size": "8", "learning_rate": "0.002", "seed": "3",
             "checkpoint_frequency": "2", "early_stopping_patience": "0"}
PAIR_EPOCHS = {"baseline": 2, "upstream": 3}


def subprocess_env(directory: Path) -> dict[str, str]:
    """Environment for entry-point subprocesses: a private tracking store, demo cache and temp dir,
    the repo importable, this venv's executables first (one torch thread, from ``tests/conftest.py``)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{directory}/mlflow.db",
        "CONVLSTM_CACHE_DIR": str(directory / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "TMPDIR": str(directory / "tmp"),  # downloaded models land here, not in the machine's /tmp
    })
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    return env


def run_module(directory: Path, module: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` from ``directory`` against its tracking store."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=directory, env=subprocess_env(directory),
                          capture_output=True, text=True, timeout=timeout, check=False)


def mlflow_run_args(entry_point: str, params: dict[str, object], experiment: str | None = "t") -> list[str]:
    """``run <repo> -e ENTRY_POINT --env-manager local --experiment-name EXPERIMENT -P k=v ...``, the arguments of
    ``mlflow`` (no ``--experiment-name`` for None)."""
    args = ["run", str(REPO), "-e", entry_point, "--env-manager", "local",
            *(["--experiment-name", experiment] if experiment else [])]
    for key, value in params.items():
        args += ["-P", f"{key}={value}"]
    return args


def mlflow_run_command(entry_point: str, params: dict[str, object], experiment: str | None = "t") -> list[str]:
    """``python -m mlflow`` with :func:`mlflow_run_args`."""
    return [sys.executable, "-m", "mlflow", *mlflow_run_args(entry_point, params, experiment)]


def mlflow_run(directory: Path, entry_point: str, params: dict[str, object], experiment: str | None = "t",
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """:func:`mlflow_run_command` run from ``directory`` against its tracking store."""
    return subprocess.run(mlflow_run_command(entry_point, params, experiment), cwd=directory,
                          env=subprocess_env(directory), capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def tracking_environment(directory: Path, mp: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run from ``directory`` against its own store; afterwards no run stays active and logging is restored."""
    mp.chdir(directory)
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{directory}/mlflow.db")
    mp.setenv("CONVLSTM_CACHE_DIR", str(directory / "cache"))
    mp.setattr(tracking_utils, "_tracking_uri", None)  # in case anything called mlflow.set_tracking_uri
    mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)  # an earlier test's set_experiment, another store
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
        mp.delenv(name, raising=False)
    # managed_run sets this variable process-wide: make sure it is removed again afterwards
    mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    mp.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
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


def invoke(command: object, args: list[object]) -> int:
    """An entry point's command in this process, as ``python -m entrypoints.<name> ARGS`` runs it; the exit code."""
    try:
        run_cli(command, [str(arg) for arg in args])  # type: ignore[arg-type]
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


#: Where the controller of a test session trains the pair in the background (see ``tests/conftest.py``).
PAIR_ENV = "CONVLSTM_TEST_PAIR"
READY, FAILED = "run_ids.json", "failed.txt"


def train_pair(root: Path) -> None:
    """Train the pair in ``root`` and write its run ids (or why it failed) there: the background job."""
    try:
        workspace = Workspace(root).train()
    except BaseException as exc:
        (root / FAILED).write_text(f"{type(exc).__name__}: {exc}")
        raise
    (root / READY).write_text(json.dumps(workspace.run_ids))


def start_pair(root: Path) -> subprocess.Popen:
    """Start :func:`train_pair` in a process of its own (its output goes to ``root/pair.log``)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "pair.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "tests.integration.workspace", str(root)], cwd=REPO,
                                env=subprocess_env(root), stdout=log, stderr=subprocess.STDOUT)


def wait_for_pair(root: Path, timeout_s: float = 600.0) -> "Workspace":
    """The pair trained in ``root`` once its run ids are written; fails with the reason if training failed."""
    deadline = time.monotonic() + timeout_s
    while not (root / READY).is_file():
        if (root / FAILED).is_file() or time.monotonic() > deadline:
            log = (root / "pair.log").read_text()[-3000:] if (root / "pair.log").is_file() else ""
            raise RuntimeError(f"training the test pair failed or timed out in {root}:\n{log}")
        time.sleep(0.2)
    workspace = Workspace(root)
    workspace.run_ids = json.loads((root / READY).read_text())
    return workspace


class Workspace:
    """A temporary directory with tiny demo data, its own tracking store, and (after :meth:`train`) the
    tiny baseline and upstream models."""

    EXPERIMENT = "t"
    KINDS = ("baseline", "upstream")

    def __init__(self, root: Path, tiny: Path | None = None) -> None:
        self.root = root
        self.tiny = tiny or root / "tiny.nc"
        self.train_dirs = {kind: root / f"train-{kind}" for kind in self.KINDS}
        self.run_ids: dict[str, str] = {}

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root}/mlflow.db"

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        return self.client().get_experiment_by_name(name).experiment_id

    def runs(self, filter_string: str = "", experiment: str = EXPERIMENT) -> list:
        return self.client().search_runs([self.experiment_id(experiment)], filter_string, max_results=1000)

    def model_version(self, kind: str) -> str:
        (version,) = self.client().search_model_versions(f"name='{DEFAULT_REGISTERED_NAME}' and run_id='{self.run_ids[kind]}'")
        return version.version

    def train(self) -> "Workspace":
        """Write the tiny demo file and train the pair on it, side by side in two processes: the baseline with
        ``python -m entrypoints.train``, the upstream model with ``mlflow run . -e train``."""
        from convlstm.data.demo import write_demo_dataset

        absent = [name for name in ("mlruns", "mlflow.db", "outputs") if not (REPO / name).exists()]
        write_demo_dataset(self.tiny, years=0.2, resolution=5.0)
        self.client().search_experiments()  # create the store once, before two processes use it
        flags = [arg for key, value in PAIR_ARGS.items() for arg in (f"--{key.replace('_', '-')}", *value.split())]
        commands = {
            "baseline": [sys.executable, "-m", "entrypoints.train", "--data", str(self.tiny), "--output-dir",
                         str(self.train_dirs["baseline"]), *flags, "--num-epochs", str(PAIR_EPOCHS["baseline"]),
                         "--experiment-name", self.EXPERIMENT],
            "upstream": mlflow_run_command("train", {"data": self.tiny, "output_dir": self.train_dirs["upstream"],
                                                     "include_upstream": "true", **PAIR_ARGS,
                                                     "num_epochs": PAIR_EPOCHS["upstream"]}, self.EXPERIMENT),
        }
        # sample system metrics often enough for a run of seconds to have some (MLflow's own variable)
        env = {**subprocess_env(self.root), "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.25"}
        logs = {kind: self.root / f"{kind}.log" for kind in commands}
        processes = {kind: subprocess.Popen(command, cwd=self.root, env=env, stdout=logs[kind].open("w"),
                                            stderr=subprocess.STDOUT) for kind, command in commands.items()}
        for kind, process in processes.items():
            assert process.wait(timeout=300) == 0, f"{kind}: {logs[kind].read_text()[-3000:]}"
        for kind in self.KINDS:
            (run,) = self.runs(f"tags.experiment_type = '{kind}'")
            assert run.info.status == "FINISHED"
            self.run_ids[kind] = run.info.run_id
        assert not [name for name in absent if (REPO / name).exists()], "training wrote into the repository"
        return self

    def copy(self, root: Path) -> "Workspace":
        """A workspace in ``root`` with a copy of this one's tracking store (its artifacts stay shared)."""
        shutil.copyfile(self.root / "mlflow.db", root / "mlflow.db")
        other = Workspace(root, self.tiny)
        other.train_dirs, other.run_ids = dict(self.train_dirs), dict(self.run_ids)
        return other


# ---------------------------------------------------------------------------------------------- tiny runs

#: A tiny model trained for one epoch: seconds per run on the tiny file (``tiny_nc``).
TINY_ARGS = ["--hidden-channels", "4", "8", "--batch-size", "8", "--num-epochs", "1", "--visualize", "false"]
EPOCH_METRICS = ("train_loss", "val_loss", "val_rmse_mm", "val_mae_mm", "lr", "epoch_time_s", "train_step_time_s",
                 "val_time_s")


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


if __name__ == "__main__":
    train_pair(Path(sys.argv[1]))

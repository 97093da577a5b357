"""The integration tests' shared, read-only tiny baseline/upstream pair, trained once per session, and the tiny
file and empty tracking stores that tests training their own runs start from."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock
from mlflow.tracking import MlflowClient

from convlstm.data.demo import write_demo_dataset
from convlstm.forecast import ForecastModel, load_forecast_model
from tests.integration.server_stack import session_stack
from tests.integration.workspace import PAIR_ENV, Workspace, all_runs, start_pair, tracking_environment, wait_for_pair


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The tiny pair (see ``workspace.py``). Read it only; copy it (``pair.copy(tmp_path)``) to change it.

    Usually the session started training it in the background (``tests/conftest.py``); otherwise the
    first worker to ask starts it here, and the others wait for the same one.
    """
    if PAIR_ENV in os.environ:
        return wait_for_pair(Path(os.environ[PAIR_ENV]))
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "pair"
    with FileLock(f"{root}.lock"):
        if not (root / "pair.log").is_file():
            start_pair(root)
    return wait_for_pair(root)


@pytest.fixture(scope="session")
def pair_models(pair: Workspace) -> dict[str, ForecastModel]:
    """The pair's best models, loaded once (read only)."""
    return {kind: load_forecast_model(directory) for kind, directory in pair.train_dirs.items()}


@pytest.fixture
def in_pair(pair: Workspace) -> Iterator[Workspace]:
    """This process pointed at the pair's tracking store and working directory (for in-process calls)."""
    with pytest.MonkeyPatch.context() as mp, tracking_environment(pair.root, mp):
        yield pair


@pytest.fixture(scope="module")
def tiny_nc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5° demo data: 4 × 12 cells (downstream 4 columns, upstream 8), 73 twelve-hourly steps."""
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "tiny.nc", years=0.1, resolution=5.0)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty SQLite tracking store, to copy."""
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


@pytest.fixture(scope="session")
def server_stack() -> Iterator[object]:
    """The team's tracking server (``deploy/stack``: PostgreSQL, an S3 object store, MLflow with basic auth)
    in a temporary directory, started once per session by the code behind ``deploy/tracking-server`` and
    stopped at the end, with a check that none of its processes is left. Skipped where PostgreSQL or the
    server extra is missing, unless ``CONVLSTM_REQUIRE_SERVER_STACK=1``."""
    with session_stack() as stack:
        yield stack

"""The integration tests' shared, read-only tiny baseline/upstream pair, trained once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock

from convlstm.forecast import ForecastModel, load_forecast_model
from tests.integration.workspace import PAIR_ENV, Workspace, start_pair, tracking_environment, wait_for_pair


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

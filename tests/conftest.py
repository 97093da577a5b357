"""Fixtures every test folder may use, and the background training of the integration tests' model pair."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import xarray as xr

from tests.helpers import REPO, make_dataset


@pytest.fixture
def small_dataset() -> xr.Dataset:
    return make_dataset()


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread in every test process and in the processes tests start: the suite runs three workers on
    two cores, where a second thread per process only contends (and OpenMP's waiting threads spin).

    When integration tests will run, start training their shared model pair at once, in the background,
    so that it is ready (or nearly) when the first of them needs it (``tests/integration/conftest.py``)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    if os.environ.get("PYTEST_XDIST_WORKER") or config.option.collectonly:
        return
    paths = [Path(arg.split("::")[0]).resolve() for arg in config.args]
    integration = REPO / "tests" / "integration"
    if not any(path == integration or integration in path.parents or path in integration.parents for path in paths):
        return
    from tests.integration.workspace import PAIR_ENV, start_pair  # MLflow: imported only when it will be used

    if PAIR_ENV in os.environ:
        return
    root = Path(tempfile.mkdtemp(prefix="convlstm-test-pair-"))
    os.environ[PAIR_ENV] = str(root)  # xdist workers inherit it
    config.stash[_PAIR] = (root, start_pair(root))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that mostly wait (marked ``waits``: a 5-minute server outage) go first, so that under xdist their
    wait overlaps the other tests on the other workers instead of coming at the end."""
    items.sort(key=lambda item: item.get_closest_marker("waits") is None)  # a stable sort keeps the rest in order


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the background training if it is still running, and remove its files."""
    if _PAIR in config.stash:
        root, process = config.stash[_PAIR]
        if process.poll() is None:
            process.kill()
        process.wait()
        shutil.rmtree(root, ignore_errors=True)


_PAIR = pytest.StashKey[tuple]()

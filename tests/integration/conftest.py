"""The integration tests' shared, read-only tiny baseline/upstream pair, trained once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.workspace import Workspace, tracking_environment


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The tiny pair (see ``workspace.py``). Read it only; copy it (``pair.copy(tmp_path)``) to change it."""
    with pytest.MonkeyPatch.context() as mp:
        return Workspace(tmp_path_factory.mktemp("pair")).train(mp)


@pytest.fixture
def in_pair(pair: Workspace) -> Iterator[Workspace]:
    """This process pointed at the pair's tracking store and working directory (for in-process calls)."""
    with pytest.MonkeyPatch.context() as mp, tracking_environment(pair.root, mp):
        yield pair

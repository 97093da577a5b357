"""Fixtures every test folder may use."""

from __future__ import annotations

import pytest
import xarray as xr

from tests.helpers import make_dataset


@pytest.fixture
def small_dataset() -> xr.Dataset:
    return make_dataset()

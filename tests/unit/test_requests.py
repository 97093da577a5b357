"""``convlstm.scoring_client.request_body`` and ``request_parquet``: what a client sends to the scoring server."""

from __future__ import annotations

import json
from io import BytesIO

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from convlstm.errors import DataError
from convlstm.scoring_client import request_body, request_parquet

FINITE_FLOAT32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.lists(st.integers(1, 4), min_size=1, max_size=5).map(tuple), elements=FINITE_FLOAT32))
def test_every_float32_reads_back_exactly_in_the_same_nesting(windows: np.ndarray) -> None:
    decoded = json.loads(request_body(windows))
    assert list(decoded) == ["inputs"]
    back = np.array(decoded["inputs"], dtype=np.float32)
    assert back.shape == windows.shape
    np.testing.assert_array_equal(back, windows)


def test_smaller_than_plain_json_and_keyed_as_asked() -> None:
    rng = np.random.default_rng(0)
    windows = (250.0 + 30.0 * rng.standard_normal((2, 3, 5, 4, 6))).astype(np.float32)
    body = request_body(windows, key="instances")
    assert list(json.loads(body)) == ["instances"]
    assert len(body) < 0.75 * len(json.dumps({"instances": windows.tolist()}).encode())


@pytest.mark.parametrize(("values", "match"), [
    (np.array([1.0, np.nan], dtype=np.float32), "1 NaN or infinite"),
    (np.array([[np.inf, -np.inf]]), "2 NaN or infinite"),
    (np.zeros((0, 3)), "non-empty"),
    (np.float32(1.0), "non-empty"),
])
@pytest.mark.parametrize("encode", [request_body, request_parquet])
def test_refuses_what_the_model_would_refuse(values: np.ndarray, match: str, encode) -> None:  # noqa: ANN001
    with pytest.raises(DataError, match=match):
        encode(values)


def test_parquet_holds_one_flattened_window_a_row_exactly() -> None:
    rng = np.random.default_rng(1)
    windows = rng.standard_normal((3, 2, 5, 4, 6)).astype(np.float32)
    frame = pd.read_parquet(BytesIO(request_parquet(windows)))
    assert list(frame.columns) == ["windows"] and len(frame) == 3
    np.testing.assert_array_equal(np.vstack(frame["windows"].tolist()).reshape(windows.shape), windows)

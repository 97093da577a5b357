"""The registered model behind the real MLflow scoring server (``mlflow models serve``).

The shared pair's upstream model (registered by its training run) is served on 127.0.0.1 at a free port; good requests must give what the model gives in this process, bad
ones an HTTP 400 that says what was expected, and the server must keep serving afterwards.
"""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from convlstm.config import DEFAULT_REGISTERED_NAME
from convlstm.data.regions import crop_regions
from convlstm.data.schema import open_dataset
from convlstm.data.stacking import stack_channels
from convlstm.forecast import ForecastModel, load_forecast_model
from tests.integration.workspace import Workspace, subprocess_env, tracking_environment
from convlstm.scoring_client import PARQUET_CONTENT_TYPE, ScoringServer, request_body, request_parquet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(pair: Workspace) -> dict[str, object]:
    """The shared pair's upstream model and its registered version."""
    ws = pair
    return {"root": ws.root, "tiny": ws.tiny, "uri": f"models:/{DEFAULT_REGISTERED_NAME}/{ws.model_version('upstream')}",
            "forecast": load_forecast_model(ws.train_dirs["upstream"])}


@pytest.fixture(scope="module")
def server(trained: dict[str, object]):
    """``mlflow models serve`` of the registered version."""
    root: Path = trained["root"]  # type: ignore[assignment]
    with ScoringServer(str(trained["uri"]), root / "server.log", env=subprocess_env(root), cwd=root) as running:
        yield running


@pytest.fixture(scope="module")
def raw(trained: dict[str, object]) -> xr.Dataset:
    return open_dataset(trained["tiny"]).load()


def windows(data: xr.Dataset, forecast: ForecastModel, starts: list[int]) -> np.ndarray:
    """Raw windows ``[N, T, C, H, W]`` (float32) cut and stacked as the served model expects them."""
    stacked = stack_channels(crop_regions(data, forecast.regions, forecast.include_upstream).data)
    return np.stack([stacked[s:s + forecast.config.window_size] for s in starts])


@pytest.fixture(scope="module")
def in_process(trained: dict[str, object]):
    """The same registered model loaded with ``mlflow.pyfunc`` in this process."""
    root: Path = trained["root"]  # type: ignore[assignment]
    with pytest.MonkeyPatch.context() as mp, tracking_environment(root, mp):
        model = mlflow.pyfunc.load_model(str(trained["uri"]))
    return model


# ---------------------------------------------------------------------------------------------- good requests


@pytest.mark.parametrize("key", ["inputs", "instances"])
def test_served_forecast_equals_the_model_in_process(server, trained, raw: xr.Dataset, in_process, key: str) -> None:
    forecast: ForecastModel = trained["forecast"]  # type: ignore[assignment]
    window = windows(raw, forecast, [0, 40, 100])
    assert window.dtype == np.float32 and window.shape == (3, 6, 56, 4, 12)
    status, answer = server.post({key: window.tolist()})
    assert status == 200, answer
    served = np.asarray(answer["predictions"], dtype=np.float32)
    assert served.shape == (3, 4, 4)
    assert (served >= 0).all()
    np.testing.assert_allclose(served, in_process.predict(window), rtol=0, atol=1e-5)
    np.testing.assert_allclose(served, forecast.predict_stacked(window), rtol=0, atol=1e-5)
    # the compact encoding a client gets from request_body gives the very same answer
    status, compact = server.post(request_body(window, key))
    assert status == 200
    np.testing.assert_array_equal(np.asarray(compact["predictions"], dtype=np.float32), served)
    status, parquet = server.post(request_parquet(window), content_type=PARQUET_CONTENT_TYPE)
    assert status == 200, parquet
    np.testing.assert_array_equal(np.asarray(parquet["predictions"], dtype=np.float32), served)
    # the forecast of each window does not depend on the others sent with it
    status, single = server.post({key: window[1:2].tolist()})
    assert status == 200
    np.testing.assert_allclose(np.asarray(single["predictions"]), served[1:2], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- bad requests

#: Every refusal is one short line, whatever the request's size (MLflow's own schema enforcement and its
#: server's ``Failed to predict data '<request>'`` put 16-33 KB of the request before the reason).
BODY_LIMIT = 500


def _bad_bodies(raw: xr.Dataset, forecast: ForecastModel) -> dict[str, tuple[bytes | dict, tuple[str, ...]]]:
    window = windows(raw, forecast, [0])
    nan, inf = window.tolist(), window.tolist()
    nan[0][2][3][1][1] = float("nan")
    inf[0][0][-1][0][0] = float("inf")
    strings, nulls = window.tolist(), window.tolist()
    strings[0][0][0][0][0] = "warm"
    nulls[0][1][2][0][3] = None
    expected = "Expected raw fields shaped [N, 6, 56, 4, 12]"
    return {
        "rank": ({"inputs": window[0].tolist()}, (expected, "got [6, 56, 4, 12]")),
        "time steps": ({"inputs": window[:, :5].tolist()}, (expected, "got [1, 5, 56, 4, 12]")),
        "channels (levels subset)": ({"inputs": windows(raw.sel(level=[1000.0, 850.0, 500.0]), forecast, [0]).tolist()},
                                     (expected, "56 channels", "got [1, 6, 16, 4, 12]")),
        "grid size": ({"instances": window[..., 1:, :].tolist()}, (expected, "got [1, 6, 56, 3, 12]")),
        # Python's json writes NaN / Infinity, which the server's parser reads back as numbers
        "nan": (json.dumps({"inputs": nan}).encode(), ("NaN or infinite", "finite numbers")),
        "inf": (json.dumps({"inputs": inf}).encode(), ("NaN or infinite", "finite numbers")),
        "strings": ({"inputs": strings}, ("could not be read as numbers", "could not convert string to float", "'warm'")),
        "nulls": ({"inputs": nulls}, ("1 NaN or infinite", "finite numbers")),  # numpy reads null as NaN
        "all strings": ({"instances": [["rain", "snow"]]}, ("could not convert string to float",)),
    }


BAD = ["rank", "time steps", "channels (levels subset)", "grid size", "nan", "inf", "strings", "nulls", "all strings"]


def _short_refusal(status: int, answer: dict, expected: tuple[str, ...]) -> None:
    assert status == 400, answer
    body, message = json.dumps(answer), answer["message"]
    assert len(body) < BODY_LIMIT, f"{len(body)} bytes: {body[:300]!r}"
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


@pytest.mark.parametrize("case", BAD)
def test_bad_request_is_a_short_400_saying_what_was_expected(server, trained, raw: xr.Dataset, case: str) -> None:
    body, expected = _bad_bodies(raw, trained["forecast"])[case]  # type: ignore[arg-type]
    _short_refusal(*server.post(body), expected)
    assert server.process.poll() is None


def test_missing_key_is_answered_by_mlflow_without_the_request(server, trained, raw: xr.Dataset) -> None:
    """The server refuses a body without ``inputs`` / ``instances`` before the model sees it: MLflow's own
    fixed text (about 1 KB) naming the keys it accepts, the same length however large the request."""
    forecast: ForecastModel = trained["forecast"]  # type: ignore[assignment]
    answers = [server.post({"windows": windows(raw, forecast, starts).tolist()}) for starts in ([0], [0, 10, 20])]
    for status, answer in answers:
        assert status == 400 and "'inputs'" in answer["message"] and "'instances'" in answer["message"]
    assert len(json.dumps(answers[0][1])) == len(json.dumps(answers[1][1])) < 1200


def test_server_keeps_serving_after_bad_requests(server, trained, raw: xr.Dataset) -> None:
    forecast: ForecastModel = trained["forecast"]  # type: ignore[assignment]
    for case, (body, _) in _bad_bodies(raw, forecast).items():  # again, all of them in a row
        assert server.post(body)[0] == 400, case
    window = windows(raw, forecast, [7])
    status, answer = server.post({"inputs": window.tolist()})
    assert status == 200, answer
    np.testing.assert_allclose(np.asarray(answer["predictions"]), forecast.predict_stacked(window), rtol=0, atol=1e-5)
    assert server.process.poll() is None
    log = server.log_path.read_text()
    assert "Traceback" not in log
    assert "type hints" not in log  # MLflow's warning about an unhinted ``predict``


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def test_bad_parquet_request_is_a_short_400_saying_what_was_expected(server, trained, raw: xr.Dataset) -> None:
    window = windows(raw, trained["forecast"], [0])  # type: ignore[arg-type]
    flat = list(window.reshape(1, -1))
    poisoned = window.copy()
    poisoned[0, 1, 2, 0, 0] = np.nan
    expected_rows = ("one flattened window [T, C, H, W] = [6, 56, 4, 12] (16128 numbers) a row",)
    cases = {
        "time steps": (request_parquet(window[:, :5]), (*expected_rows, "got rows of [13440] numbers")),
        "two columns": (_parquet(pd.DataFrame({"a": flat, "b": flat})), (*expected_rows, "got 2 columns ['a', 'b']")),
        "nan": (_parquet(pd.DataFrame({"windows": list(poisoned.reshape(1, -1))})), ("NaN or infinite",)),
    }
    for body, expected in cases.values():
        _short_refusal(*server.post(body, content_type=PARQUET_CONTENT_TYPE), expected)
    assert server.process.poll() is None

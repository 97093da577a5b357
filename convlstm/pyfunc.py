"""The model as MLflow serves it: raw atmospheric fields in, downstream precipitation in mm out.

The packaged artifacts are the checkpoint and ``normalizer.pkl``; ``predict`` runs
``ForecastModel.predict_stacked`` (normalize → model → crop → denormalize), the same code as ``infer``.

Bad requests are refused by the model itself, in one short line (:class:`RequestRejected`, HTTP 400),
and the server keeps serving. The signature states the output tensor only: MLflow 3.17.2 enforces an
input schema before ``predict`` runs and answers a wrong shape with the whole decoded request in the
message (16–33 KB for one upstream window), so the input shape is checked by
``ForecastModel.check_stacked`` instead, and stated in the model's metadata (``input_shape``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import Schema, TensorSpec

import convlstm
from convlstm.errors import DataError
from convlstm.forecast import ForecastModel, load_forecast_model

logger = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"


class RequestRejected(MlflowException):
    """A bad request, answered with HTTP 400 and its reason alone.

    MLflow's scoring server prefixes the message of any ``MlflowException`` out of ``predict`` with the
    decoded request (``Failed to predict data '<array>'``); the HTTP body is ``serialize_as_json``, so the
    reason is put back there.

    Parameters
    ----------
    reason : str
        What is wrong with the request and what was expected.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason, error_code=INVALID_PARAMETER_VALUE)
        self.reason = reason

    def serialize_as_json(self) -> str:
        """The error as the scoring server sends it, with ``message`` the reason only.

        Returns
        -------
        str
            JSON with ``error_code``, ``message`` and MLflow's other fields.
        """
        return json.dumps({**json.loads(super().serialize_as_json()), "message": self.reason})


class ConvLSTMPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps a ``ForecastModel``; the checkpoint and normalizer travel as model artifacts."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Load the checkpoint and normalizer once, when the server starts, on the best device.

        Parameters
        ----------
        context : mlflow.pyfunc.PythonModelContext
            Holds the local paths of the ``checkpoint`` and ``normalizer`` artifacts.
        """
        self.forecast = load_forecast_model(context.artifacts["checkpoint"], device="auto",
                                            normalizer_path=context.artifacts["normalizer"])

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: np.ndarray,
                params: dict[str, Any] | None = None) -> np.ndarray:
        """Raw fields ``[N, T, C, H, W]`` → precipitation ``[N, H, W_down]`` in mm.

        ``np.ndarray`` is a type hint MLflow accepts without inferring a schema or wrapping ``predict`` in its
        own validation (an unhinted ``predict`` makes it warn wherever this class is defined).

        Parameters
        ----------
        context : mlflow.pyfunc.PythonModelContext
            Unused (the model is loaded in ``load_context``).
        model_input : numpy.ndarray
            The windows as the scoring server decoded them: an array (JSON ``inputs`` / ``instances``), or a
            one-column data frame of flattened windows (Parquet); anything array-like is accepted.
        params : dict, optional
            Unused.

        Returns
        -------
        numpy.ndarray
            Precipitation in mm, never negative.

        Raises
        ------
        RequestRejected
            The request is not numeric, not ``[N, T, C, H, W]`` on the model's grid, or not finite.
        """
        try:
            return self.forecast.predict_stacked(_as_array(model_input, self.forecast.input_shape))
        except DataError as exc:
            raise RequestRejected(str(exc)) from exc


def _as_array(model_input: Any, window_shape: tuple[int, ...]) -> np.ndarray:
    """The request as a float32 array; a data frame's rows are flattened windows of ``window_shape``."""
    if isinstance(model_input, dict) and len(model_input) == 1:
        model_input = next(iter(model_input.values()))
    table = isinstance(model_input, pd.DataFrame)
    if table:
        model_input = _window_rows(model_input, window_shape)
    try:
        array = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"The request must be a numeric array [N, T, C, H, W]; it could not be read as numbers ({exc}).") from exc
    return array.reshape(-1, *window_shape) if table else array


def _window_rows(frame: pd.DataFrame, window_shape: tuple[int, ...]) -> list[Any]:
    """The rows of a one-column frame that holds one flattened window of ``window_shape`` a row (``request_parquet``)."""
    size = math.prod(window_shape)
    expected = f"A table request holds one column with one flattened window [T, C, H, W] = {list(window_shape)} ({size} numbers) a row"
    if frame.shape[1] != 1:
        raise DataError(f"{expected}; got {frame.shape[1]} columns {list(frame.columns)[:5]}.")
    rows = frame.iloc[:, 0].tolist()
    lengths = sorted({np.size(row) for row in rows})
    if lengths != [size]:
        raise DataError(f"{expected}; got rows of {lengths[:5]} numbers.")
    return rows


def signature_for(forecast: ForecastModel) -> ModelSignature:
    """Tensor signature of the downstream output; no input schema, so that the model checks requests itself.

    Parameters
    ----------
    forecast : ForecastModel
        The model to serve.

    Returns
    -------
    mlflow.models.ModelSignature
        Output float32 ``[-1, H, W_down]`` (the input ``[N, T, C, H, W]`` is in the metadata's ``input_shape``).
    """
    height = forecast.input_shape[2]
    columns = forecast.downstream_columns
    return ModelSignature(outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, height, columns.stop - columns.start))]))


def requirements() -> list[str]:
    """What the served model imports (the convlstm package itself travels as code).

    Returns
    -------
    list of str
        Pip requirements pinned to the versions installed here (torch without its local ``+cpu`` tag).
    """
    import numpy
    import pandas
    import xarray

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={numpy.__version__}",
            f"pandas=={pandas.__version__}", f"xarray=={xarray.__version__}"]


def log_pyfunc_model(checkpoint: Path, normalizer: Path, input_example: np.ndarray, run_id: str,
                     tags: dict[str, str] | None = None) -> mlflow.models.model.ModelInfo:
    """Log the model to ``run_id``, with signature, example and metadata (registering is a separate step:
    :func:`convlstm.tracking.registry.register_run_model`).

    Parameters
    ----------
    checkpoint : pathlib.Path
        The best checkpoint.
    normalizer : pathlib.Path
        The run's ``normalizer.pkl``.
    input_example : numpy.ndarray
        One raw window ``[1, T, C, H, W]``.
    run_id : str
        The training run (given, not the active run: the journal's sender logs it from its own thread).
    tags : dict of str to str, optional
        Tags of the logged model.

    Returns
    -------
    mlflow.models.model.ModelInfo
        Where it was logged.
    """
    forecast = load_forecast_model(checkpoint, device="cpu", normalizer_path=normalizer)
    # mlflow.pyfunc.log_model logs to the active run only, and Model.log given a run id would create the model
    # in the process's active experiment (Default), not the run's: create it in the run's experiment first
    run = mlflow.MlflowClient().get_run(run_id)
    model = mlflow.initialize_logged_model(name=MODEL_ARTIFACT_PATH, source_run_id=run_id,
                                           experiment_id=run.info.experiment_id, params=run.data.params, tags=tags)
    return mlflow.models.Model.log(
        artifact_path=None,
        name=MODEL_ARTIFACT_PATH,
        flavor=mlflow.pyfunc,
        run_id=run_id,
        model_id=model.model_id,
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={"checkpoint": str(checkpoint), "normalizer": str(normalizer)},
        code_paths=[str(Path(convlstm.__file__).parent)],
        signature=signature_for(forecast),
        input_example=input_example.astype(np.float32),
        pip_requirements=requirements(),
        metadata=forecast.describe(),
    )

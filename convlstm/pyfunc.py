"""The model as MLflow serves it: raw atmospheric fields in, downstream precipitation in mm out.

The packaged artifacts are the checkpoint and ``normalizer.pkl``; ``predict`` runs
``ForecastModel.predict_stacked`` (normalize → model → crop → denormalize), the same code as ``infer``.
Bad requests raise ``MlflowException(INVALID_PARAMETER_VALUE)``, which the scoring server answers
with HTTP 400 and the message, and keeps serving.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
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

        ``np.ndarray`` is a hint MLflow infers no schema from: the model's tensor signature checks shapes.

        Parameters
        ----------
        context : mlflow.pyfunc.PythonModelContext
            Unused (the model is loaded in ``load_context``).
        model_input : numpy.ndarray
            The windows as the scoring server decoded them (anything array-like is accepted).
        params : dict, optional
            Unused.

        Returns
        -------
        numpy.ndarray
            Precipitation in mm, never negative.
        """
        try:
            return self.forecast.predict_stacked(_as_array(model_input))
        except DataError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc


def _as_array(model_input: Any) -> np.ndarray:
    """The request as a float32 array; anything non-numeric is a client error."""
    if isinstance(model_input, dict) and len(model_input) == 1:
        model_input = next(iter(model_input.values()))
    try:
        array = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"The request must be a numeric array [N, T, C, H, W]; it could not be read as numbers ({exc}).") from exc
    return array


def signature_for(forecast: ForecastModel) -> ModelSignature:
    """Tensor signature stating the input window shape and the downstream output shape.

    Parameters
    ----------
    forecast : ForecastModel
        The model to serve.

    Returns
    -------
    mlflow.models.ModelSignature
        float32 input ``[-1, T, C, H, W]``, output ``[-1, H, W_down]``.
    """
    t, c, h, w = forecast.input_shape
    columns = forecast.downstream_columns
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, t, c, h, w))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, h, columns.stop - columns.start))]),
    )


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


def log_pyfunc_model(checkpoint: Path, normalizer: Path, input_example: np.ndarray,
                     registered_model_name: str | None = None) -> mlflow.models.model.ModelInfo:
    """Log (and register) the model in the active run, with signature, example and metadata.

    Parameters
    ----------
    checkpoint : pathlib.Path
        The best checkpoint.
    normalizer : pathlib.Path
        The run's ``normalizer.pkl``.
    input_example : numpy.ndarray
        One raw window ``[1, T, C, H, W]``.
    registered_model_name : str, optional
        Register the model under this name (None: log it only).

    Returns
    -------
    mlflow.models.model.ModelInfo
        Where it was logged, and the registered version if any.
    """
    forecast = load_forecast_model(checkpoint, device="cpu", normalizer_path=normalizer)
    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT_PATH,
        python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={"checkpoint": str(checkpoint), "normalizer": str(normalizer)},
        code_paths=[str(Path(convlstm.__file__).parent)],
        signature=signature_for(forecast),
        input_example=input_example.astype(np.float32),
        pip_requirements=requirements(),
        metadata=forecast.describe(),
        registered_model_name=registered_model_name,
    )

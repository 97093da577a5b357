"""The CUDA path of training and forecasting, against the CPU's. These tests run only where PyTorch sees a GPU
(``pytest tests/unit/test_cuda.py`` on a GPU machine); CI has none, and reports them as skipped."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from convlstm.checkpoint import LAST_NAME, load_checkpoint
from convlstm.config import TrainSettings
from convlstm.data.demo import generate_demo_dataset
from convlstm.data.prepare import PreparedData
from convlstm.data.schema import PRECIPITATION
from convlstm.device import amp_dtype
from convlstm.forecast import load_forecast_model
from convlstm.training.experiment import checkpoint_metadata, input_grid
from tests.helpers import make_trainer, prepare

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def demo() -> xr.Dataset:
    return generate_demo_dataset(years=0.1, resolution=5.0)


@pytest.fixture(scope="module")
def prepared(demo: xr.Dataset) -> PreparedData:
    return prepare(demo, include_upstream=True)


@pytest.fixture
def _no_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full float32 in cuDNN's convolutions (PyTorch lets them round to TF32 by default), to compare with the CPU."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.mark.usefixtures("_no_tf32")
def test_float32_training_on_cuda_follows_the_cpu(prepared: PreparedData, tmp_path: Path) -> None:
    """Same seed, same batches: an epoch on the GPU ends at the CPU's losses and weights, to float rounding."""
    trainers = {device.type: make_trainer(prepared, tmp_path / device.type, device=device, num_epochs=1,
                                          use_amp=False) for device in (CPU, CUDA)}
    assert trainers["cuda"].amp_dtype is None and trainers["cuda"].pin_memory
    states = {name: trainer.fit(prepared.train, prepared.val) for name, trainer in trainers.items()}
    for key in ("train_loss", "val_loss"):
        assert states["cuda"].history[0][key] == pytest.approx(states["cpu"].history[0][key], rel=1e-4)
    gpu_weights = trainers["cuda"].model.state_dict()
    for name, value in trainers["cpu"].model.state_dict().items():
        assert gpu_weights[name].device.type == "cuda"
        torch.testing.assert_close(gpu_weights[name].cpu(), value, rtol=1e-3, atol=1e-4)


@pytest.mark.usefixtures("_no_tf32")
def test_mixed_precision_training_on_cuda_resumes_and_forecasts_on_the_cpu(demo: xr.Dataset, prepared: PreparedData,
                                                                           tmp_path: Path) -> None:
    """The default on a GPU, mixed precision, trains to finite losses; its checkpoint resumes on a CPU, and the
    trained model forecasts the same millimetres on either device."""
    trainer = make_trainer(prepared, tmp_path, device=CUDA, num_epochs=2)
    settings = TrainSettings(model=trainer.config, include_upstream=True)  # what a forecast reads, as a run records it
    trainer.metadata.update(checkpoint_metadata(settings, None), input_grid=input_grid(prepared.train))
    assert trainer.amp_dtype is not None and trainer.amp_dtype == amp_dtype(CUDA)
    state = trainer.fit(prepared.train, prepared.val)
    assert state.epoch == 2
    assert all(math.isfinite(row[key]) for row in state.history for key in ("train_loss", "val_loss"))
    checkpoint = load_checkpoint(tmp_path / LAST_NAME)
    assert all(value.device.type == "cpu" for value in checkpoint["model_state_dict"].values())

    resumed = make_trainer(prepared, tmp_path, device=CPU, num_epochs=3)
    resumed.restore(tmp_path / LAST_NAME)
    assert resumed.fit(prepared.train, prepared.val).epoch == 3

    models = {device: load_forecast_model(tmp_path, device=device) for device in ("cpu", "cuda")}
    assert models["cuda"].device.type == "cuda"
    forecasts = {device: model.predict_dataset(demo)[PRECIPITATION].values for device, model in models.items()}
    assert forecasts["cpu"].size and forecasts["cpu"].max() > 0
    np.testing.assert_allclose(forecasts["cuda"], forecasts["cpu"], rtol=1e-4, atol=1e-4)

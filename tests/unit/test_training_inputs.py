"""The weighted loss and the inputs the trainer sees, without training: the threshold in mm through the
normalizer, and the upstream input being wider while the targets stay the downstream cells."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm.data.demo import write_demo_dataset
from convlstm.training.loss import WeightedPrecipitationLoss
from tests.helpers import make_trainer, prepare

# 5° grid, default regions: downstream 110..125 °E = 4 columns; upstream 70..<110 °E = 8 columns.
N_LAT, W_DOWN, W_UP = 4, 4, 8


@pytest.fixture(scope="module")
def tiny_nc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "tiny.nc", years=0.1, resolution=5.0)


def test_weighted_loss_hand_computed() -> None:
    loss = WeightedPrecipitationLoss(threshold=1.0, high_weight=3.0)
    prediction = torch.tensor([[[0.0, 2.0], [1.0, 5.0]]])
    target = torch.tensor([[[0.5, 1.0], [3.0, 0.9]]])
    # weights from the *target*: 0.5 → 1, 1.0 (at the threshold) → 3, 3.0 → 3, 0.9 → 1 (even though predicted 5)
    expected = (1 * 0.5**2 + 3 * 1.0**2 + 3 * 2.0**2 + 1 * 4.1**2) / 4
    assert float(loss(prediction, target)) == pytest.approx(expected, rel=1e-6)
    assert float(WeightedPrecipitationLoss(1.0, 1.0)(prediction, target)) == pytest.approx(
        float(torch.nn.functional.mse_loss(prediction, target)), rel=1e-6)
    assert float(loss(target, target)) == 0.0


def test_loss_threshold_is_converted_from_mm_with_the_normalizer(tiny_nc: Path, tmp_path: Path) -> None:
    prepared = prepare(tiny_nc)
    trainer = make_trainer(prepared, tmp_path, high_precip_threshold=10.0, high_precip_weight=4.0)
    std = float(prepared.normalizer.stds["precipitation"])
    assert trainer.criterion.threshold == pytest.approx(math.log1p(10.0) / std, rel=1e-12)  # log1p, uncentred
    assert trainer.criterion.high_weight == 4.0
    # 9 mm observed is an ordinary cell, 11 mm a heavy one
    norm = prepared.normalizer.normalize_precipitation
    target = torch.tensor([[[float(norm(9.0)), float(norm(11.0))]]])
    prediction = torch.zeros_like(target)
    expected = (target[0, 0, 0] ** 2 + 4.0 * target[0, 0, 1] ** 2) / 2
    assert float(trainer.criterion(prediction, target)) == pytest.approx(float(expected), rel=1e-6)


def test_upstream_input_is_wider_but_targets_are_the_downstream_cells(tiny_nc: Path) -> None:
    baseline, upstream = prepare(tiny_nc, False), prepare(tiny_nc, True)
    assert baseline.train.inputs.shape[-2:] == (N_LAT, W_DOWN)
    assert upstream.train.inputs.shape[-2:] == (N_LAT, W_UP + W_DOWN)
    assert baseline.train.downstream_columns == slice(0, W_DOWN)
    assert upstream.train.downstream_columns == slice(W_UP, W_UP + W_DOWN)
    np.testing.assert_array_equal(upstream.train.downstream_lon, baseline.train.lon)
    for name in ("train", "val", "test"):
        base, up = baseline.datasets[name], upstream.datasets[name]
        assert len(base) == len(up)
        x_up, y_up = up[0]
        assert tuple(x_up.shape) == (6, 56, N_LAT, W_UP + W_DOWN) and tuple(y_up.shape) == (N_LAT, W_DOWN)
        # the same downstream rain in mm, whichever normalizer (each is fitted on its own input region)
        for i in (0, len(base) - 1):
            base_mm = baseline.normalizer.denormalize_precipitation(base[i][1].double())
            up_mm = upstream.normalizer.denormalize_precipitation(up[i][1].double())
            torch.testing.assert_close(up_mm, base_mm, rtol=1e-4, atol=1e-4)


def test_worker_batches_come_through_the_pipe_as_numpy_and_train_alike(tiny_nc: Path, tmp_path: Path) -> None:
    """Any loader with workers hands batches over as numpy arrays (torch's shared-memory hand-over needs a
    Unix socket under $TMPDIR, which a deep TMPDIR breaks), and they give the same first batch as in process."""
    prepared = prepare(tiny_nc, include_upstream=True)
    trainer = make_trainer(prepared, tmp_path)
    in_process = next(iter(trainer._loader(prepared.train, shuffle=False)))
    trainer.num_workers = 1
    inputs, targets = next(iter(trainer._loader(prepared.train, shuffle=False)))
    assert isinstance(inputs, np.ndarray) and isinstance(targets, np.ndarray)
    np.testing.assert_array_equal(inputs, in_process[0].numpy())
    np.testing.assert_array_equal(targets, in_process[1].numpy())

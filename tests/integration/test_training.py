"""Training at library level (no CLI, no MLflow): outputs, self-contained checkpoints, exact repeatability
and resume, the NaN guard, early stopping, the weighted loss, the metrics in mm, and scoring on the
downstream columns only.

Everything runs on a tiny synthetic file (5° grid: 4 × 12 cells, ~73 twelve-hourly steps) with a tiny
model, single-threaded (faster than two threads on a busy 2-core machine, and the same results run to run).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from convlstm.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint, periodic_name
from convlstm.config import ConvLSTMConfig, RegionConfig, TrainSettings
from convlstm.data.demo import write_demo_dataset
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.prepare import prepare_data
from convlstm.errors import ModelError, TrainingDiverged
from convlstm.forecast import predict_windows
from convlstm.model import ConvLSTMUNet
from convlstm.training.experiment import (
    CONFIG_NAME,
    LOSS_CURVE_NAME,
    MAPS_NAME,
    NORMALIZER_NAME,
    run_training,
    settings_from_checkpoint,
)
from convlstm.training.trainer import Trainer, TrainingCallback
from tests.helpers import PNG_SIGNATURE, TINY, make_trainer, prepare

CPU = torch.device("cpu")
# 5° grid, default regions: downstream 110..125 °E = 4 columns; upstream 70..<110 °E = 8 columns.
N_LAT, W_DOWN, W_UP = 4, 4, 8


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_nc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "tiny.nc", years=0.1, resolution=5.0)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Own working directory, demo cache and tracking store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVLSTM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def make_settings(output_dir: Path, data: Path, include_upstream: bool = False, visualize: bool = False,
                  **config: object) -> TrainSettings:
    """Figures only where a test looks at them: they cost more than the tiny training itself."""
    return TrainSettings(output_dir=str(output_dir), model=ConvLSTMConfig(**{**TINY, "num_epochs": 2, **config}),  # type: ignore[arg-type]
                         data=str(data), include_upstream=include_upstream, device="cpu", visualize=visualize)


def train(output_dir: Path, data: Path, include_upstream: bool = False, callbacks: tuple = (), visualize: bool = False,
          **config: object):  # type: ignore[no-untyped-def]
    """``run_training`` of the tiny model (what ``train_tracked`` runs inside an MLflow run)."""
    return run_training(make_settings(output_dir, data, include_upstream, visualize, **config), data, callbacks=callbacks)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model_state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"weights differ in {different}"


TIMING_METRICS = {"epoch_time_s", "train_step_time_s", "val_time_s"}


def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{key: value for key, value in row.items() if key not in TIMING_METRICS} for row in history]


class StopAfter(TrainingCallback):
    """Simulates an interruption: raises once epoch ``epoch`` is complete (its checkpoints are written)."""

    class Interrupted(Exception):
        pass

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch >= self.epoch:
            raise self.Interrupted(epoch)


@pytest.fixture(scope="module")
def trained(tiny_nc: Path, tmp_path_factory: pytest.TempPathFactory):
    """One 3-epoch run keeping a periodic checkpoint every 2 epochs."""
    output_dir = tmp_path_factory.mktemp("trained") / "run"
    return output_dir, train(output_dir, tiny_nc, num_epochs=3, checkpoint_frequency=2, visualize=True)


# ---------------------------------------------------------------------------------------------- outputs


def test_run_training_writes_every_output(trained) -> None:
    output_dir, outcome = trained
    expected = {BEST_NAME, LAST_NAME, periodic_name(2), NORMALIZER_NAME, CONFIG_NAME, LOSS_CURVE_NAME, MAPS_NAME}
    names = {path.name for path in output_dir.iterdir()}
    assert expected <= names
    # checkpoint_frequency 2 over 3 epochs: only epoch 2 is kept (and no temporary files are left behind)
    assert periodic_name(1) not in names and periodic_name(3) not in names
    assert not [name for name in names if name.endswith(".tmp")]
    for figure in (LOSS_CURVE_NAME, MAPS_NAME):
        assert (output_dir / figure).read_bytes().startswith(PNG_SIGNATURE)
    assert {path.name for path in outcome.files} >= {NORMALIZER_NAME, CONFIG_NAME, LOSS_CURVE_NAME, MAPS_NAME}
    assert outcome.state.epoch == 3 and [row["epoch"] for row in outcome.state.history] == [1, 2, 3]
    for row in outcome.state.history:  # the epoch's time split: steps and validation within the epoch's total
        assert 0 < row["train_step_time_s"] and 0 < row["val_time_s"]
        assert row["train_step_time_s"] + row["val_time_s"] <= row["epoch_time_s"]
    assert set(outcome.test_scores) == {"test_loss", "test_rmse_mm", "test_mae_mm"}
    assert all(math.isfinite(value) for value in outcome.test_scores.values())

    config = json.loads((output_dir / CONFIG_NAME).read_text())
    assert config["config"]["hidden_channels"] == [4, 8] and config["config"]["input_channels"] == 56
    assert config["data_info"]["input_width"] == W_DOWN and config["include_upstream"] is False
    saved = ConvLSTMNormalizer().load(output_dir / NORMALIZER_NAME)
    assert saved.to_dict() == load_checkpoint(output_dir / LAST_NAME)["normalizer"]


def test_checkpoints_are_self_contained(trained, tiny_nc: Path) -> None:
    output_dir, outcome = trained
    last = load_checkpoint(output_dir / LAST_NAME)
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "scaler_state_dict",
                "training_state", "config", "region_config", "normalizer", "versions"):
        assert key in last, key
    state = last["training_state"]
    assert state["epoch"] == 3
    assert state["best_val_loss"] == min(row["val_loss"] for row in state["history"])
    assert [row["epoch"] for row in state["history"]] == [1, 2, 3]
    assert state["history"] == outcome.state.history
    assert last["versions"]["torch"] == str(torch.__version__)
    assert last["region_config"] == RegionConfig().to_dict()
    assert load_checkpoint(output_dir / periodic_name(2))["training_state"]["epoch"] == 2
    best = load_checkpoint(output_dir / BEST_NAME)
    assert best["training_state"]["epoch"] == outcome.state.best_epoch

    # Rebuild the model and the normalizer from the checkpoint alone, and predict with them.
    config = ConvLSTMConfig.from_dict(last["config"])
    model = ConvLSTMUNet(config.input_channels, config.hidden_channels, config.output_channels, config.kernel_size)
    model.load_state_dict(last["model_state_dict"])  # strict: every weight is there
    normalizer = ConvLSTMNormalizer.from_dict(last["normalizer"])
    prepared = prepare_data(tiny_nc, RegionConfig.from_dict(last["region_config"]), last["include_upstream"],
                            config.window_size, normalizer=normalizer)
    predicted = predict_windows(model, prepared.val, prepared.val.downstream_columns, CPU)
    assert predicted.shape == (len(prepared.val), N_LAT, W_DOWN) and torch.isfinite(predicted).all()


def test_load_checkpoint_refuses_truncated_and_foreign_files(trained, tmp_path: Path) -> None:
    output_dir, _ = trained
    good = (output_dir / LAST_NAME).read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    for path in (truncated, foreign, text, tmp_path / "missing.pt"):
        with pytest.raises(ModelError, match="checkpoint") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value)
    # and the intact file still loads
    assert load_checkpoint(output_dir / LAST_NAME)["training_state"]["epoch"] == 3


# ---------------------------------------------------------------------------------------------- repeatability


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tiny_nc: Path, tmp_path: Path) -> None:
    first = train(tmp_path / "a", tiny_nc, num_epochs=1)
    second = train(tmp_path / "b", tiny_nc, num_epochs=1)
    assert_same_weights(weights(tmp_path / "a" / LAST_NAME), weights(tmp_path / "b" / LAST_NAME))
    assert without_timing(first.state.history) == without_timing(second.state.history)
    assert first.test_scores == second.test_scores

    train(tmp_path / "c", tiny_nc, num_epochs=1, seed=7)
    other = weights(tmp_path / "c" / LAST_NAME)
    assert any(not torch.equal(value, other[name]) for name, value in weights(tmp_path / "a" / LAST_NAME).items())


def test_resume_continues_exactly_where_training_stopped(tiny_nc: Path, tmp_path: Path) -> None:
    """3 epochs straight == 1 epoch, interrupted, then resumed from last.pt for the other two: the optimizer,
    scheduler (visible from the third epoch's learning rate on), data-order generator and RNG states all come back."""
    straight = train(tmp_path / "straight", tiny_nc, num_epochs=3)

    with pytest.raises(StopAfter.Interrupted):
        train(tmp_path / "split", tiny_nc, num_epochs=3, callbacks=(StopAfter(1),))
    checkpoint = tmp_path / "split" / LAST_NAME
    assert load_checkpoint(checkpoint)["training_state"]["epoch"] == 1

    settings, run_id = settings_from_checkpoint(checkpoint)
    assert run_id is None and settings.resume == str(checkpoint)
    assert settings.model.num_epochs == 3 and settings.data == str(tiny_nc) and settings.output_dir == str(tmp_path / "split")
    epochs_seen: list[int] = []

    class Record(TrainingCallback):
        def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
            epochs_seen.append(epoch)

    resumed = run_training(settings, tiny_nc, callbacks=[Record()])
    assert epochs_seen == [2, 3]  # only the missing epochs were trained
    assert_same_weights(weights(tmp_path / "straight" / LAST_NAME), weights(checkpoint))
    assert without_timing(resumed.state.history) == without_timing(straight.state.history)
    assert [row["epoch"] for row in resumed.state.history] == [1, 2, 3]
    assert resumed.state.global_step == straight.state.global_step
    assert (resumed.state.best_epoch, resumed.state.best_val_loss) == (straight.state.best_epoch, straight.state.best_val_loss)
    assert resumed.test_scores == straight.test_scores
    straight_opt = load_checkpoint(tmp_path / "straight" / LAST_NAME)["optimizer_state_dict"]
    resumed_opt = load_checkpoint(checkpoint)["optimizer_state_dict"]
    for index, moments in straight_opt["state"].items():
        assert torch.equal(moments["exp_avg_sq"], resumed_opt["state"][index]["exp_avg_sq"])


# ---------------------------------------------------------------------------------------------- NaN guard


class PoisonTraining(TrainingCallback):
    """After epoch ``epoch``, every training value becomes NaN (so do the targets, which are part of it)."""

    def __init__(self, dataset, epoch: int = 1) -> None:  # type: ignore[no-untyped-def]
        self.dataset, self.epoch = dataset, epoch

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == self.epoch:
            self.dataset.inputs = np.full_like(self.dataset.inputs, np.nan)


def _assert_last_good(output_dir: Path, epoch: int) -> None:
    last = load_checkpoint(output_dir / LAST_NAME)
    assert last["training_state"]["epoch"] == epoch
    assert all(math.isfinite(row["val_loss"]) for row in last["training_state"]["history"])
    assert all(torch.isfinite(value).all() for value in last["model_state_dict"].values() if value.is_floating_point())


def test_nan_loss_raises_training_diverged_and_keeps_last_good_checkpoint(tiny_nc: Path, tmp_path: Path) -> None:
    prepared = prepare(tiny_nc)
    trainer = make_trainer(prepared, tmp_path, num_epochs=3)
    trainer.callbacks.append(PoisonTraining(prepared.train, epoch=1))
    with pytest.raises(TrainingDiverged) as info:
        trainer.fit(prepared.train, prepared.val)
    message = str(info.value)
    assert "nan" in message and "epoch 2" in message and str(tmp_path / LAST_NAME) in message
    assert "--learning-rate" in message  # says what to do about it
    _assert_last_good(tmp_path, epoch=1)
    assert trainer.state.epoch == 1 and len(trainer.state.history) == 1


def test_non_finite_weights_after_the_last_step_of_an_epoch_never_reach_last_pt(tiny_nc: Path, tmp_path: Path) -> None:
    """An update that breaks the weights on the epoch's final batch is seen by no training loss; the
    validation loss must catch it before last.pt (the "last good checkpoint") is overwritten."""
    prepared = prepare(tiny_nc)
    trainer = make_trainer(prepared, tmp_path, num_epochs=3)
    steps_per_epoch = math.ceil(len(prepared.train) / trainer.config.batch_size)
    calls = {"n": 0}

    def break_weights_on_last_step_of_epoch_2(optimizer, args, kwargs) -> None:  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2 * steps_per_epoch:
            with torch.no_grad():
                for parameter in trainer.model.parameters():
                    parameter.fill_(float("nan"))

    trainer.optimizer.register_step_post_hook(break_weights_on_last_step_of_epoch_2)
    with pytest.raises(TrainingDiverged, match="epoch 2"):
        trainer.fit(prepared.train, prepared.val)
    _assert_last_good(tmp_path, epoch=1)


def test_huge_learning_rate_diverges_through_run_training(tiny_nc: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"The loss became (nan|inf|-inf) at epoch 1"):
        train(tmp_path / "run", tiny_nc, num_epochs=2, learning_rate=1e30, gradient_clip_norm=1e30)


# ---------------------------------------------------------------------------------------------- early stopping


def test_early_stopping_stops_before_num_epochs(tiny_nc: Path, tmp_path: Path) -> None:
    prepared = prepare(tiny_nc)
    # A learning rate too small to move float32 weights: the validation loss cannot improve after epoch 1.
    frozen = {"learning_rate": 1e-30, "weight_decay": 0.0, "num_epochs": 5}
    trainer = make_trainer(prepared, tmp_path / "stop", early_stopping_patience=1, **frozen)
    state = trainer.fit(prepared.train, prepared.val)
    assert state.stopped_early is True
    assert state.epoch == 2 < trainer.config.num_epochs
    assert [row["epoch"] for row in state.history] == [1, 2]
    assert state.best_epoch == 1 and state.epochs_without_improvement == 1
    assert load_checkpoint(tmp_path / "stop" / LAST_NAME)["training_state"]["stopped_early"] is True

    # patience 0 never stops early
    trainer = make_trainer(prepared, tmp_path / "never", early_stopping_patience=0, **{**frozen, "num_epochs": 3})
    state = trainer.fit(prepared.train, prepared.val)
    assert state.stopped_early is False and state.epoch == 3


# ---------------------------------------------------------------------------------------------- loss


# ---------------------------------------------------------------------------------------------- metrics


def _hand_scores(trainer: Trainer, data, normalizer: ConvLSTMNormalizer) -> dict[str, float]:  # type: ignore[no-untyped-def]
    predicted = predict_windows(trainer.model, data, data.downstream_columns, CPU, batch_size=3).double()
    targets = torch.stack([data[i][1] for i in range(len(data))]).double()
    std = float(normalizer.stds["precipitation"])
    predicted_mm = np.expm1(predicted.numpy() * std).clip(min=0)  # the inverse of log1p / std, by hand
    targets_mm = np.expm1(targets.numpy() * std).clip(min=0)
    error = predicted_mm - targets_mm
    threshold = math.log1p(trainer.config.high_precip_threshold) / std
    weight = np.where(targets.numpy() >= threshold, trainer.config.high_precip_weight, 1.0)
    return {"loss": float(np.mean(weight * (predicted.numpy() - targets.numpy()) ** 2)),
            "rmse_mm": float(np.sqrt(np.mean(error**2))), "mae_mm": float(np.mean(np.abs(error)))}


@pytest.mark.parametrize("include_upstream", [False, True], ids=["baseline", "upstream"])
def test_evaluate_matches_a_hand_computation_in_mm(tiny_nc: Path, tmp_path: Path, include_upstream: bool) -> None:
    prepared = prepare(tiny_nc, include_upstream)
    # batch size 2 over 5 windows: uneven batches must still give the mean over all cells
    trainer = make_trainer(prepared, tmp_path, batch_size=2, high_precip_threshold=2.0)
    trainer.fit(prepared.train, prepared.val)  # one trained epoch, so predictions are not just the initial bias
    for data in (prepared.val, prepared.test):
        scores = trainer.evaluate(data)
        expected = _hand_scores(trainer, data, prepared.normalizer)
        assert scores["rmse_mm"] == pytest.approx(expected["rmse_mm"], rel=1e-4)
        assert scores["mae_mm"] == pytest.approx(expected["mae_mm"], rel=1e-4)
        assert scores["loss"] == pytest.approx(expected["loss"], rel=1e-4)
        assert scores["rmse_mm"] > 0 and scores["rmse_mm"] >= scores["mae_mm"]


# ---------------------------------------------------------------------------------------------- baseline vs upstream


def test_loss_and_metrics_ignore_the_upstream_columns(tiny_nc: Path, tmp_path: Path) -> None:
    """NaN in every upstream column of the model output changes nothing: training and scoring crop the
    output to the downstream columns before the loss and the metrics."""
    prepared = prepare(tiny_nc, include_upstream=True)
    clean = make_trainer(prepared, tmp_path / "clean", num_epochs=1)
    poisoned = make_trainer(prepared, tmp_path / "poisoned", num_epochs=1)
    shapes: list[tuple[int, ...]] = []

    def nan_upstream(module, inputs, output):  # type: ignore[no-untyped-def]
        shapes.append(tuple(output.shape))
        output = output.clone()
        output[..., :W_UP] = float("nan")
        return output

    poisoned.model.register_forward_hook(nan_upstream)
    clean_state = clean.fit(prepared.train, prepared.val)
    poisoned_state = poisoned.fit(prepared.train, prepared.val)  # would raise TrainingDiverged if NaN were scored
    assert shapes and all(shape[-1] == W_UP + W_DOWN for shape in shapes)
    assert without_timing(poisoned_state.history) == without_timing(clean_state.history)
    assert poisoned.evaluate(prepared.test) == clean.evaluate(prepared.test)
    assert all(math.isfinite(value) for value in poisoned.evaluate(prepared.test).values())


def test_baseline_and_upstream_train_through_run_training(tiny_nc: Path, tmp_path: Path) -> None:
    outcome = train(tmp_path / "up", tiny_nc, include_upstream=True, num_epochs=1)
    assert outcome.data_info["input_width"] == W_UP + W_DOWN
    assert outcome.data_info["downstream_columns"] == f"{W_UP}:{W_UP + W_DOWN}"
    last = load_checkpoint(tmp_path / "up" / LAST_NAME)
    assert last["include_upstream"] is True
    model = ConvLSTMUNet(56, [4, 8], 1, 3)
    model.load_state_dict(last["model_state_dict"])
    assert all(math.isfinite(value) for value in outcome.test_scores.values())

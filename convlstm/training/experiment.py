"""One training experiment end to end: data → model → training → test scores → figures.

The ``train`` entry point builds ``TrainOptions`` from its flags and calls ``run_training``; the
tests call it directly. MLflow is not imported: ``convlstm.tracking`` passes a callback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlstm.atomic import atomic_write_bytes
from convlstm.config import ConvLSTMConfig
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.dataset import ConvLSTMDataset
from convlstm.data.prepare import PreparedData, prepare_data
from convlstm.data.regions import RegionConfig, crop_regions
from convlstm.data.stacking import stack_channels
from convlstm.data.synthetic import demo_data_path
from convlstm.model import ConvLSTMUNet
from convlstm.predict import predict_windows
from convlstm.training.checkpoint import BEST_NAME, library_versions, load_checkpoint
from convlstm.training.device import select_device
from convlstm.training.trainer import Trainer, TrainingCallback, TrainingState

logger = logging.getLogger(__name__)

NORMALIZER_NAME = "normalizer.pkl"
CONFIG_NAME = "config.json"
LOSS_CURVE_NAME = "loss_curve.png"
MAPS_NAME = "precipitation_maps.png"


@dataclass
class TrainOptions:
    """Everything one training run needs; flat names match the CLI flags and MLflow params."""

    output_dir: Path
    config: ConvLSTMConfig = field(default_factory=ConvLSTMConfig)
    regions: RegionConfig = field(default_factory=RegionConfig)
    include_upstream: bool = False
    data: Path | None = None  # None: the built-in demo atmosphere
    device: str = "auto"
    num_workers: int = 0
    pin_memory: bool = False
    nan_policy: str = "raise"
    resume_from: Path | None = None  # a checkpoint to continue from
    run_id: str | None = None  # the MLflow run, recorded in checkpoints so a resume continues it

    @property
    def experiment_type(self) -> str:
        return "upstream" if self.include_upstream else "baseline"

    def to_params(self) -> dict[str, Any]:
        """Flat, CLI-named settings (the same keys for every run, so runs compare in the MLflow UI)."""
        config = self.config.to_dict()
        config["hidden_channels"] = " ".join(map(str, config["hidden_channels"]))
        return {
            "data": str(self.data) if self.data else "demo",
            "include_upstream": str(self.include_upstream).lower(),  # as `mlflow run -P` logs it
            **self.regions.to_dict(),
            **config,
            "device": self.device,
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "nan_policy": self.nan_policy,
        }

    def checkpoint_metadata(self) -> dict[str, Any]:
        """What a checkpoint needs to rebuild the model and resume this run without the command line."""
        return {
            "config": self.config.to_dict(),
            "region_config": self.regions.to_dict(),
            "include_upstream": self.include_upstream,
            "data": str(self.data) if self.data else None,
            "options": {"device": self.device, "num_workers": self.num_workers, "pin_memory": self.pin_memory,
                        "nan_policy": self.nan_policy},
            "run_id": self.run_id,
            "output_dir": str(self.output_dir),
        }

    @classmethod
    def from_checkpoint(cls, path: Path, output_dir: Path | None = None) -> "TrainOptions":
        """Options of the run that wrote ``path``, set to resume from it."""
        state = load_checkpoint(path)
        return cls(
            output_dir=output_dir or Path(state.get("output_dir") or path.parent),
            config=ConvLSTMConfig.from_dict(state["config"]),
            regions=RegionConfig.from_dict(state["region_config"]),
            include_upstream=bool(state["include_upstream"]),
            data=Path(state["data"]) if state.get("data") else None,
            resume_from=path,
            run_id=state.get("run_id"),
            **state.get("options", {}),
        )


@dataclass
class TrainingOutcome:
    """What a finished run produced: final state, scores of the best model, and the files written."""

    state: TrainingState
    test_scores: dict[str, float]
    files: list[Path]
    data_info: dict[str, Any]
    input_example: np.ndarray  # one raw window [1, T, C, H, W] in physical units, for the served model


def file_digest(path: Path) -> str:
    """Short SHA-256 of a file: identifies the exact data a run trained on."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def describe_data(path: Path, prepared: PreparedData) -> dict[str, Any]:
    """Provenance and derived shapes, logged as params: where the data came from and what the model sees."""
    train = prepared.train
    times = prepared.data["time"].values
    columns = train.downstream_columns
    return {
        "data_path": str(path),
        "data_digest": file_digest(path),
        "data_time_start": str(np.datetime_as_string(times[0], unit="h")),
        "data_time_end": str(np.datetime_as_string(times[-1], unit="h")),
        "n_levels": len(train.levels),
        "levels": " ".join(f"{level:g}" for level in train.levels),
        "input_channels": train.inputs.shape[1],
        "input_height": train.inputs.shape[2],
        "input_width": train.inputs.shape[3],
        "downstream_columns": f"{columns.start}:{columns.stop}",
        **{f"n_windows_{name}": len(ds) if ds is not None else 0 for name, ds in prepared.datasets.items()},
        **{f"version_{name}": version for name, version in library_versions().items()},
    }


def input_grid(dataset: ConvLSTMDataset) -> dict[str, Any]:
    """The grid the model was trained on: what inference and the pyfunc model check requests against."""
    columns = dataset.downstream_columns
    return {"lat": dataset.lat.tolist(), "lon": dataset.lon.tolist(), "levels": dataset.levels.tolist(),
            "downstream_columns": [columns.start, columns.stop]}


def run_training(options: TrainOptions, callbacks: list[TrainingCallback] | None = None,
                 on_data_ready: Callable[[dict[str, Any]], None] | None = None) -> TrainingOutcome:
    """Train one experiment; ``on_data_ready(data_info)`` is called once the data is prepared."""
    callbacks = callbacks or []
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = options.config
    torch.manual_seed(config.seed)
    device = select_device(options.device)
    data_path = Path(options.data) if options.data else demo_data_path()

    resumed_normalizer = None
    if options.resume_from:
        resumed_normalizer = ConvLSTMNormalizer.from_dict(load_checkpoint(options.resume_from)["normalizer"])
    prepared = prepare_data(
        data_path, options.regions, options.include_upstream, config.window_size, config.target_offset,
        config.train_ratio, config.val_ratio, normalizer=resumed_normalizer, nan_policy=options.nan_policy,  # type: ignore[arg-type]
    )
    data_info = describe_data(data_path, prepared)
    config = dataclasses.replace(config, input_channels=int(data_info["input_channels"]))
    options = dataclasses.replace(options, config=config)
    if on_data_ready is not None:
        on_data_ready(data_info)
    logger.info("%s experiment on %s: input %s×%s×%s, windows train/val/test = %s/%s/%s, device %s",
                options.experiment_type, data_path, data_info["input_channels"], data_info["input_height"],
                data_info["input_width"], data_info["n_windows_train"], data_info["n_windows_val"],
                data_info["n_windows_test"], device)

    prepared.normalizer.save(output_dir / NORMALIZER_NAME)
    atomic_write_bytes(output_dir / CONFIG_NAME, json.dumps(
        {**options.checkpoint_metadata(), "data_info": data_info}, indent=2, default=str).encode())

    model = ConvLSTMUNet(config.input_channels, config.hidden_channels, config.output_channels, config.kernel_size)
    trainer = Trainer(
        model, config, prepared.normalizer, prepared.train.downstream_columns, device, output_dir,
        metadata={**options.checkpoint_metadata(), "normalizer": prepared.normalizer.to_dict(),
                  "data_digest": data_info["data_digest"], "input_grid": input_grid(prepared.train)},
        callbacks=callbacks, num_workers=options.num_workers, pin_memory=options.pin_memory,
    )
    if options.resume_from:
        trainer.restore(Path(options.resume_from))
    state = trainer.fit(prepared.train, prepared.val)

    best = load_checkpoint(output_dir / BEST_NAME, map_location=device)
    model.load_state_dict(best["model_state_dict"])
    test_scores = {}
    if prepared.test is not None:
        test_scores = {f"test_{key}": value for key, value in trainer.evaluate(prepared.test).items()}
        logger.info("Best model (epoch %d) on the test split: RMSE %.3f mm, MAE %.3f mm",
                    state.best_epoch, test_scores["test_rmse_mm"], test_scores["test_mae_mm"])
    files = [output_dir / NORMALIZER_NAME, output_dir / CONFIG_NAME]
    files += _figures(output_dir, state, prepared, model, trainer, options)
    return TrainingOutcome(state, test_scores, files, data_info, raw_window(prepared, options))


def raw_window(prepared: PreparedData, options: TrainOptions) -> np.ndarray:
    """The first validation window in physical units, stacked as the served model expects it."""
    crop = crop_regions(prepared.splits["val"], options.regions, options.include_upstream).data
    return stack_channels(crop, time_slice=slice(0, options.config.window_size))[None]


def _figures(output_dir: Path, state: TrainingState, prepared: PreparedData, model: torch.nn.Module,
             trainer: Trainer, options: TrainOptions) -> list[Path]:
    """Loss curve and observed / predicted / error maps for a few validation times (best model)."""
    from convlstm.plotting import plot_loss_curve, plot_precipitation_maps, save_figure

    val = prepared.val
    predicted = predict_windows(model, val, val.downstream_columns, trainer.device, options.config.batch_size, trainer.amp_dtype)
    predicted_mm = prepared.normalizer.denormalize_tensor(predicted, val.lat, val.downstream_lon, val.target_times)["precipitation"]
    observed = prepared.normalizer.denormalize_tensor(
        torch.from_numpy(val.inputs[val.target_indices, -1]), val.lat, val.lon, val.target_times)["precipitation"]
    regions = options.regions
    box = (regions.downstream_lat_min, regions.downstream_lat_max, regions.downstream_lon_min, regions.downstream_lon_max)
    maps = plot_precipitation_maps(observed, predicted_mm, box,
                                   title=f"{options.experiment_type}: validation, best epoch {state.best_epoch}")
    return [save_figure(plot_loss_curve(state.history), output_dir / LOSS_CURVE_NAME),
            save_figure(maps, output_dir / MAPS_NAME)]

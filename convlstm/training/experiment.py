"""One training experiment end to end: data → model → training → test scores → figures.

``convlstm.tracking.training`` calls ``run_training`` inside an MLflow run; the tests call it directly.
MLflow is not imported here: the tracker is one of the trainer's callbacks.

With several training processes (``torchrun``) every process calls ``run_training``; rank 0's settings, data and
run id are the ones used (the others' arguments are replaced by them), and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlstm.atomic import atomic_write_bytes, check_writable
from convlstm.checkpoint import BEST_NAME, checkpoint_space, library_versions, load_checkpoint
from convlstm.config import ConvLSTMConfig, RegionConfig, TrainSettings
from convlstm.data.dataset import WindowDataset
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.prepare import PreparedData, prepare_data
from convlstm.data.provenance import source_digest
from convlstm.data.regions import crop_regions
from convlstm.data.stacking import stack_channels
from convlstm.device import select_device
from convlstm.errors import ConfigError
from convlstm.forecast import predict_windows
from convlstm.model import ConvLSTMUNet
from convlstm.training.distributed import DistributedContext
from convlstm.training.trainer import Trainer, TrainingCallback, TrainingState

logger = logging.getLogger(__name__)

NORMALIZER_NAME = "normalizer.pkl"
CONFIG_NAME = "config.json"
LOSS_CURVE_NAME = "loss_curve.png"
MAPS_NAME = "precipitation_maps.png"


def checkpoint_metadata(settings: TrainSettings, run_id: str | None) -> dict[str, Any]:
    """What a checkpoint needs to rebuild the model and resume the run without the command line.

    Parameters
    ----------
    settings : TrainSettings
        The run's settings (paths absolute).
    run_id : str, optional
        The MLflow run, so that a resume continues it.

    Returns
    -------
    dict
        ``config`` and ``region_config`` (what ``load_forecast_model`` reads), ``include_upstream``,
        ``data``, ``output_dir``, the remaining settings as ``options``, and ``run_id``.
    """
    options = settings.to_dict()
    for launch_only in ("resume", "nproc_per_node", "master_port"):  # how this launch ran, not what the run is
        options.pop(launch_only, None)
    return {"config": options.pop("model"), "region_config": options.pop("regions"),
            "include_upstream": options.pop("include_upstream"), "data": options.pop("data"),
            "output_dir": options.pop("output_dir"), "options": options, "run_id": run_id}


def settings_from_checkpoint(path: Path, output_dir: str | None = None,
                             num_epochs: int | None = None) -> tuple[TrainSettings, str | None]:
    """The settings and MLflow run id of the run that wrote ``path``, set to resume from it.

    Parameters
    ----------
    path : pathlib.Path
        A checkpoint written by training.
    output_dir : str, optional
        Where the resumed run writes (default: where the run wrote).
    num_epochs : int, optional
        Epochs to train in all instead of the checkpoint's (more than it has trained): how a run that
        ended is continued.

    Returns
    -------
    tuple
        The settings (``resume`` set to ``path``) and the run id (None if the run was not tracked).
    """
    state = load_checkpoint(path)
    config = state["config"]
    if num_epochs is not None:
        done = state["training_state"]["epoch"]
        if num_epochs <= done:
            raise ConfigError(f"--num-epochs {num_epochs}: {path} has already trained {done} epoch{'s' * (done != 1)}; "
                              f"pass more than {done} to continue it, or leave --num-epochs out.", "num_epochs")
        config = {**config, "num_epochs": num_epochs}
    options = {**state.get("options", {}), "resume": str(path)}
    settings = TrainSettings(model=ConvLSTMConfig.from_dict(config),
                             regions=RegionConfig.from_dict(state["region_config"]),
                             include_upstream=bool(state["include_upstream"]), data=state.get("data"),
                             output_dir=output_dir or state.get("output_dir") or str(path.parent), **options)
    return settings, state.get("run_id")


def new_run_settings(settings: TrainSettings) -> TrainSettings:
    """``settings`` with absolute paths (a checkpoint must find them from any directory) and the default
    output directory ``outputs/<baseline|upstream>-<time>``; an output directory holding files is refused.

    Parameters
    ----------
    settings : TrainSettings
        As given on the command line.

    Returns
    -------
    TrainSettings
        A copy ready for :func:`run_training`.
    """
    output_dir = Path(settings.output_dir or Path("outputs") / f"{settings.experiment_type}-{time.strftime('%Y%m%d-%H%M%S')}")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise ConfigError(f"--output-dir {output_dir} already holds files; choose a new directory, or --resume that run.",
                          "output_dir")
    return dataclasses.replace(settings, output_dir=str(output_dir.resolve()),
                               data=str(Path(settings.data).resolve()) if settings.data else None)


@dataclass
class TrainingOutcome:
    """What a finished run produced: final state, scores of the best model, and the files written.

    Parameters
    ----------
    state : TrainingState
        Epochs, best validation loss and history at the end of training.
    test_scores : dict of str to float
        The best model's ``test_*`` scores (mm); empty when the test split holds no window.
    files : list of pathlib.Path
        Normalizer, config and figures, to log as artifacts (the checkpoints are logged as they are written).
    data_info : dict
        What :func:`describe_data` returned.
    input_example : numpy.ndarray
        One raw window ``[1, T, C, H, W]`` in physical units, for the served model's signature.
    settings : TrainSettings, optional
        The settings it ran with (shapes and split from the data; rank 0's with several processes).
    run_id : str, optional
        The MLflow run it was recorded in (rank 0's).
    """

    state: TrainingState
    test_scores: dict[str, float]
    files: list[Path]
    data_info: dict[str, Any]
    input_example: np.ndarray  # one raw window [1, T, C, H, W] in physical units, for the served model
    settings: TrainSettings | None = None
    run_id: str | None = None


def describe_data(source: str, prepared: PreparedData) -> dict[str, Any]:
    """Provenance and derived shapes, logged as params: where the data came from and what the model sees.

    Parameters
    ----------
    source : str
        The data: raw input (files, glob, folder, list, Zarr) or a prepared store.
    prepared : PreparedData
        The data prepared from it.

    Returns
    -------
    dict
        Path, digest, time span, levels, input shape, downstream columns, windows per split and
        library versions.
    """
    train = prepared.train
    times = prepared.data["time"].values
    columns = train.downstream_columns
    _, channels, height, width = train.input_shape
    return {
        "data_path": source,
        "data_digest": source_digest(source),
        "data_time_start": str(np.datetime_as_string(times[0], unit="h")),
        "data_time_end": str(np.datetime_as_string(times[-1], unit="h")),
        "n_levels": len(train.levels),
        "levels": " ".join(f"{level:g}" for level in train.levels),
        "input_channels": channels,
        "input_height": height,
        "input_width": width,
        "downstream_columns": f"{columns.start}:{columns.stop}",
        **{f"n_windows_{name}": len(ds) if ds is not None else 0 for name, ds in prepared.datasets.items()},
        **{f"version_{name}": version for name, version in library_versions().items()},
    }


def input_grid(dataset: WindowDataset) -> dict[str, Any]:
    """The grid the model was trained on: what inference and the pyfunc model check requests against.

    Parameters
    ----------
    dataset : WindowDataset
        The training windows.

    Returns
    -------
    dict
        ``lat``, ``lon`` (degrees), ``levels`` (hPa) as lists and ``downstream_columns`` as
        ``[start, stop]``: plain values, for the checkpoint.
    """
    columns = dataset.downstream_columns
    return {"lat": dataset.lat.tolist(), "lon": dataset.lon.tolist(), "levels": dataset.levels.tolist(),
            "downstream_columns": [columns.start, columns.stop]}


def run_training(settings: TrainSettings, data: str, *, run_id: str | None = None,
                 callbacks: Sequence[TrainingCallback] = (),
                 on_data_ready: Callable[[dict[str, Any]], None] | None = None,
                 extend: bool = False) -> TrainingOutcome:
    """Train one experiment: data → model → training → test scores → figures.

    Parameters
    ----------
    settings : TrainSettings
        With an absolute ``output_dir`` (see :func:`new_run_settings`); ``settings.resume``, a checkpoint
        file, continues from it.
    data : str
        The data (``settings.data``, or the demo atmosphere's file when that is None): raw input in any form
        ``open_dataset`` takes, or a prepared store.
    run_id : str, optional
        The MLflow run, recorded in checkpoints so a resume continues it.
    callbacks : sequence of TrainingCallback
        Receive the trainer's events (the MLflow tracker is one).
    on_data_ready : callable, optional
        Called with the data description (provenance, shapes) once the data is prepared.
    extend : bool
        With ``resume``: more epochs were asked for (``settings.model.num_epochs`` replaces the
        checkpoint's), so the schedule is stretched over them and early stopping re-armed
        (:meth:`~convlstm.training.trainer.Trainer.extend`).

    Returns
    -------
    TrainingOutcome
        The final state, the best model's test scores, the files written and a raw input window.

    Raises
    ------
    LostProcess
        With several processes, when another of them stopped.
    """
    processes = DistributedContext.current()
    with processes.naming_lost_processes():
        return _run_training(processes, settings, data, run_id, callbacks, on_data_ready, extend)


def _run_training(processes: DistributedContext, settings: TrainSettings, data: str, run_id: str | None,
                  callbacks: Sequence[TrainingCallback], on_data_ready: Callable[[dict[str, Any]], None] | None,
                  extend: bool) -> TrainingOutcome:
    """:func:`run_training` in one of ``processes`` (rank 0 decides what is trained and writes the files)."""
    settings, data, run_id, extend = processes.share((settings, data, run_id, extend))
    output_dir = Path(str(settings.output_dir))
    main = processes.is_main
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    config = settings.model
    if config.batch_size < processes.world_size:  # every process would meet it: refused by all alike
        raise ConfigError(f"--batch-size {config.batch_size} is smaller than the {processes.world_size} training "
                          "processes: each optimizer step's batch is split among them; use a larger --batch-size or "
                          "fewer processes.", "batch_size")
    torch.manual_seed(config.seed)
    device = processes.device(select_device(settings.device))
    resume_from = Path(settings.resume) if settings.resume else None
    # rank 0 reads the checkpoint (it may have been fetched from the run's artifacts where only rank 0 can see it)
    resumed = processes.share(load_checkpoint(resume_from) if resume_from and main else None)
    resumed_normalizer = ConvLSTMNormalizer.from_dict(resumed["normalizer"]) if resumed else None
    prepared = prepare_data(
        data, settings.regions, settings.include_upstream, config.window_size, config.target_offset,
        config.train_ratio, config.val_ratio, normalizer=resumed_normalizer, nan_policy=settings.nan_policy,  # type: ignore[arg-type]
        time_step=config.time_step, member=settings.member,
    )
    data_info = describe_data(data, prepared)
    # the split used: a prepared store keeps its own, and inference must cut the same
    settings = dataclasses.replace(settings, model=dataclasses.replace(
        config, input_channels=int(data_info["input_channels"]), train_ratio=prepared.train_ratio,
        val_ratio=prepared.val_ratio))
    config = settings.model
    if on_data_ready is not None:
        on_data_ready(data_info)
    where = f" (rank {processes.rank} of {processes.world_size} processes, {processes.backend})"
    logger.info("%s experiment on %s: input %s×%s×%s, windows train/val/test = %s/%s/%s, device %s%s",
                settings.experiment_type, data, data_info["input_channels"], data_info["input_height"],
                data_info["input_width"], data_info["n_windows_train"], data_info["n_windows_val"],
                data_info["n_windows_test"], device, where if processes.is_distributed else "")

    model = ConvLSTMUNet(config.input_channels, config.hidden_channels, config.output_channels, config.kernel_size)
    metadata = checkpoint_metadata(settings, run_id)
    if main:
        space = checkpoint_space(model, config.num_epochs, config.checkpoint_frequency)
        check_writable(output_dir, space, "output_dir")
        prepared.normalizer.save(output_dir / NORMALIZER_NAME)
        atomic_write_bytes(output_dir / CONFIG_NAME,
                           json.dumps({**metadata, "data_info": data_info}, indent=2, default=str).encode())

    trainer = Trainer(
        model, config, prepared.normalizer, prepared.train.downstream_columns, device, output_dir,
        metadata={**metadata, "normalizer": prepared.normalizer.to_dict(),
                  "data_digest": data_info["data_digest"], "input_grid": input_grid(prepared.train)},
        callbacks=callbacks, num_workers=settings.num_workers, pin_memory=settings.pin_memory, distributed=processes,
    )
    if resume_from:
        trainer.restore(resume_from, resumed)
        if extend:
            trainer.extend()
    state = trainer.fit(prepared.train, prepared.val)

    if main:
        model.load_state_dict(load_checkpoint(output_dir / BEST_NAME, map_location=device)["model_state_dict"])
    processes.share_weights(model)
    test_scores = {}
    if prepared.test is not None:
        test_scores = {f"test_{key}": value for key, value in trainer.evaluate(prepared.test).items()}
        logger.info("Best model (epoch %d) on the test split: RMSE %.3f mm, MAE %.3f mm",
                    state.best_epoch, test_scores["test_rmse_mm"], test_scores["test_mae_mm"])
    files = [output_dir / NORMALIZER_NAME, output_dir / CONFIG_NAME] if main else []
    if settings.visualize and main:
        files += _figures(output_dir, state, prepared, model, trainer, settings)
    return TrainingOutcome(state, test_scores, files, data_info, raw_window(prepared, settings), settings, run_id)


def raw_window(prepared: PreparedData, settings: TrainSettings) -> np.ndarray:
    """The first validation window (of those kept) in physical units, stacked as the served model expects it.

    Parameters
    ----------
    prepared : PreparedData
        The prepared data.
    settings : TrainSettings
        The run's settings (regions and window size).

    Returns
    -------
    numpy.ndarray
        ``[1, T, C, H, W]`` float32.
    """
    crop = crop_regions(prepared.splits["val"], settings.regions, settings.include_upstream).data
    start = int(prepared.val.starts[0])
    return stack_channels(crop, time_slice=slice(start, start + settings.model.window_size))[None]


def _figures(output_dir: Path, state: TrainingState, prepared: PreparedData, model: torch.nn.Module,
             trainer: Trainer, settings: TrainSettings) -> list[Path]:
    """Loss curve and observed / predicted / error maps for a few validation times (best model)."""
    from convlstm.plotting import plot_loss_curve, plot_precipitation_maps, save_figure

    val = prepared.val
    predicted = predict_windows(model, val, val.downstream_columns, trainer.device, settings.model.batch_size, trainer.amp_dtype)
    predicted_mm = prepared.normalizer.denormalize_tensor(predicted, val.lat, val.downstream_lon, val.target_times)["precipitation"]
    observed = prepared.normalizer.denormalize_tensor(
        torch.from_numpy(val.observed_precipitation()), val.lat, val.lon, val.target_times)["precipitation"]
    maps = plot_precipitation_maps(observed, predicted_mm, settings.regions.downstream_box,
                                   title=f"{settings.experiment_type}: validation, best epoch {state.best_epoch}")
    return [save_figure(plot_loss_curve(state.history), output_dir / LOSS_CURVE_NAME),
            save_figure(maps, output_dir / MAPS_NAME)]

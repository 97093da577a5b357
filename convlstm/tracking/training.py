"""A training run in MLflow: params, per-epoch metrics (step = epoch), checkpoints, figures, the data
input, and the model packaged with its normalizer and registered."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.tracking import MlflowClient

from convlstm.checkpoint import BEST_NAME, load_checkpoint
from convlstm.cli import configure_logging
from convlstm.config import TrainSettings
from convlstm.data.demo import demo_data_path
from convlstm.errors import ConfigError, TrackingError
from convlstm.training.experiment import (
    NORMALIZER_NAME,
    TrainingOutcome,
    new_run_settings,
    run_training,
    settings_from_checkpoint,
)
from convlstm.training.trainer import TrainingCallback, TrainingState
from convlstm.tracking.registry import describe_version
from convlstm.tracking.runs import log_new_params, managed_run, settings_params, timestamped
from convlstm.tracking.store import check_tracking_store
from convlstm.tracking.uris import CHECKPOINT_ARTIFACTS, resolve_resume

logger = logging.getLogger(__name__)


class MlflowTracker(TrainingCallback):
    """Turns trainer events into MLflow metrics (step = epoch) and checkpoint artifacts.

    Parameters
    ----------
    run_id : str
        The active run.
    settings : TrainSettings
        The run's settings (logged as params once the data is known).
    """

    def __init__(self, run_id: str, settings: TrainSettings) -> None:
        self.run_id = run_id
        self.settings = settings

    def on_data_ready(self, data_info: dict[str, Any]) -> None:
        """Log every setting and the derived shapes as params, and the data file as the run's input.

        Parameters
        ----------
        data_info : dict
            What ``describe_data`` returned (path, digest, shapes).
        """
        params = {**settings_params(self.settings), "data": self.settings.data or "demo", **data_info}
        log_new_params(self.run_id, params)
        source = LocalArtifactDatasetSource(str(Path(data_info["data_path"]).resolve()))
        mlflow.log_input(MetaDataset(source, name=Path(data_info["data_path"]).name, digest=data_info["data_digest"]),
                         context="training")

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log the epoch's metrics at step ``epoch``.

        Parameters
        ----------
        epoch : int
            The epoch just finished.
        metrics : dict of str to float
            Losses, scores and timings.
        """
        mlflow.log_metrics(metrics, step=epoch)

    def on_checkpoint(self, path: Path) -> None:
        """Log the checkpoint file as an artifact under ``checkpoints/``.

        Parameters
        ----------
        path : pathlib.Path
            The file just written.
        """
        mlflow.log_artifact(str(path), CHECKPOINT_ARTIFACTS)

    def backfill_history(self, history: list[dict[str, float]]) -> None:
        """Log the epochs a killed run recorded in its checkpoint but not yet in MLflow (none twice).

        Parameters
        ----------
        history : list of dict
            The checkpoint's ``training_state["history"]``.
        """
        logged = {m.step for m in MlflowClient().get_metric_history(self.run_id, "val_loss")}
        for row in history:
            if int(row["epoch"]) not in logged:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def log_outcome(self, outcome: TrainingOutcome) -> None:
        """Final metrics, the run's files, and the model packaged with its normalizer (and registered).

        Parameters
        ----------
        outcome : TrainingOutcome
            What :func:`~convlstm.training.experiment.run_training` returned.
        """
        from convlstm.pyfunc import log_pyfunc_model

        state = outcome.state
        mlflow.log_metrics({"best_epoch": state.best_epoch, "best_val_loss": state.best_val_loss,
                            "epochs_trained": state.epoch, **outcome.test_scores})
        mlflow.set_tag("stopped_early", str(state.stopped_early).lower())
        for path in outcome.files:
            mlflow.log_artifact(str(path))
        output_dir, name = Path(str(self.settings.output_dir)), self.settings.registered_model_name or None
        info = log_pyfunc_model(output_dir / BEST_NAME, output_dir / NORMALIZER_NAME, outcome.input_example, name)
        if name and info.registered_model_version is not None:
            describe_version(name, str(info.registered_model_version), self.run_id, self.settings.experiment_type,
                             outcome.test_scores.get("test_rmse_mm", float("nan")))


@dataclass
class TrackedTraining:
    """What ``train_tracked`` did: the run, its settings and where its files are.

    Parameters
    ----------
    run_id : str
        The MLflow run.
    settings : TrainSettings
        The settings it ran with (paths absolute).
    outcome : TrainingOutcome
        What training produced.
    """

    run_id: str
    settings: TrainSettings
    outcome: TrainingOutcome

    @property
    def output_dir(self) -> Path:
        """Where the run wrote its checkpoints, log and figures."""
        return Path(str(self.settings.output_dir))


def train_tracked(settings: TrainSettings, num_epochs: int | None = None, nested: bool = False,
                  callbacks: Sequence[TrainingCallback] = (), tags: dict[str, str] | None = None) -> TrackedTraining:
    """Train one experiment inside an MLflow run (a new one, or the one a resumed checkpoint belongs to).

    Parameters
    ----------
    settings : TrainSettings
        As given on the command line; with ``resume``, the run's own settings are taken from its
        checkpoint (only ``output_dir`` and ``log_level`` may change).
    num_epochs : int, optional
        With ``resume``: the epochs to train in all instead of the checkpoint's (``--num-epochs`` given),
        which continues a run that ended. A FINISHED run resumed without it is refused: there is nothing
        left to train, and finishing it again would log its final metrics twice and register a second
        copy of its model.
    nested : bool
        Train as a child run of the active run (one seed of an ensemble, :mod:`convlstm.tracking.ensemble`;
        a sweep's trial, :mod:`convlstm.tracking.sweep`).
    callbacks : sequence of TrainingCallback
        Further trainer callbacks, after the MLflow tracker (a sweep's pruner: it sees the epoch logged).
    tags : dict of str to str, optional
        Further tags of the run (a sweep's trial number), set when it starts.

    Returns
    -------
    TrackedTraining
        The run id, the settings it ran with and the training outcome.
    """
    from convlstm.tracking.distributed import follow_training, is_follower

    if is_follower():  # a training process other than rank 0: trains what rank 0 trains, logs nothing
        return follow_training(settings)
    run_id, extend = None, False
    if settings.resume:
        configure_logging(settings.log_level)  # resolving may warn before the run's log file is known
        checkpoint = resolve_resume(settings.resume)
        resumed, run_id = settings_from_checkpoint(checkpoint, settings.output_dir, num_epochs)
        trained = TrainingState(**load_checkpoint(checkpoint)["training_state"])
        extend = num_epochs is not None
        if run_id:
            ended = not extend and trained.ended(resumed.model.num_epochs)
            _check_resumable(settings.resume, run_id, trained.epoch if ended else None)
        settings = dataclasses.replace(resumed, log_level=settings.log_level)
    else:
        settings = new_run_settings(settings)
    check_tracking_store()  # after the refusals (they leave nothing behind), before any work
    log_path = Path(str(settings.output_dir)) / "training.log"
    configure_logging(settings.log_level, log_path)
    data = settings.data or str(demo_data_path())
    tags = {"experiment_type": settings.experiment_type, "include_upstream": str(settings.include_upstream).lower(),
            "run_type": "training", **({"num_epochs_extended_to": str(num_epochs)} if extend else {}),
            **({"seed": str(settings.model.seed)} if nested else {}), **(tags or {})}  # set before anything can fail
    name = f"{settings.experiment_type}-seed{settings.model.seed}" if nested else settings.experiment_type
    with managed_run(run_id, None if run_id else timestamped(name), settings.experiment_name, tags,
                     log_path, system_metrics=True, nested=nested) as run:
        tracker = MlflowTracker(run.info.run_id, settings)
        if settings.resume:
            tracker.backfill_history(trained.history)
        outcome = run_training(settings, data, run_id=run.info.run_id, callbacks=[tracker, *callbacks],
                               on_data_ready=tracker.on_data_ready, extend=extend)
        tracker.log_outcome(outcome)
    return TrackedTraining(run.info.run_id, settings, outcome)


def _check_resumable(resume: str, run_id: str, ended_after: int | None) -> None:
    """Refuse a run this tracking store does not hold, and a run whose training ended (after
    ``ended_after`` epochs; None while epochs remain or more were asked for) and that FINISHED; a run
    that failed after its last epoch (e.g. while registering its model) may be resumed to finish it."""
    try:
        status = MlflowClient().get_run(run_id).info.status
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for an unknown id
        raise TrackingError(f"--resume {resume}: the checkpoint belongs to run {run_id}, which is not in the tracking "
                            f"store {mlflow.get_tracking_uri()}; set MLFLOW_TRACKING_URI to the store it was "
                            "trained with.") from exc
    if status == "FINISHED" and ended_after is not None:
        raise ConfigError(f"--resume {resume}: run {run_id} already FINISHED after {ended_after} "
                          f"epoch{'s' * (ended_after != 1)}; pass --num-epochs M (> {ended_after}) to continue it.",
                          "resume")

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
from convlstm.tracking.journal import SYNC_HINT, Journal
from convlstm.tracking.record import RunRecord, recorded_run
from convlstm.tracking.runs import settings_params, timestamped
from convlstm.tracking.store import StoreUnreachable, check_tracking_store
from convlstm.tracking.uris import CHECKPOINT_ARTIFACTS, resolve_resume

logger = logging.getLogger(__name__)


class MlflowTracker(TrainingCallback):
    """Turns trainer events into the run's record: metrics (step = epoch) and checkpoint artifacts, appended
    to the journal and sent in the background (:mod:`convlstm.tracking.record`), so no epoch waits for the server.

    Parameters
    ----------
    record : RunRecord
        The run's record.
    settings : TrainSettings
        The run's settings (logged as params once the data is known).
    """

    def __init__(self, record: RunRecord, settings: TrainSettings) -> None:
        self.record = record
        self.settings = settings

    def on_data_ready(self, data_info: dict[str, Any]) -> None:
        """Log every setting and the derived shapes as params, and the data file as the run's input.

        Parameters
        ----------
        data_info : dict
            What ``describe_data`` returned (path, digest, shapes).
        """
        self.record.log_params({**settings_params(self.settings), "data": self.settings.data or "demo", **data_info})
        path = Path(data_info["data_path"])
        self.record.log_input(path, path.name, data_info["data_digest"], "training")

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Log the epoch's metrics at step ``epoch``.

        Parameters
        ----------
        epoch : int
            The epoch just finished.
        metrics : dict of str to float
            Losses, scores and timings.
        """
        self.record.log_metrics(metrics, epoch)

    def on_checkpoint(self, path: Path) -> None:
        """Log the checkpoint file as an artifact under ``checkpoints/``.

        Parameters
        ----------
        path : pathlib.Path
            The file just written.
        """
        self.record.log_artifact(path, CHECKPOINT_ARTIFACTS)

    def log_outcome(self, outcome: TrainingOutcome) -> None:
        """Final metrics, the run's files, and the model packaged with its normalizer (and registered).

        Parameters
        ----------
        outcome : TrainingOutcome
            What :func:`~convlstm.training.experiment.run_training` returned.
        """
        state = outcome.state
        self.record.log_metrics({"best_epoch": state.best_epoch, "best_val_loss": state.best_val_loss,
                                 "epochs_trained": state.epoch, **outcome.test_scores}, step=0)
        self.record.set_tags({"stopped_early": str(state.stopped_early).lower()})
        for path in outcome.files:
            self.record.log_artifact(path)
        output_dir = Path(str(self.settings.output_dir))
        self.record.log_model(output_dir / BEST_NAME, output_dir / NORMALIZER_NAME, outcome.input_example,
                              self.settings.registered_model_name, self.settings.experiment_type,
                              outcome.test_scores.get("test_rmse_mm", float("nan")))


@dataclass
class TrackedTraining:
    """What ``train_tracked`` did: the run, its settings and where its files are.

    Parameters
    ----------
    run_id : str or None
        The MLflow run; None when the tracking server never answered (the run waits in the journal for ``sync``).
    settings : TrainSettings
        The settings it ran with (paths absolute).
    outcome : TrainingOutcome
        What training produced.
    pending : int
        Entries of the run's record not on the server yet (0: all sent).
    """

    run_id: str | None
    settings: TrainSettings
    outcome: TrainingOutcome
    pending: int = 0

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
        checkpoint (only ``output_dir``, ``log_level`` and ``upload_wait`` may change).
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
        run_id = run_id or _synced_run(checkpoint, settings.resume)
        trained = TrainingState(**load_checkpoint(checkpoint)["training_state"])
        extend = num_epochs is not None
        if run_id:
            ended = not extend and trained.ended(resumed.model.num_epochs)
            _check_resumable(settings.resume, run_id, trained.epoch if ended else None)
        settings = dataclasses.replace(resumed, log_level=settings.log_level, upload_wait=settings.upload_wait)
    else:
        settings = new_run_settings(settings)
    unreachable = _store_unreachable(nested)  # after the refusals (they leave nothing behind), before any work
    log_path = Path(str(settings.output_dir)) / "training.log"
    configure_logging(settings.log_level, log_path)
    if unreachable:
        logger.warning("%s. Training goes on offline: the run's record is kept in %s/tracking and can be sent "
                       "later with: %s", unreachable, settings.output_dir, SYNC_HINT.format(settings.output_dir))
    data = settings.data or str(demo_data_path())
    tags = {"experiment_type": settings.experiment_type, "include_upstream": str(settings.include_upstream).lower(),
            "run_type": "training", **({"num_epochs_extended_to": str(num_epochs)} if extend else {}),
            **({"seed": str(settings.model.seed)} if nested else {}), **(tags or {})}  # set before anything can fail
    name = f"{settings.experiment_type}-seed{settings.model.seed}" if nested else settings.experiment_type
    with recorded_run(Path(str(settings.output_dir)), run_id, None if run_id else timestamped(name),
                      settings.experiment_name, tags, log_path, nested=nested, offline=bool(unreachable),
                      upload_wait=settings.upload_wait) as record:
        tracker = MlflowTracker(record, settings)
        if settings.resume:
            record.backfill(trained.history)
        outcome = run_training(settings, data, run_id=record.run_id, callbacks=[tracker, *callbacks],
                               on_data_ready=tracker.on_data_ready, extend=extend)
        tracker.log_outcome(outcome)
    return TrackedTraining(record.run_id, settings, outcome, record.pending)


def _store_unreachable(nested: bool) -> str:
    """Check the tracking store: '' when usable, the reason when nothing answers at a server's address (the
    training goes on offline; a child run cannot, its parent is on the server). Other failures raise."""
    try:
        check_tracking_store()
    except StoreUnreachable as exc:
        if nested:
            raise
        return str(exc).rstrip(".")
    return ""


def _synced_run(checkpoint: Path, resume: str) -> str | None:
    """The run of a checkpoint written offline, once its folder's record has been sent (refused before)."""
    journal = Journal(checkpoint.parent)
    if not journal.exists():
        return None
    journal.check_sent(f"--resume {resume}")
    return journal.newest_run_id()


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

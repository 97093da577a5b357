"""A training's MLflow run, recorded locally first: :class:`RunRecord` appends what the run logs to the
output folder's journal (:mod:`convlstm.tracking.journal`), and a background thread sends it
(:mod:`convlstm.tracking.upload`). An epoch never waits for the tracking server; a server that is down
for minutes, or for the whole training, costs nothing trained.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from filelock import Timeout
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking.context import registry as context_registry
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from convlstm.atomic import atomic_path
from convlstm.errors import Interrupted, TrackingError
from convlstm.tracking.journal import SYNC_HINT, Journal, now_ms
from convlstm.tracking.runs import SYSTEM_METRICS_INTERVAL_S, ended_status, new_run_experiment, point_launcher_run_to
from convlstm.tracking.store import bounded_requests
from convlstm.tracking.upload import BackgroundSender, Sender

logger = logging.getLogger(__name__)

INPUT_EXAMPLE_NAME = "input_example.npy"


class RunRecord:
    """What one run logs, as journal entries (params, metrics at a step, artifacts, tags, the model, its end).

    Parameters
    ----------
    journal : Journal
        The output folder's journal.
    key : str
        The run's key in it.
    """

    def __init__(self, journal: Journal, key: str) -> None:
        self.journal = journal
        self.key = key
        self.pending = 0

    @property
    def run_id(self) -> str | None:
        """The run on the tracking server; None while the server has not seen it (offline)."""
        return self.journal.state().runs.get(self.key)

    def _append(self, op: str, **fields: Any) -> None:
        self.journal.append({"op": op, "run": self.key, **fields})

    def log_params(self, params: dict[str, Any]) -> None:
        """Params the run does not have yet (under ``mlflow run`` the launcher logged some)."""
        self._append("params", params={key: str(value) for key, value in params.items()})

    def log_input(self, path: Path, name: str, digest: str, context: str) -> None:
        """The data file the run read, as an MLflow dataset input."""
        self._append("input", path=str(Path(path).resolve()), name=name, digest=digest, context=context)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Metrics at ``step``, stamped now (the server shows when they were measured, not when sent)."""
        self._append("metrics", metrics={key: float(value) for key, value in metrics.items()}, step=int(step),
                     time=now_ms())

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file of the output folder, sent as it is when its turn comes (the newest copy of a rewritten file)."""
        self._append("artifact", path=self.journal.relative(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags of the run."""
        self._append("tags", tags={key: str(value) for key, value in tags.items()})

    def backfill(self, history: list[dict[str, float]]) -> None:
        """A resumed run's epochs from its checkpoint that the server may not have (sent unless there)."""
        self._append("backfill", history=history, time=now_ms())

    def log_model(self, checkpoint: Path, normalizer: Path, input_example: np.ndarray, registered_model_name: str,
                  experiment_type: str, test_rmse_mm: float) -> None:
        """The model packaged with its normalizer, registered under ``registered_model_name`` ('' for none)."""
        example = self.journal.folder / INPUT_EXAMPLE_NAME
        with atomic_path(example) as temporary, open(temporary, "wb") as handle:
            np.save(handle, input_example)
        self._append("model", id=uuid.uuid4().hex, checkpoint=self.journal.relative(checkpoint),
                     normalizer=self.journal.relative(normalizer), input_example=self.journal.relative(example),
                     registered_model_name=registered_model_name, experiment_type=experiment_type,
                     test_rmse_mm=float(test_rmse_mm))

    def end(self, status: str) -> None:
        """The run's end: FINISHED, FAILED or KILLED."""
        self._append("end", status=status, time=now_ms())


class SystemMetricsRecorder:
    """CPU, memory, disk, network (and GPU) use every few seconds into the record, under MLflow's
    ``system/`` names; MLflow's own monitor sends them itself and stops at the first request that fails.

    Parameters
    ----------
    log : callable
        ``log(metrics, step)``: :meth:`RunRecord.log_metrics`.
    """

    def __init__(self, log: Callable[[dict[str, float], int], None]) -> None:
        self._sampler = SystemMetricsMonitor(run_id="", sampling_interval=SYSTEM_METRICS_INTERVAL_S)
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="convlstm-system-metrics", daemon=True)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def _loop(self) -> None:
        prefix = "system/" + (f"{self._sampler.node_id}/" if self._sampler.node_id else "")
        step = 0
        while not self._stop.is_set():
            self._sampler.collect_metrics()
            if self._stop.wait(self._sampler.sampling_interval):
                return
            self._log({prefix + key: value for key, value in self._sampler.aggregate_metrics().items()}, step)
            for monitor in self._sampler.monitors:
                monitor.clear_metrics()
            step += 1

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(5.0)


def _start_entry(journal: Journal, run_id: str | None, run_name: str | None, experiment_name: str | None,
                 tags: dict[str, str], nested: bool) -> dict[str, Any]:
    """The journal's first entry for a run: which run (given, ``mlflow run``'s or new), where, and its tags.

    A new run's tags are resolved here as ``mlflow.start_run`` would (user, source, git commit), so a run sent
    later by ``sync`` carries the training's own.
    """
    parent = mlflow.active_run() if nested else None
    env_run_id = None if parent else os.environ.pop("MLFLOW_RUN_ID", None)  # a nested run must not take it
    if run_id and env_run_id and env_run_id != run_id:
        point_launcher_run_to(env_run_id, run_id)
    existing = run_id or env_run_id
    entry: dict[str, Any] = {"op": "start", "run": journal.new_run_key(), "run_id": existing, "time": now_ms()}
    if existing:
        return {**entry, "tags": {**tags, **({MLFLOW_RUN_NAME: run_name} if run_name else {})}}
    user_tags = {**tags, MLFLOW_RUN_NAME: run_name or ""}
    if parent is not None:
        user_tags[MLFLOW_PARENT_RUN_ID] = parent.info.run_id
    where = {"experiment_id": parent.info.experiment_id} if parent is not None else new_run_experiment(experiment_name)
    return {**entry, **where, "run_name": run_name, "tags": context_registry.resolve_tags(user_tags)}


@contextmanager
def recorded_run(output_dir: Path, run_id: str | None, run_name: str | None, experiment_name: str | None,
                 tags: dict[str, str], log_path: Path | None, *, nested: bool = False, offline: bool = False,
                 upload_wait: float = 0.0) -> Iterator[RunRecord]:
    """Record a run in ``output_dir``'s journal while a background thread sends it; end it FINISHED, or FAILED
    (KILLED on Ctrl-C, SIGTERM or a pruned trial) with the error as a tag.

    Parameters
    ----------
    output_dir : pathlib.Path
        The training's output folder (the journal goes in its ``tracking/``).
    run_id : str, optional
        A run to continue (resume); None starts a new one (or uses ``mlflow run``'s ``MLFLOW_RUN_ID``).
    run_name : str, optional
        A new run's name.
    experiment_name : str, optional
        A new run's experiment (default: ``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_EXPERIMENT_ID``, else Default, as
        ``mlflow run`` chooses).
    tags : dict of str to str
        Set on the run.
    log_path : pathlib.Path, optional
        The command's log file, sent as an artifact at the end either way.
    nested : bool
        A child run of the active run, in its experiment (a seed of an ensemble, a sweep's trial).
    offline : bool
        The server did not answer at the start: record only, and do not wait for it at the end.
    upload_wait : float
        Seconds to wait at the end for a server that has seen the run but does not answer now.

    Yields
    ------
    RunRecord
        The record; its ``run_id`` is the server's run (None offline) and ``pending`` the entries left to
        send once the block ends.
    """
    journal = Journal(output_dir)
    lock = journal.writer_lock()
    try:
        lock.acquire()
    except Timeout as exc:
        raise TrackingError(f"Another process is writing the run record in {journal.folder}; choose another "
                            "--output-dir.", ) from exc
    retries = logging.getLogger("urllib3.connectionpool")
    level = retries.level
    retries.setLevel(logging.ERROR)  # a warning per retried request would bury the log during an outage
    try:
        with bounded_requests():  # the sender's calls give up in seconds and are asked again, not for minutes
            yield from _record(journal, _start_entry(journal, run_id, run_name, experiment_name, tags, nested),
                               log_path, offline, upload_wait)
    finally:
        retries.setLevel(level)
        lock.release()


def _record(journal: Journal, start: dict[str, Any], log_path: Path | None, offline: bool,
            upload_wait: float) -> Iterator[RunRecord]:
    """:func:`recorded_run` once the journal is ours: send the start at once (so the run id is known), then
    record in the background."""
    journal.append(start)
    sender = Sender(journal)
    if not offline:
        sender.send_pending()  # the store was checked a moment ago: a failure here is an error, not an outage
    record = RunRecord(journal, start["run"])
    background, system = BackgroundSender(sender, down=offline), SystemMetricsRecorder(record.log_metrics)
    background.start()
    system.start()
    try:
        yield record
    except BaseException as exc:
        record.set_tags({"error": f"{type(exc).__name__}: {exc}"[:5000], **getattr(exc, "run_tags", {})})
        _finish(record, ended_status(exc), log_path, system, background, upload_wait)
        raise
    _finish(record, "FINISHED", log_path, system, background, upload_wait)


def _finish(record: RunRecord, status: str, log_path: Path | None, system: SystemMetricsRecorder,
            background: BackgroundSender, upload_wait: float) -> None:
    """End the record, wait (a while) for it to reach the server, and say plainly where it is if it did not."""
    system.stop()
    if log_path is not None and log_path.is_file():
        record.log_artifact(log_path)
    record.end(status)
    wait = upload_wait if record.run_id else 0.0  # offline from the start: no point waiting
    try:
        record.pending = background.finish(wait)
    except (KeyboardInterrupt, Interrupted):  # Ctrl-C stops the wait; the record stays for sync
        record.pending = len(record.journal.pending())
    if record.pending:
        where = f"run {record.run_id}" if record.run_id else "the run (not created on the server yet)"
        reason = background.error or f"the tracking server {mlflow.get_tracking_uri()} did not answer"
        logger.warning("The training's record is kept locally: %d entries of %s are not on the tracking server (%s). "
                       "Nothing is lost; send them with: %s", record.pending, where, reason,
                       SYNC_HINT.format(record.journal.output_dir))

"""Send a training's journal (:mod:`convlstm.tracking.journal`) to the tracking server, entry by entry, in order.

During training a :class:`BackgroundSender` thread does it: a server that does not answer is asked again
with a growing pause (up to :data:`RETRY_MAX_S`) for as long as the training runs, instead of inside the
epoch; ``python -m entrypoints.sync`` sends what is left afterwards (:func:`sync`). Every entry is safe
to send twice, because a process may die between sending one and recording it as sent: a run is found by
its journal key before one is created, metrics already at their step and time are not logged again, and
a model already logged or registered is not logged or registered again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, RunTag
from mlflow.tracking import MlflowClient

from convlstm.errors import TrackingError
from convlstm.tracking.journal import SYNC_HINT, Journal, JournalState
from convlstm.tracking.registry import register_run_model
from convlstm.tracking.runs import log_new_params, resolve_experiment
from convlstm.tracking.store import (
    bounded_requests,
    check_tracking_store,
    first_line,
    is_unreachable,
    unreachable_reason,
)

logger = logging.getLogger(__name__)

RUN_KEY_TAG = "journal_run"  # finds the run an interrupted send created, so it is not created twice
MODEL_ENTRY_TAG = "journal_entry"  # the same for a logged model
RETRY_START_S = 2.0
RETRY_MAX_S = 30.0
REFUSALS_RETRIED = 3  # a refusal asked again this many times before the sender stops (an outage: for ever)
WAIT_REPORT_S = 30.0


class Sender:
    """Applies a journal's pending entries to the tracking server in order, recording each one sent.

    Parameters
    ----------
    journal : Journal
        The record to send.
    tracking_uri : str, optional
        Default: MLflow's current tracking URI.
    """

    def __init__(self, journal: Journal, tracking_uri: str | None = None) -> None:
        self.journal = journal
        self.client = MlflowClient(tracking_uri)
        self._unsure = True  # the first entry may have been sent by a process that died before recording it

    def send_pending(self, stop: threading.Event | None = None) -> int:
        """Send every entry not sent yet; stop at the first failure (raised), with the ones before it recorded.

        Parameters
        ----------
        stop : threading.Event, optional
            Set: stop after the entry being sent.

        Returns
        -------
        int
            How many entries were sent.
        """
        state, entries = self.journal.state(), self.journal.entries()
        state.tracking_uri = self.client.tracking_uri
        newest = _newest_uploads(entries)
        sent = 0
        for index in range(state.applied, len(entries)):
            if stop is not None and stop.is_set():
                break
            entry = entries[index]
            if entry["op"] != "artifact" or newest[_upload_target(entry)] == index:
                try:
                    self._apply(entry, state)
                except BaseException:
                    self._unsure = True
                    raise
            self._unsure = False
            state.applied = index + 1
            self.journal.save_state(state)
            sent += 1
        return sent

    def _apply(self, entry: dict[str, Any], state: JournalState) -> None:
        """Send one entry (a new run's key is recorded at once, so later entries find its run)."""
        if entry["op"] == "start":
            state.runs[entry["run"]] = _start(self.client, entry, self._unsure)
            self.journal.save_state(state)
            return
        run_id = state.runs[entry["run"]]
        APPLY[entry["op"]](self.client, run_id, entry, self.journal, self._unsure)


def _upload_target(entry: dict[str, Any]) -> tuple[str, str, str | None]:
    """Which file an artifact entry uploads, and where to."""
    return entry["run"], entry["path"], entry["artifact_path"]


def _newest_uploads(entries: list[dict[str, Any]]) -> dict[tuple[str, str, str | None], int]:
    """The index of the last entry uploading each file to each place: ``last.pt`` is rewritten every epoch, so after
    an outage only its newest copy is sent (one pass, not a scan of the later entries per entry)."""
    return {_upload_target(entry): index for index, entry in enumerate(entries) if entry["op"] == "artifact"}


def _start(client: MlflowClient, entry: dict[str, Any], unsure: bool) -> str:
    """Create the run (or continue the given one), with the start time and tags the training recorded."""
    tags = entry["tags"]
    if entry.get("run_id"):
        run_id = entry["run_id"]
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return str(run_id)
    experiment_id = resolve_experiment(client, entry)
    if unsure:
        found = client.search_runs([experiment_id], f"tags.{RUN_KEY_TAG} = '{entry['run']}'", max_results=1)
        if found:
            return found[0].info.run_id
    run = client.create_run(experiment_id, start_time=entry["time"], tags={**tags, RUN_KEY_TAG: entry["run"]},
                            run_name=entry.get("run_name"))
    return run.info.run_id


def _params(client: MlflowClient, run_id: str, entry: dict[str, Any], journal: Journal, unsure: bool) -> None:
    log_new_params(run_id, entry["params"], client)


def _input(client: MlflowClient, run_id: str, entry: dict[str, Any], journal: Journal, unsure: bool) -> None:
    source = LocalArtifactDatasetSource(entry["path"])
    dataset = MetaDataset(source, name=entry["name"], digest=entry["digest"])
    client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                            [InputTag("mlflow.data.context", entry["context"])])])


def _metrics(client: MlflowClient, run_id: str, entry: dict[str, Any], journal: Journal, unsure: bool) -> None:
    metrics, step, stamp = entry["metrics"], int(entry["step"]), int(entry["time"])
    if unsure and metrics:
        key = next(iter(metrics))
        if any(m.step == step and m.timestamp == stamp for m in client.get_metric_history(run_id, key)):
            return
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, step) for k, v in metrics.items()])


def _tags(client: MlflowClient, run_id: str, entry: dict[str, Any], journal: Journal, unsure: bool) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in entry["tags"].items()])


def _artifact(client: MlflowClient, run_id: str, entry: dict[str, Any], journal: Journal, unsure: bool) -> None:
    path = journal.resolve(entry["path"])
    if not path.is_file():
        logger.warning("%s is gone, so the run's artifact %s/%s cannot be sent.", path,
                       entry["artifact_path"] or ".", path.name)
        return
    client.log_artifact(run_id, str(path), entry["artifact_path"])


def _backfill(client: MlflowClient, run_id: str, entry: dict[str, Any], journal: Journal, unsure: bool) -> None:
    """A resumed run's epochs its checkpoint holds but the server does not (a run killed before they were sent)."""
    logged = {m.step for m in client.get_metric_history(run_id, "val_loss")}
    metrics = [Metric(k, float(v), int(entry["time"]), int(row["epoch"]))
               for row in entry["history"] if int(row["epoch"]) not in logged for k, v in row.items() if k != "epoch"]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def _model(client: MlflowClient, run_id: str, entry: dict[str, Any], journal: Journal, unsure: bool) -> None:
    """Log the model packaged with its normalizer, and register it; once, though the entry be sent twice."""
    from convlstm.pyfunc import log_pyfunc_model

    model_id = _logged_model(run_id, entry["id"]) if unsure else None
    if model_id is None:
        model_id = log_pyfunc_model(journal.resolve(entry["checkpoint"]), journal.resolve(entry["normalizer"]),
                                    np.load(journal.resolve(entry["input_example"])), run_id,
                                    {MODEL_ENTRY_TAG: entry["id"]}).model_id
    name = entry.get("registered_model_name")
    if name:
        version = register_run_model(run_id, name, entry["experiment_type"], entry["test_rmse_mm"], model_id)
        client.set_tag(run_id, "registered_model", f"{name}/{version}")


def _logged_model(run_id: str, entry_id: str) -> str | None:
    """The complete model an earlier send of this entry logged, if any."""
    found = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run_id}' AND tags.{MODEL_ENTRY_TAG} = '{entry_id}'", output_format="list")
    ready = [model.model_id for model in found if str(model.status) == "READY"]
    return ready[0] if ready else None


def _end(client: MlflowClient, run_id: str, entry: dict[str, Any], journal: Journal, unsure: bool) -> None:
    client.set_terminated(run_id, entry["status"], end_time=entry["time"])


APPLY: dict[str, Callable[[MlflowClient, str, dict[str, Any], Journal, bool], None]] = {
    "params": _params, "input": _input, "metrics": _metrics, "tags": _tags, "artifact": _artifact,
    "backfill": _backfill, "model": _model, "end": _end,
}


class BackgroundSender(threading.Thread):
    """Sends the journal while the training appends to it; never raises into the training.

    A server that does not answer (refused, timed out, 5xx) is asked again after :data:`RETRY_START_S`,
    doubling to :data:`RETRY_MAX_S`, for as long as the training runs. Any other refusal is asked again
    :data:`REFUSALS_RETRIED` times, then stops sending (credentials withdrawn, a bad value): the entries stay in
    the journal for ``sync``.

    Parameters
    ----------
    sender : Sender
        What sends.
    down : bool
        The server is known to be down already (the training said so when it went offline).
    """

    def __init__(self, sender: Sender, down: bool = False) -> None:
        super().__init__(name="convlstm-journal-sender", daemon=True)
        self.sender = sender
        self.error: str | None = None
        self._stopping = threading.Event()
        self._down_since: float | None = time.monotonic() if down else None

    def run(self) -> None:
        """Send whatever is pending, then wait for new entries, until :meth:`finish` says stop."""
        delay, refusals = RETRY_START_S, 0
        while not self._stopping.is_set():
            try:
                self.sender.send_pending(self._stopping)
            except Exception as exc:  # noqa: BLE001 - the training must go on whatever the server does
                if is_unreachable(exc):
                    self._note_down(exc)
                else:
                    refusals += 1
                    if self._refused(exc, refusals):
                        return
                self._stopping.wait(delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            self._note_up()
            delay, refusals = RETRY_START_S, 0
            if not self.sender.journal.pending():
                self.sender.journal.wait_for_entries(RETRY_MAX_S)

    def _refused(self, exc: BaseException, refusals: int) -> bool:
        """Whether to stop after the store refused an entry ``refusals`` times in a row: a refusal may pass (two
        trainings registering the same dataset at once collide in MLflow's SQL store), a wrong credential or a
        bug does not."""
        reason = f"{type(exc).__name__}: {first_line(exc)[:300]}"
        if refusals <= REFUSALS_RETRIED:
            logger.warning("The tracking server refused an entry of the run's record (%s); asking again.", reason)
            return False
        self.error = reason
        logger.error("Sending the run's record stopped (%s); training goes on, and the record stays in %s for sync.",
                     reason, self.sender.journal.folder)
        logger.debug("Send failure.", exc_info=True)
        return True

    def _note_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning("The tracking server %s does not answer (%s); training goes on and its record waits in "
                           "%s.", self.sender.client.tracking_uri, unreachable_reason(exc), self.sender.journal.folder)

    def _note_up(self) -> None:
        if self._down_since is not None:
            logger.warning("The tracking server answers again after %.0f s; the record kept meanwhile is sent.",
                           time.monotonic() - self._down_since)
            self._down_since = None

    def finish(self, wait_s: float) -> int:
        """Wait up to ``wait_s`` seconds for the record to be sent, then stop.

        Parameters
        ----------
        wait_s : float
            How long a server that does not answer is waited for.

        Returns
        -------
        int
            The entries left to send (0: everything is on the server).
        """
        deadline, reported = time.monotonic() + wait_s, time.monotonic()
        self.sender.journal.wake()
        while self.is_alive() and self.sender.journal.pending() and time.monotonic() < deadline:
            if time.monotonic() - reported >= WAIT_REPORT_S:
                reported = time.monotonic()
                logger.warning("Training is done; waiting up to %.0f s more for the tracking server to take the "
                               "last %d entries of the record (Ctrl-C leaves them for sync).",
                               deadline - reported, len(self.sender.journal.pending()))
            self.join(0.2)
        self._stopping.set()
        self.sender.journal.wake()
        self.join(1.0)
        return len(self.sender.journal.pending())


def sync(output_dir: Path) -> tuple[str | None, int]:
    """Send what a training's journal still holds: the run appears on the server as if it had been online.

    A run whose training stopped without recording its end (killed, or the machine went down) is ended
    FAILED, with the reason, once its record is sent.

    Parameters
    ----------
    output_dir : pathlib.Path
        The training's output folder.

    Returns
    -------
    tuple
        The run id on the server (of the folder's newest run), and how many entries were sent.

    Raises
    ------
    TrackingError
        No journal there, a training still writing it, or a server that does not take it.
    """
    journal = Journal(output_dir)
    if not journal.exists():
        raise TrackingError(f"{output_dir} holds no training record ({journal.entries_path} is missing): pass the "
                            "output directory of a training.")
    lock = journal.writer_lock()
    try:
        lock.acquire()
    except Exception as exc:  # noqa: BLE001 - filelock's Timeout
        raise TrackingError(f"A training is still writing {journal.folder} and sends it itself; wait for it to end.") \
            from exc
    try:
        check_tracking_store()
        _end_unfinished(journal)
        sender = Sender(journal)
        try:
            with bounded_requests():
                sent = sender.send_pending()
        except Exception as exc:  # noqa: BLE001 - MLflow's, requests' and the store's errors alike
            left = len(journal.pending())
            raise TrackingError(f"{output_dir}: the tracking server {mlflow.get_tracking_uri()} stopped taking the "
                                f"run's record ({first_line(exc)[:300]}); {left} entries "
                                f"are left: run {SYNC_HINT.format(output_dir)} again.") from exc
        return journal.newest_run_id(), sent
    finally:
        lock.release()


def _end_unfinished(journal: Journal) -> None:
    """Append an end (FAILED) to a run whose record stops without one: its training was killed."""
    entries = journal.entries()
    started = [e["run"] for e in entries if e["op"] == "start"]
    ended = {e["run"] for e in entries if e["op"] == "end"}
    for key in started:
        if key not in ended:
            last = max((e.get("time", 0) for e in entries if e["run"] == key), default=0)
            journal.append({"op": "tags", "run": key, "tags": {
                "error": "The training stopped without ending its run (killed, or its machine went down); its last "
                         "checkpoint can be resumed."}})
            journal.append({"op": "end", "run": key, "status": "FAILED", "time": last})
            logger.warning("The record of run %s ends without the run's end: it is ended FAILED.", key)

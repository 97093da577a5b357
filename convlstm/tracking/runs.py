"""The lifecycle of an MLflow run: start or continue it, and always end it (FINISHED, or FAILED / KILLED
with the reason in its ``error`` tag; never left RUNNING).

Under ``mlflow run`` the run already exists (``MLFLOW_RUN_ID``); it is used, or, when resuming another
run, tagged as pointing to it.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from convlstm.errors import Interrupted, TrackingError
from convlstm.settings import as_text, fields_of, flatten
from convlstm.tracking.store import bounded_requests, first_line

logger = logging.getLogger(__name__)

SYSTEM_METRICS_INTERVAL_S = 5.0


def timestamped(prefix: str) -> str:
    """``<prefix>-YYYYmmdd-HHMMSS``: run names and default output folders.

    Parameters
    ----------
    prefix : str
        E.g. ``baseline`` or ``compare``.

    Returns
    -------
    str
        The prefix and the local time.
    """
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def settings_params(settings: Any) -> dict[str, str]:
    """The entry point's MLproject parameters with their values, as ``mlflow run`` logs them (``true``,
    ``16 32 64``), so a run started with ``python -m entrypoints...`` has the same param keys.

    Parameters
    ----------
    settings : dataclass instance
        An entry point's settings.

    Returns
    -------
    dict of str to str
        The same keys for every run of the entry point, so runs line up in the MLflow UI.
    """
    values = flatten(settings)
    return {f.name: as_text(values[f.name]) for f in fields_of(type(settings)) if f.spec.cli and f.spec.mlproject}


def log_new_params(run_id: str, params: dict[str, Any], client: MlflowClient | None = None) -> None:
    """Log the params the run does not have yet.

    Under ``mlflow run`` the launcher has already logged the -P values and MLflow refuses to change a
    param; a resumed run has them all. A value the launcher logged shell-quoted is reported once, with
    the spelling that avoids it.

    Parameters
    ----------
    run_id : str
        The run.
    params : dict
        Candidate params.
    client : MlflowClient, optional
        The client to use (default: one for the current tracking URI).
    """
    client = client or MlflowClient()
    existing = client.get_run(run_id).data.params
    new = [Param(key, str(value)) for key, value in params.items() if key not in existing]
    if new:
        client.log_batch(run_id, params=new)
    quoted = [f"{key}={existing[key]}" for key in params if key in existing and _shell_quoted(existing[key])]
    if quoted:
        logger.warning("MLflow logged these params shell-quoted: %s (it quotes a -P value with spaces or an empty "
                       "one, and refuses to correct a param); write lists with commas (-P hidden_channels=32,64) "
                       "and 'none' for not given.", ", ".join(quoted))


def _shell_quoted(text: str) -> bool:
    """Whether ``text`` is one shell word in quotes (``'16 32 64'``, ``''``), as ``mlflow run`` logs such values."""
    try:
        words = shlex.split(text)
    except ValueError:
        return False
    return len(words) == 1 and words[0] != text


def log_file(path: Path | None, artifact_path: str | None = None) -> None:
    """Log ``path`` as an artifact of the active run if it exists (e.g. the command's log file).

    Parameters
    ----------
    path : pathlib.Path or None
        The file; None or a missing file logs nothing.
    artifact_path : str, optional
        The artifact folder (default: the run's root).
    """
    if path is not None and path.is_file():
        mlflow.log_artifact(str(path), artifact_path)


def fail_pending_run(message: str, status: str = "FAILED") -> None:
    """End the run ``mlflow run`` created for us (FAILED, or KILLED on a signal) when we stop before
    :func:`managed_run` ended it.

    Parameters
    ----------
    message : str
        The reason, stored in the run's ``error`` tag.
    status : str
        ``FAILED`` or ``KILLED``.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    client = MlflowClient()
    try:
        with bounded_requests():  # the store may be what failed: give up in seconds, not minutes
            if client.get_run(run_id).info.status != "RUNNING":  # managed_run ended it already, with its reason
                return
            client.set_tag(run_id, "error", message[:5000])
            client.set_terminated(run_id, status)
    except Exception:  # noqa: BLE001 - the store itself may be what failed; the error is shown anyway
        logger.debug("Could not mark run %s as FAILED.", run_id, exc_info=True)


def new_run_experiment(experiment_name: str | None) -> dict[str, str]:
    """Where a new run goes, as ``mlflow run`` chooses: ``--experiment-name``, else ``MLFLOW_EXPERIMENT_NAME``, else
    ``MLFLOW_EXPERIMENT_ID``, else MLflow's Default (named, not found by process state, so it can be written down
    and resolved later: :func:`resolve_experiment`).

    Parameters
    ----------
    experiment_name : str, optional
        The experiment asked for.

    Returns
    -------
    dict of str to str
        ``{"experiment_name": ...}`` or ``{"experiment_id": ...}``.
    """
    name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name:
        return {"experiment_name": name}
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return {"experiment_id": os.environ["MLFLOW_EXPERIMENT_ID"]}
    return {"experiment_name": "Default"}


def resolve_experiment(client: MlflowClient, where: dict[str, Any]) -> str:
    """The id of the experiment :func:`new_run_experiment` named, created when missing (as ``mlflow.set_experiment``).

    Parameters
    ----------
    client : MlflowClient
        The store's client.
    where : dict
        ``{"experiment_id": ...}`` or ``{"experiment_name": ...}``.

    Returns
    -------
    str
        The experiment id.
    """
    if where.get("experiment_id"):
        return str(where["experiment_id"])
    name = where["experiment_name"]
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process created it in between
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def point_launcher_run_to(launcher_run_id: str, run_id: str) -> None:
    """Tag the run ``mlflow run`` made for a launch that resumed another run, so its page says where the results are.

    Parameters
    ----------
    launcher_run_id : str
        ``mlflow run``'s run (``MLFLOW_RUN_ID``).
    run_id : str
        The run resumed.
    """
    client = MlflowClient()
    client.set_tag(launcher_run_id, "resumed_run_id", run_id)
    client.set_tag(launcher_run_id, "mlflow.note.content", f"This launch resumed run {run_id}; its results are there.")


def experiment_of_run(run_id: str) -> str | None:
    """The experiment name a run belongs to (so an inference or comparison lands beside its runs).

    Parameters
    ----------
    run_id : str
        A run of this tracking store.

    Returns
    -------
    str or None
        None for a run this store does not hold (a checkpoint brought from elsewhere: MLflow's default experiment).

    Raises
    ------
    TrackingError
        The store could not be asked (a busy or restarting server): guessing would put the results elsewhere.
    """
    client = MlflowClient()
    try:
        return client.get_experiment(client.get_run(run_id).info.experiment_id).name
    except MlflowException as exc:
        if names_no_run(exc):
            return None
        raise TrackingError(f"Cannot look up the experiment of run {run_id} in {mlflow.get_tracking_uri()} "
                            f"({first_line(exc)[:300]}); try again, or pass "
                            "--experiment-name.") from exc


def names_no_run(exc: MlflowException) -> bool:
    """Whether the store answered that what was asked for is not one of its runs (unknown or malformed id), as
    opposed to not answering or refusing: only then may a caller take the reference for something else.

    Parameters
    ----------
    exc : MlflowException
        What ``MlflowClient.get_run`` raised.

    Returns
    -------
    bool
        True for an unknown or malformed run id.
    """
    return exc.error_code in (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE))


def ended_status(exc: BaseException) -> str:
    """The status a run ends with when ``exc`` stops it: KILLED for a stop (a signal, or an exception whose
    ``run_status`` says so, e.g. a pruned sweep trial), FAILED for a failure.

    Parameters
    ----------
    exc : BaseException
        What stopped the run.

    Returns
    -------
    str
        ``KILLED`` or ``FAILED``.
    """
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        return "KILLED"
    return str(getattr(exc, "run_status", "FAILED"))


@contextmanager
def managed_run(run_id: str | None, run_name: str | None, experiment_name: str | None, tags: dict[str, str],
                log_path: Path | None = None, system_metrics: bool = False,
                nested: bool = False, keep_running: Callable[[], bool] | None = None) -> Iterator[mlflow.ActiveRun]:
    """Start (or continue) a run; end it FINISHED, or FAILED (KILLED on Ctrl-C or SIGTERM) with the error as a tag.

    Parameters
    ----------
    run_id : str, optional
        A run to continue (resume); None starts a new one (or uses ``mlflow run``'s).
    run_name : str, optional
        The new run's name.
    experiment_name : str, optional
        Ignored under ``mlflow run``, which sets it. Default: the experiment ``mlflow run`` would choose
        (``MLFLOW_EXPERIMENT_NAME`` or ``MLFLOW_EXPERIMENT_ID``, else MLflow's ``Default``), so a run lands
        in the same experiment with and without ``mlflow run``.
    tags : dict of str to str
        Set on the run.
    log_path : pathlib.Path, optional
        The command's log file, logged as an artifact at the end either way.
    system_metrics : bool
        Whether MLflow samples CPU, memory and GPU use.
    nested : bool
        Start a new run as a child of the active run, in its experiment (a seed of an ensemble).
    keep_running : callable, optional
        Asked at a normal end: True leaves the run RUNNING, for another process that logs to it too (a sweep's
        parent run shared by several sweep processes) to end.

    Yields
    ------
    mlflow.ActiveRun
        The active run.
    """
    parent = mlflow.active_run() if nested else None
    env_run_id = None if parent else os.environ.get("MLFLOW_RUN_ID")
    if experiment_name and run_id is None and env_run_id is None and parent is None:
        mlflow.set_experiment(experiment_name)
    if run_id and env_run_id:
        if env_run_id != run_id:
            point_launcher_run_to(env_run_id, run_id)
        os.environ.pop("MLFLOW_RUN_ID")  # start_run consumes it only when it picks the run itself; nested runs must not
    if not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):  # MLflow's own setting wins
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    if parent is not None:
        run = mlflow.start_run(run_name=run_name, experiment_id=parent.info.experiment_id, nested=True,
                               log_system_metrics=system_metrics)
    else:
        run = mlflow.start_run(run_id=run_id, run_name=run_name, log_system_metrics=system_metrics)
    try:
        if run_name and env_run_id and not run_id:
            mlflow.set_tag("mlflow.runName", run_name)
        mlflow.set_tags(tags)
        yield run
    except BaseException as exc:
        mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
        log_file(log_path)
        mlflow.end_run(ended_status(exc))
        raise
    log_file(log_path)
    mlflow.end_run("RUNNING" if keep_running and keep_running() else "FINISHED")

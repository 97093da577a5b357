"""What a user may name a model or a run by, resolved to local files: checkpoints, output directories,
run ids, ``runs:/`` and ``models:/`` URIs (artifacts are downloaded to a scratch folder)."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from convlstm.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint
from convlstm.errors import ModelError, TrackingError
from convlstm.tracking.runs import names_no_run
from convlstm.tracking.store import check_tracking_store, first_line
from convlstm.training.experiment import NORMALIZER_NAME

CHECKPOINT_ARTIFACTS = "checkpoints"

logger = logging.getLogger(__name__)


def scratch_dir(prefix: str) -> Path:
    """A temporary directory for downloaded artifacts, removed when the process exits.

    Parameters
    ----------
    prefix : str
        Start of the directory's name, e.g. ``convlstm-model-``.

    Returns
    -------
    pathlib.Path
        The new, empty directory.
    """
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return Path(path)


def resolve_resume(value: str) -> Path:
    """The checkpoint to resume from: a checkpoint file, an output directory holding ``last.pt``, or a run id.

    Parameters
    ----------
    value : str
        What ``--resume`` was given.

    Returns
    -------
    pathlib.Path
        A local ``last.pt`` (or the named file); for a run id, the run's ``checkpoints/last.pt`` artifact
        (downloaded) when its output directory's copy is missing, unreadable or another run's.
    """
    path = Path(value)
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / LAST_NAME).is_file():
            raise ModelError(f"--resume {value}: the directory has no {LAST_NAME}; pass a checkpoint file or a run id.")
        return path / LAST_NAME
    check_tracking_store()  # an unreachable store fails in seconds, not after minutes of retries
    try:
        run = MlflowClient().get_run(value)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for an unknown id
        raise TrackingError(f"--resume {value} is neither a checkpoint file, an output directory nor a run id in the "
                            f"tracking store {mlflow.get_tracking_uri()}.") from exc
    local = Path(run.data.params.get("output_dir", "")) / LAST_NAME
    problem = _unusable(local, value)
    if problem is None:
        return local
    artifact = f"{CHECKPOINT_ARTIFACTS}/{LAST_NAME}"
    try:
        downloaded = Path(mlflow.artifacts.download_artifacts(run_id=value, artifact_path=artifact,
                                                              dst_path=str(scratch_dir("convlstm-resume-"))))
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"Cannot resume run {value}: its local checkpoint {local} {problem}, and the run has no "
                         f"{artifact} artifact.") from exc
    logger.warning("Local checkpoint %s %s; using the run's artifact %s.", local, problem, artifact)
    return downloaded


def _unusable(local: Path, run_id: str) -> str | None:
    """Why ``local`` cannot resume ``run_id`` (missing, corrupt, another run's), or None when it can."""
    if not local.is_file():
        return "is missing"
    try:
        owner = load_checkpoint(local).get("run_id")
    except ModelError as exc:
        return f"is corrupt ({exc})"
    return None if owner == run_id else f"belongs to run {owner}"


def resolve_model(reference: str) -> tuple[Path, Path | None]:
    """Local checkpoint and normalizer files of a model however it is named.

    Parameters
    ----------
    reference : str
        A checkpoint file or training output directory, a training run id, ``runs:/<id>``, or a
        registered model ``models:/<name>/<version>`` / ``models:/<name>@<alias>``.

    Returns
    -------
    tuple of pathlib.Path
        The checkpoint and the ``normalizer.pkl`` (None: use the statistics inside the checkpoint).
    """
    path = Path(reference)
    if path.exists():
        return path, None
    target = str(scratch_dir("convlstm-model-"))
    try:
        if reference.startswith("models:/"):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=target))
            return local / "artifacts" / BEST_NAME, local / "artifacts" / NORMALIZER_NAME
        run_id = reference.removeprefix("runs:/").split("/")[0]
        checkpoint = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{CHECKPOINT_ARTIFACTS}/{BEST_NAME}",
                                                         dst_path=target)
        normalizer = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=NORMALIZER_NAME, dst_path=target)
        return Path(checkpoint), Path(normalizer)
    except Exception as exc:  # noqa: BLE001 - unknown run, model or alias: one clear message
        raise ModelError(
            f"Cannot find a model at {reference!r}: pass a checkpoint file, a training output directory, a training run id, "
            f"runs:/<run id> or models:/<name>/<version> (tracking store {mlflow.get_tracking_uri()})."
        ) from exc


def resolve_members(reference: str) -> list[str]:
    """The trainings one side of a comparison names: one model, a parent run, or several, comma-separated.

    A run with child runs (an ensemble of seeds) stands for its FINISHED child training runs, in the order of
    their seeds; a sweep's parent run for its best trial's run; anything else (a checkpoint, a URI, a run without children) is one model.

    Parameters
    ----------
    reference : str
        What ``--baseline`` or ``--upstream`` was given, e.g. ``<run id>``, ``<parent run id>`` or
        ``<run id>,<run id>,<run id>``.

    Returns
    -------
    list of str
        One reference per model, each for :func:`resolve_model`.
    """
    members = [member for item in reference.split(",") if item.strip() for member in _children_or_self(item.strip())]
    if not members:
        raise ModelError(f"No model in {reference!r}: name a run id, a parent run id, or several run ids separated by commas.")
    return members


def _children_or_self(reference: str) -> list[str]:
    """A parent run's FINISHED child training runs (by seed), or ``[reference]`` for anything else."""
    if Path(reference).exists() or ":/" in reference:
        return [reference]
    client = MlflowClient()
    try:
        run = client.get_run(reference)
    except MlflowException as exc:
        if names_no_run(exc):  # not a run: resolve_model says what it may be
            return [reference]
        raise TrackingError(f"Cannot tell whether {reference!r} is a run of {mlflow.get_tracking_uri()} "
                            f"({first_line(exc)[:300]}); try again, or name a checkpoint file.") from exc
    if run.data.tags.get("run_type") == "sweep":  # a sweep's trials are not an ensemble: its best trial stands for it
        if not run.data.tags.get("best_run_id"):
            raise ModelError(f"Sweep run {reference} has no complete trial yet; continue the sweep, or name a trial run.")
        return [run.data.tags["best_run_id"]]
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{reference}'", max_results=1000)
    if not children:
        return [reference]
    finished = [c for c in children if c.info.status == "FINISHED" and c.data.tags.get("run_type") == "training"]
    if not finished:
        raise ModelError(f"Run {reference} is a parent run without a FINISHED child training run; name finished runs instead.")
    if len(finished) < len(children):
        logger.warning("Parent run %s: using its %d FINISHED child training runs of %d.", reference, len(finished),
                       len(children))
    finished.sort(key=lambda c: (int(c.data.params.get("seed", 0)), c.info.start_time))
    return [c.info.run_id for c in finished]

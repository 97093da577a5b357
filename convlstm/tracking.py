"""MLflow bookkeeping for training runs: start or resume a run, record params, metrics, artifacts and
the data input, and always end the run (FAILED on any error, never left RUNNING).

With the tracking URI unset MLflow uses ``sqlite:///mlflow.db`` in the working directory with artifacts
under ``./mlruns``. Under ``mlflow run`` the run already exists (``MLFLOW_RUN_ID``); it is used, or,
when resuming another run, tagged as pointing to it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.tracking import MlflowClient

from convlstm.errors import DataError
from convlstm.training.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint
from convlstm.training.experiment import NORMALIZER_NAME, TrainingOutcome, TrainOptions
from convlstm.training.trainer import TrainingCallback

if TYPE_CHECKING:
    from convlstm.evaluation.comparison import ComparisonResult
    from convlstm.inference import ForecastModel, InferenceOutcome

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "convlstm-upstream"
CHECKPOINT_ARTIFACTS = "checkpoints"
SYSTEM_METRICS_INTERVAL_S = 5.0


class MlflowTracker(TrainingCallback):
    """Turns trainer events into MLflow metrics (step = epoch) and checkpoint artifacts."""

    def __init__(self, run_id: str, options: TrainOptions, registered_model_name: str | None = None) -> None:
        self.run_id = run_id
        self.options = options
        self.registered_model_name = registered_model_name
        self.client = MlflowClient()

    def on_data_ready(self, data_info: dict[str, Any]) -> None:
        """Log every option and the derived shapes as params, and the data file as the run's input."""
        _log_new_params(self.run_id, {**self.options.to_params(), "output_dir": str(self.options.output_dir), **data_info})
        source = LocalArtifactDatasetSource(str(Path(data_info["data_path"]).resolve()))
        dataset = MetaDataset(source, name=Path(data_info["data_path"]).name, digest=data_info["data_digest"])
        mlflow.log_input(dataset, context="training")

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics(metrics, step=epoch)

    def on_checkpoint(self, path: Path) -> None:
        mlflow.log_artifact(str(path), CHECKPOINT_ARTIFACTS)

    def backfill_history(self, history: list[dict[str, float]]) -> None:
        """Log epochs a killed run recorded in its checkpoint but not yet in MLflow (none twice)."""
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "val_loss")}
        for row in history:
            if int(row["epoch"]) not in logged:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def log_outcome(self, outcome: TrainingOutcome) -> None:
        state = outcome.state
        mlflow.log_metrics({"best_epoch": state.best_epoch, "best_val_loss": state.best_val_loss,
                            "epochs_trained": state.epoch, **outcome.test_scores})
        mlflow.set_tag("stopped_early", str(state.stopped_early).lower())
        for path in outcome.files:
            mlflow.log_artifact(str(path))
        self.log_model(outcome)

    def log_model(self, outcome: TrainingOutcome) -> None:
        """Package the best model with its normalizer as a pyfunc model and register it."""
        from convlstm.pyfunc import log_pyfunc_model

        output_dir = Path(self.options.output_dir)
        info = log_pyfunc_model(output_dir / BEST_NAME, output_dir / NORMALIZER_NAME, outcome.input_example,
                                self.registered_model_name)
        version = info.registered_model_version
        if version is not None and self.registered_model_name:
            self.client.set_model_version_tag(self.registered_model_name, str(version), "experiment_type",
                                              self.options.experiment_type)
            self.client.update_model_version(
                self.registered_model_name, str(version),
                description=f"{self.options.experiment_type} model from run {self.run_id} "
                            f"(test RMSE {outcome.test_scores.get('test_rmse_mm', float('nan')):.3f} mm)")
            mlflow.set_tag("registered_model", f"{self.registered_model_name}/{version}")
            logger.info("Registered model %s version %s.", self.registered_model_name, version)


def _log_new_params(run_id: str, params: dict[str, Any]) -> None:
    """Log the params the run does not have yet: under `mlflow run` the launcher has already logged the
    -P values (e.g. ``data=''``) and MLflow refuses to change a param; a resumed run has them all."""
    existing = MlflowClient().get_run(run_id).data.params
    new = {key: value for key, value in params.items() if key not in existing}
    if new:
        mlflow.log_params(new)


def _scratch_dir(prefix: str) -> str:
    """A temporary directory for downloaded artifacts, removed when the process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def run_name(options: TrainOptions) -> str:
    return f"{options.experiment_type}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_resume(value: str) -> Path:
    """A checkpoint file, an output directory holding ``last.pt``, or an MLflow run id → checkpoint path."""
    path = Path(value)
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / LAST_NAME).is_file():
            raise DataError(f"--resume {value}: the directory has no {LAST_NAME}; pass a checkpoint file or a run id.")
        return path / LAST_NAME
    try:
        run = MlflowClient().get_run(value)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for an unknown id
        raise DataError(f"--resume {value} is neither a checkpoint file, an output directory nor a run id in the tracking "
                        f"store {mlflow.get_tracking_uri()}.") from exc
    local = Path(run.data.params.get("output_dir", "")) / LAST_NAME
    if local.is_file() and load_checkpoint(local).get("run_id") == value:
        return local
    target = Path(_scratch_dir("convlstm-resume-"))
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=value, artifact_path=f"{CHECKPOINT_ARTIFACTS}/{LAST_NAME}",
                                                        dst_path=str(target)))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"Run {value} has no {CHECKPOINT_ARTIFACTS}/{LAST_NAME} artifact to resume from.") from exc


def fail_pending_run(message: str) -> None:
    """End the run ``mlflow run`` created for us as FAILED when we stop before starting it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    client = MlflowClient()
    try:
        client.set_tag(run_id, "error", message[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the store itself may be what failed; the error is shown anyway
        logger.debug("Could not mark run %s as FAILED.", run_id, exc_info=True)


@contextmanager
def _managed_run(run_id: str | None, run_name_: str | None, experiment_name: str | None, tags: dict[str, str],
                 log_file: Path | None, system_metrics: bool) -> Iterator[mlflow.ActiveRun]:
    """Start (or continue) a run; end it FINISHED, or FAILED (KILLED on Ctrl-C) with the error as a tag.

    Under ``mlflow run`` the run it created (``MLFLOW_RUN_ID``) is used; when continuing another run,
    that launcher run is tagged as pointing to it.
    """
    env_run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id is None and env_run_id is None:
        mlflow.set_experiment(experiment_name or DEFAULT_EXPERIMENT)
    if run_id and env_run_id and env_run_id != run_id:
        client = MlflowClient()
        client.set_tag(env_run_id, "resumed_run_id", run_id)
        client.set_tag(env_run_id, "mlflow.note.content", f"This launch resumed run {run_id}; its results are there.")
        os.environ.pop("MLFLOW_RUN_ID")
    mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
    run = mlflow.start_run(run_id=run_id, run_name=run_name_, log_system_metrics=system_metrics)
    try:
        if run_name_ and env_run_id and not run_id:
            mlflow.set_tag("mlflow.runName", run_name_)
        mlflow.set_tags(tags)
        yield run
    except BaseException as exc:
        mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
        _log_file(log_file)
        mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    _log_file(log_file)
    mlflow.end_run("FINISHED")


@contextmanager
def training_run(options: TrainOptions, experiment_name: str | None = None, log_file: Path | None = None,
                 registered_model_name: str | None = None) -> Iterator[MlflowTracker]:
    """The MLflow run of a training experiment (a new one, or the one a checkpoint belongs to)."""
    resuming = options.run_id is not None
    tags = {"experiment_type": options.experiment_type, "include_upstream": str(options.include_upstream).lower(),
            "run_type": "training"}
    with _managed_run(options.run_id, None if resuming else run_name(options), experiment_name, tags, log_file,
                      system_metrics=True) as run:
        options.run_id = run.info.run_id
        tracker = MlflowTracker(run.info.run_id, options, registered_model_name)
        if resuming and options.resume_from:
            tracker.backfill_history(load_checkpoint(options.resume_from)["training_state"]["history"])
        yield tracker


@contextmanager
def inference_run(forecast: ForecastModel, model_reference: str, experiment_name: str | None = None,
                  log_file: Path | None = None) -> Iterator[mlflow.ActiveRun]:
    """The MLflow run of an inference, tagged with the training run whose model it used."""
    tags = {"run_type": "inference", "experiment_type": forecast.experiment_type, "model_uri": model_reference,
            "training_run_id": forecast.run_id or ""}
    name = f"infer-{forecast.experiment_type}-{time.strftime('%Y%m%d-%H%M%S')}"
    with _managed_run(None, name, experiment_name, tags, log_file, system_metrics=False) as run:
        yield run


def log_inference(outcome: InferenceOutcome, params: dict[str, Any]) -> None:
    """Params, scores against the observed precipitation, and every file the inference wrote."""
    mlflow.log_params(params)
    mlflow.log_metrics(outcome.scores)
    for path in outcome.files:
        mlflow.log_artifact(str(path), "maps" if path.suffix == ".png" else None)


def resolve_model(reference: str) -> tuple[Path, Path | None]:
    """A checkpoint (file or training output directory), a training run id, ``runs:/<id>`` or a
    registered model ``models:/<name>/<version>`` / ``models:/<name>@<alias>`` → local checkpoint
    and normalizer files (None: use the statistics inside the checkpoint)."""
    path = Path(reference)
    if path.exists():
        return path, None
    target = Path(_scratch_dir("convlstm-model-"))
    try:
        if reference.startswith("models:/"):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=str(target)))
            return local / "artifacts" / BEST_NAME, local / "artifacts" / NORMALIZER_NAME
        run_id = reference.removeprefix("runs:/").split("/")[0]
        checkpoint = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{CHECKPOINT_ARTIFACTS}/{BEST_NAME}",
                                                         dst_path=str(target))
        normalizer = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=NORMALIZER_NAME, dst_path=str(target))
        return Path(checkpoint), Path(normalizer)
    except Exception as exc:  # noqa: BLE001 - unknown run, model or alias: one clear message
        raise DataError(
            f"Cannot find a model at {reference!r}: pass a checkpoint file, a training output directory, a training run id, "
            f"runs:/<run id> or models:/<name>/<version> (tracking store {mlflow.get_tracking_uri()})."
        ) from exc


def _log_file(path: Path | None) -> None:
    if path is not None and path.is_file():
        mlflow.log_artifact(str(path))


def experiment_of_run(run_id: str) -> str | None:
    """The experiment name a run belongs to (so a comparison lands beside the runs it compares)."""
    client = MlflowClient()
    try:
        return client.get_experiment(client.get_run(run_id).info.experiment_id).name
    except Exception:  # noqa: BLE001 - a checkpoint from another tracking store: use the default experiment
        return None


@contextmanager
def comparison_run(run_ids: dict[str, str | None], experiment_name: str | None, log_file: Path | None
                   ) -> Iterator[mlflow.ActiveRun]:
    """The parent run of a comparison, tagged with the compared training runs."""
    tags = {"run_type": "comparison", **{f"{name}_run_id": rid or "" for name, rid in run_ids.items()}}
    name = f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    with _managed_run(None, name, experiment_name, tags, log_file, system_metrics=False) as run:
        yield run


def log_comparison(result: ComparisonResult, params: dict[str, Any]) -> None:
    """Differences with intervals and the main scores on the parent run; one child run per forecast.

    Child runs (baseline, upstream, persistence, climatology) carry identical metric keys, so ticking
    them in the MLflow UI's compare view lines every forecast up side by side.
    """
    from convlstm.evaluation.report import flat_metrics

    parent = mlflow.active_run().info.run_id
    _log_new_params(parent, params)  # the resolved run ids are tags
    flat: dict[str, float] = {}
    for key, diff in result.differences.items():
        flat[f"delta_{key}"] = diff["estimate"]
        flat[f"delta_{key}_ci_low"] = diff["low"]
        flat[f"delta_{key}_ci_high"] = diff["high"]
    for prefix, name in (("exp1", "baseline"), ("exp2", "upstream")):
        flat.update({f"{prefix}_{k}": v for k, v in flat_metrics(result.scores, name).items()})
    mlflow.log_metrics({k: float(v) for k, v in flat.items() if np.isfinite(v)})
    mlflow.set_tag("verdict", result.verdict[:5000])
    for path in result.files:
        mlflow.log_artifact(str(path))
    for name in map(str, result.scores["forecast"].values):
        with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent):
            mlflow.set_tags({"run_type": "comparison_forecast", "forecast": name})
            # Every key, undefined scores as NaN: dropping them would give the children different key sets.
            mlflow.log_metrics(flat_metrics(result.scores, name))


def set_champion(run_ids: dict[str, str], rmse: dict[str, float], registered_model_name: str) -> dict[str, str]:
    """Give the registered version of the better run (lower test RMSE) the alias ``champion``, the other
    ``challenger``; returns alias → version. Runs without a registered version are skipped with a warning."""
    client = MlflowClient()
    versions = {}
    for name, run_id in run_ids.items():
        found = client.search_model_versions(f"name='{registered_model_name}' and run_id='{run_id}'")
        if not found:
            logger.warning("Run %s has no version of %s in the registry; no alias set.", run_id, registered_model_name)
            return {}
        versions[name] = max(found, key=lambda v: int(v.version)).version
    winner = min(rmse, key=rmse.get)  # type: ignore[arg-type]
    aliases = {}
    for name, version in versions.items():
        alias = "champion" if name == winner else "challenger"
        client.set_registered_model_alias(registered_model_name, alias, version)
        aliases[alias] = version
    logger.info("Registry %s: champion = version %s (%s), challenger = version %s.", registered_model_name,
                aliases.get("champion"), winner, aliases.get("challenger"))
    return aliases


def latest_training_runs(experiment_name: str | None) -> dict[str, str]:
    """The newest finished baseline and upstream training runs of an experiment (what ``compare`` uses
    when no runs are named). Under ``mlflow run`` the experiment is the one it runs in."""
    client = MlflowClient()
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if experiment_name or not experiment_id:
        experiment = client.get_experiment_by_name(experiment_name or DEFAULT_EXPERIMENT)
        if experiment is None:
            raise DataError(f"No MLflow experiment named {experiment_name or DEFAULT_EXPERIMENT!r}; train first or name the runs.")
        experiment_id = experiment.experiment_id
    found = {}
    for kind in ("baseline", "upstream"):
        runs = client.search_runs([experiment_id], f"tags.run_type = 'training' and tags.experiment_type = '{kind}' "
                                  "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise DataError(f"No finished {kind} training run in experiment {experiment_id}; train one, or pass --{kind} <run id>.")
        found[kind] = runs[0].info.run_id
    logger.info("Comparing the latest runs: baseline %s, upstream %s.", found["baseline"], found["upstream"])
    return found

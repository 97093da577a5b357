"""Inference and comparison runs in MLflow: each lands beside the training runs it used, tagged with
their ids; a comparison has one child run per forecast with identical metric keys."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from convlstm.cli import configure_logging
from convlstm.config import CompareSettings, InferSettings, RunSettings
from convlstm.data.demo import demo_data_path
from convlstm.errors import TrackingError
from convlstm.evaluation.comparison import ComparisonResult, compare, inputs_from_files, inputs_from_models
from convlstm.evaluation.report import flat_metrics
from convlstm.forecast import ForecastModel, load_forecast_model
from convlstm.inference import InferenceOutcome, run_inference
from convlstm.tracking.registry import set_champion
from convlstm.tracking.runs import (
    DEFAULT_EXPERIMENT,
    experiment_of_run,
    log_new_params,
    managed_run,
    settings_params,
    timestamped,
)
from convlstm.tracking.store import check_tracking_store
from convlstm.tracking.uris import resolve_model

logger = logging.getLogger(__name__)


def _load_model(reference: str, run: RunSettings) -> ForecastModel:
    """The model behind a checkpoint, run id or model URI, on the settings' device."""
    checkpoint, normalizer = resolve_model(reference)
    return load_forecast_model(checkpoint, run.device, normalizer)


def _start(output_dir: str | None, name: str, log_name: str, run: RunSettings) -> tuple[Path, Path]:
    """The output folder (default ``outputs/<name>``) and its log file, logging set up to write there."""
    out = Path(output_dir or Path("outputs") / name)
    configure_logging(run.log_level, out / log_name)
    return out, out / log_name


def _experiment(run: RunSettings, training_run_id: str | None) -> str | None:
    """The experiment asked for, else the one of the training run used (so results land beside it)."""
    return run.experiment_name or (experiment_of_run(training_run_id) if training_run_id else None)


def infer_tracked(settings: InferSettings) -> InferenceOutcome:
    """Forecast with a trained model inside an MLflow inference run tagged with its training run.

    Parameters
    ----------
    settings : InferSettings
        The model (checkpoint or reference), the data and what to write.

    Returns
    -------
    InferenceOutcome
        The predictions, the files written and the scores against the observations in the data.
    """
    check_tracking_store()
    reference = str(settings.checkpoint or settings.model)
    forecast = _load_model(reference, settings.run)
    name = timestamped(f"infer-{forecast.experiment_type}")
    out, log_path = _start(settings.output_dir, name, "inference.log", settings.run)
    data_path = Path(settings.data) if settings.data else demo_data_path()
    tags = {"run_type": "inference", "experiment_type": forecast.experiment_type, "model_uri": reference,
            "training_run_id": forecast.run_id or ""}
    with managed_run(None, name, _experiment(settings.run, forecast.run_id), tags, log_path) as run:
        outcome = run_inference(forecast, data_path, out, settings.split, settings.run.batch_size, settings.visualize,
                                settings.max_maps, extra_metadata={"model_uri": reference},
                                nan_policy=settings.run.nan_policy)  # type: ignore[arg-type]
        log_new_params(run.info.run_id, {**settings_params(settings), "data": str(data_path), "model_uri": reference})
        mlflow.log_metrics(outcome.scores)
        for path in outcome.files:
            mlflow.log_artifact(str(path), "maps" if path.suffix == ".png" else None)
    return outcome


def latest_training_runs(experiment_name: str | None) -> dict[str, str]:
    """The newest finished baseline and upstream training runs of an experiment (what ``compare`` uses
    when no runs are named); under ``mlflow run`` the experiment is the one it runs in.

    Parameters
    ----------
    experiment_name : str, optional
        Default: ``mlflow run``'s experiment, else :data:`DEFAULT_EXPERIMENT`.

    Returns
    -------
    dict of str to str
        ``{"baseline": run id, "upstream": run id}``.
    """
    client = MlflowClient()
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if experiment_name or not experiment_id:
        experiment = client.get_experiment_by_name(experiment_name or DEFAULT_EXPERIMENT)
        if experiment is None:
            raise TrackingError(f"No MLflow experiment named {experiment_name or DEFAULT_EXPERIMENT!r}; train first or "
                                "name the runs (--baseline, --upstream).")
        experiment_id = experiment.experiment_id
    found = {}
    for kind in ("baseline", "upstream"):
        runs = client.search_runs([experiment_id], f"tags.run_type = 'training' and tags.experiment_type = '{kind}' "
                                  "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise TrackingError(f"No finished {kind} training run in experiment {experiment_id}; train one, or pass "
                                f"--{kind} <run id>.")
        found[kind] = runs[0].info.run_id
    logger.info("Comparing the latest runs: baseline %s, upstream %s.", found["baseline"], found["upstream"])
    return found


def log_comparison(result: ComparisonResult, params: dict[str, Any]) -> None:
    """Differences with intervals and the main scores on the parent run; one child run per forecast.

    Child runs (baseline, upstream, persistence, climatology) carry identical metric keys, so ticking
    them in the MLflow UI's compare view lines every forecast up side by side.

    Parameters
    ----------
    result : ComparisonResult
        What ``convlstm.evaluation.comparison.compare`` returned.
    params : dict
        The comparison's settings.
    """
    parent = mlflow.active_run().info.run_id
    log_new_params(parent, params)  # the resolved run ids are tags
    flat: dict[str, float] = {}
    for key, diff in result.differences.items():
        flat[f"delta_{key}"] = diff["estimate"]
        flat[f"delta_{key}_ci_low"] = diff["low"]
        flat[f"delta_{key}_ci_high"] = diff["high"]
    for name in ("baseline", "upstream"):
        flat.update({f"{name}_{k}": v for k, v in flat_metrics(result.scores, name).items()})
    mlflow.log_metrics({k: float(v) for k, v in flat.items() if np.isfinite(v)})
    mlflow.set_tag("verdict", result.verdict[:5000])
    for path in result.files:
        mlflow.log_artifact(str(path))
    for name in map(str, result.scores["forecast"].values):
        with mlflow.start_run(run_name=name, nested=True, parent_run_id=parent):
            mlflow.set_tags({"run_type": "comparison_forecast", "forecast": name})
            # Every key, undefined scores as NaN: dropping them would give the children different key sets.
            mlflow.log_metrics(flat_metrics(result.scores, name))


def compare_tracked(settings: CompareSettings) -> tuple[ComparisonResult, Path]:
    """Compare two models (or two predictions files) inside an MLflow comparison run.

    Parameters
    ----------
    settings : CompareSettings
        The two models or files, and how to score them.

    Returns
    -------
    tuple
        The comparison result and the path of its ``report.md``.
    """
    check_tracking_store()
    models = {"baseline": settings.baseline, "upstream": settings.upstream}
    if not settings.uses_files and not settings.baseline:
        models = dict(latest_training_runs(settings.run.experiment_name))
    name = timestamped("compare")
    out, log_path = _start(settings.output_dir, name, "compare.log", settings.run)
    run_ids: dict[str, str | None] = {"baseline": None, "upstream": None}
    if settings.uses_files:
        inputs = inputs_from_files(settings.baseline_predictions, settings.upstream_predictions, settings.ground_truth)
    else:
        loaded = {kind: _load_model(str(reference), settings.run) for kind, reference in models.items()}
        run_ids = {kind: model.run_id for kind, model in loaded.items()}
        inputs = inputs_from_models(loaded["baseline"], loaded["upstream"], settings.data or demo_data_path(),
                                    settings.run.batch_size, settings.run.nan_policy)  # type: ignore[arg-type]
    tags = {"run_type": "comparison", **{f"{kind}_run_id": rid or "" for kind, rid in run_ids.items()}}
    with managed_run(None, name, _experiment(settings.run, run_ids["baseline"]), tags, log_path):
        result = compare(inputs, out, tuple(settings.thresholds), tuple(settings.fss_windows), settings.n_boot,
                         settings.block_length)
        log_comparison(result, {**settings_params(settings), **models})
        if not settings.uses_files and settings.set_aliases and all(run_ids.values()):
            set_champion(run_ids, {kind: float(result.scores["rmse_mm"].sel(forecast=kind)) for kind in run_ids},  # type: ignore[arg-type]
                         settings.registered_model_name)
    return result, out / "report.md"

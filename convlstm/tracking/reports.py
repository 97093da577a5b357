"""Inference and comparison runs in MLflow: each lands beside the training runs it used, tagged with
their ids; a comparison logs a few headline metrics and its full score tables as table artifacts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID, MLFLOW_EXPERIMENT_NAME
from mlflow.tracking import MlflowClient
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from convlstm.cli import configure_logging
from convlstm.config import CompareSettings, InferSettings, RunSettings
from convlstm.data.demo import demo_data_path
from convlstm.errors import TrackingError
from convlstm.evaluation.comparison import ComparisonResult, compare, inputs_from_files, inputs_from_models
from convlstm.evaluation.report import difference_rows, headline_metrics, score_rows
from convlstm.forecast import ForecastModel, load_forecast_model
from convlstm.inference import InferenceOutcome, run_inference
from convlstm.tracking.registry import set_champion
from convlstm.tracking.runs import (
    experiment_of_run,
    log_new_params,
    managed_run,
    settings_params,
    timestamped,
)
from convlstm.tracking.store import check_tracking_store
from convlstm.tracking.uris import resolve_members, resolve_model

logger = logging.getLogger(__name__)

#: The comparison run's metric keys start with this: the MLflow UI's chart view puts them in a section of their own.
METRIC_PREFIX = "compare/"
#: The newest finished training runs searched for the latest one of its own (not a seed or a trial).
LATEST_SEARCHED = 200
#: The inference run's scores (``infer/rmse_mm``, ...): their own chart section, apart from the learning curves.
INFER_METRIC_PREFIX = "infer/"
#: Table artifacts (``mlflow.log_table``; read back with ``mlflow.load_table``): every score of every forecast,
#: one row per forecast and score; upstream − baseline per score with its 95 % interval.
SCORES_TABLE, DIFFERENCES_TABLE = "scores_table.json", "differences_table.json"
#: With several trainings a side: upstream − baseline for each pairing of seeds (``SeedComparison.table``).
SEEDS_TABLE = "seeds_table.json"


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
    data = settings.data or str(demo_data_path())
    tags = {"run_type": "inference", "experiment_type": forecast.experiment_type, "model_uri": reference,
            "training_run_id": forecast.run_id or ""}
    with managed_run(None, name, _experiment(settings.run, forecast.run_id), tags, log_path) as run:
        outcome = run_inference(forecast, data, out, settings.split, settings.run.batch_size, settings.visualize,
                                settings.max_maps, extra_metadata={"model_uri": reference},
                                nan_policy=settings.run.nan_policy, member=settings.run.member)  # type: ignore[arg-type]
        log_new_params(run.info.run_id, {**settings_params(settings), "data_path": data, "model_uri": reference})
        mlflow.log_metrics({INFER_METRIC_PREFIX + key: value for key, value in outcome.scores.items()})
        for path in outcome.files:
            mlflow.log_artifact(str(path), "maps" if path.suffix == ".png" else None)
    return outcome


def latest_training_runs(experiment_name: str | None) -> dict[str, str]:
    """The newest finished baseline and upstream training runs of an experiment (what ``compare`` uses
    when no runs are named); under ``mlflow run`` the experiment is the one it runs in.

    Parameters
    ----------
    experiment_name : str, optional
        Default: the experiment a run would land in (``mlflow run``'s, else ``MLFLOW_EXPERIMENT_NAME``,
        else MLflow's ``Default``), as training chooses it.

    Returns
    -------
    dict of str to str
        ``{"baseline": run id, "upstream": run id}``.
    """
    client = MlflowClient()
    experiment_id = None if experiment_name else MLFLOW_EXPERIMENT_ID.get()
    name = experiment_name or MLFLOW_EXPERIMENT_NAME.get()
    if name and not experiment_id:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise TrackingError(f"No MLflow experiment named {name!r}; train first or name the runs (--baseline, "
                                "--upstream).")
        experiment_id = experiment.experiment_id
    experiment_id = experiment_id or DEFAULT_EXPERIMENT_ID
    found = {}
    for kind in ("baseline", "upstream"):
        runs = client.search_runs([experiment_id], f"tags.run_type = 'training' and tags.experiment_type = '{kind}' "
                                  "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                  max_results=LATEST_SEARCHED)
        # A seed of an ensemble or a trial of a sweep is one member of its parent, not a training of its own.
        alone = [run for run in runs if MLFLOW_PARENT_RUN_ID not in run.data.tags]
        if not alone:
            raise TrackingError(f"No finished {kind} training run of its own in experiment {experiment_id} (seeds of "
                                f"an ensemble and sweep trials are not picked); train one, or pass --{kind} <run id> "
                                "(an ensemble's or a sweep's parent run id works).")
        found[kind] = alone[0].info.run_id
    logger.info("Comparing the latest runs: baseline %s, upstream %s.", found["baseline"], found["upstream"])
    return found


def log_comparison(result: ComparisonResult, params: dict[str, Any]) -> None:
    """The comparison in MLflow: a few headline metrics, every score as a table, the report and figures.

    The comparison run sits in the training runs' experiment, whose chart view draws one chart per
    metric key of any run; so only :func:`~convlstm.evaluation.report.headline_metrics` are metrics,
    under ``compare/`` (the UI gives a ``<prefix>/`` its own chart section, apart from the training
    curves), and the per-threshold, per-window scores of all the forecasts are the tables
    :data:`SCORES_TABLE` and :data:`DIFFERENCES_TABLE`. The two verdicts are the tags ``verdict`` and
    ``linear_verdict`` (does the network use the upstream information at least as well as a linear model?).
    With several trainings a side, the per-pairing differences are the table :data:`SEEDS_TABLE` and whether
    the gain holds for every seed the tag ``seed_verdict``.

    Parameters
    ----------
    result : ComparisonResult
        What ``convlstm.evaluation.comparison.compare`` returned.
    params : dict
        The comparison's settings.
    """
    log_new_params(mlflow.active_run().info.run_id, params)  # the resolved run ids are tags
    mlflow.log_metrics({METRIC_PREFIX + key: value for key, value in headline_metrics(result).items() if np.isfinite(value)})
    mlflow.set_tag("verdict", result.verdict[:5000])
    mlflow.set_tag("linear_verdict", result.linear_verdict[:5000])
    mlflow.log_table(score_rows(result.scores), SCORES_TABLE)
    mlflow.log_table(difference_rows(result.differences), DIFFERENCES_TABLE)
    if result.seeds is not None:
        mlflow.set_tag("seed_verdict", result.seeds.verdict[:5000])
        mlflow.log_table(result.seeds.table, SEEDS_TABLE)
    for path in result.files:
        mlflow.log_artifact(str(path))


def compare_tracked(settings: CompareSettings) -> tuple[ComparisonResult, Path]:
    """Compare two models (or two predictions files) inside an MLflow comparison run.

    Each side may be several trainings (a parent run, or run ids separated by commas): then each side's
    forecast is its ensemble mean and the report adds the difference over seeds
    (:func:`~convlstm.evaluation.seeds.compare_seeds`); the registry aliases are set for one model a side only.

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
    first_run = None  # the experiment of the (first) baseline training is where the comparison lands
    if settings.uses_files:
        inputs = inputs_from_files(settings.baseline_predictions, settings.upstream_predictions, settings.ground_truth)
    else:
        loaded = {kind: [_load_model(member, settings.run) for member in resolve_members(str(reference))]
                  for kind, reference in models.items()}
        run_ids = {kind: ",".join(model.run_id or "" for model in side) or None for kind, side in loaded.items()}
        first_run = loaded["baseline"][0].run_id
        inputs = inputs_from_models(loaded["baseline"], loaded["upstream"], settings.data or demo_data_path(),
                                    settings.run.batch_size, settings.run.nan_policy, settings.run.member)  # type: ignore[arg-type]
    tags = {"run_type": "comparison", **{f"{kind}_run_id": rid or "" for kind, rid in run_ids.items()}}
    with managed_run(None, name, _experiment(settings.run, first_run), tags, log_path):
        result = compare(inputs, out, tuple(settings.thresholds), tuple(settings.fss_windows), settings.n_boot,
                         settings.block_length)
        log_comparison(result, settings_params(settings))
        if not settings.uses_files and settings.set_aliases and all(run_ids.values()) and result.seeds is None:
            set_champion(run_ids, {kind: float(result.scores["rmse_mm"].sel(forecast=kind)) for kind in run_ids},  # type: ignore[arg-type]
                         settings.registered_model_name)
    return result, out / "report.md"

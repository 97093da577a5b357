"""A hyperparameter sweep in MLflow: an Optuna study (TPE sampler, median pruner), each trial a nested child
training run of one parent sweep run, the study stored so that rerunning the same command continues it.

Parallel trials are several sweep processes on one study, not threads: a trial installs signal handlers
(main thread only), points the process's logging at its own log file, and MLflow's active-run stack is
per thread, so a trial in a worker thread would lose its parent run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # the plots are files; no display is needed (or present on a server)
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from convlstm.cli import configure_logging  # noqa: E402
from convlstm.config import SweepSettings, TrainSettings  # noqa: E402
from convlstm.data.demo import demo_data_path  # noqa: E402
from convlstm.data.regions import check_regions  # noqa: E402
from convlstm.data.schema import open_dataset  # noqa: E402
from convlstm.errors import ConfigError, TrainingDiverged  # noqa: E402
from convlstm.settings import as_text  # noqa: E402
from convlstm.training.trainer import TrainingCallback  # noqa: E402
from convlstm.tracking.registry import register_run_model  # noqa: E402
from convlstm.tracking.runs import ended_status, log_new_params, managed_run, settings_params, timestamped  # noqa: E402
from convlstm.tracking.store import check_tracking_store  # noqa: E402
from convlstm.tracking.training import train_tracked  # noqa: E402
from convlstm.tuning.space import Dimension, apply, base_params, load_space  # noqa: E402

logger = logging.getLogger(__name__)

#: The parent run's metric keys start with this: their own chart section, apart from the learning curves.
SWEEP_PREFIX = "sweep/"
TRIALS_TABLE = "trials_table.json"
BEST_TRIAL = "best_trial.json"
HISTORY_PLOT = "optimization_history.png"
IMPORTANCE_PLOT = "param_importances.png"
LOG_NAME = "sweep.log"
#: Trial run tag: ``running`` while it trains, then ``complete``, ``pruned``, ``failed`` or ``killed`` (a signal).
STATE_TAG = "sweep_state"
#: Study user attributes: the parent run, and what the study was made with (a rerun must not change them).
PARENT_ATTR, SPACE_ATTR, OBJECTIVE_ATTR = "mlflow_parent_run_id", "space", "objective"
RUN_ATTR = "mlflow_run_id"
#: Trial failures that leave the sweep going (the trial FAILs); any other error stops the sweep.
TRIAL_FAILURES = (TrainingDiverged, RuntimeError, MemoryError)
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
#: A process stops once the study holds enough of these: its own finished trials and other processes' running ones.
COUNTED_STATES = (*FINISHED_STATES, TrialState.RUNNING)
#: Sweeps started on a new study within this many seconds of each other settle on one parent run.
CLAIM_WINDOW_S = 600


class PrunedTrial(optuna.TrialPruned):
    """Optuna's pruning signal; the trial's MLflow run ends KILLED (``run_status``), tagged ``sweep_state=pruned``."""

    run_status = "KILLED"
    run_tags = {STATE_TAG: "pruned"}


class PruningCallback(TrainingCallback):
    """Reports each epoch's objective metric to the trial and stops training when the pruner says so.

    Parameters
    ----------
    trial : optuna.Trial
        The running trial.
    metric : str
        The epoch metric reported (``val_rmse_mm`` or ``val_loss``).
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Report the epoch; raise :class:`PrunedTrial` (after the epoch is logged and checkpointed) to prune.

        Parameters
        ----------
        epoch : int
            The epoch just finished.
        metrics : dict of str to float
            The epoch's metrics.
        """
        value = metrics[self.metric]
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise PrunedTrial(f"trial {self.trial.number} pruned after epoch {epoch}: {self.metric} {value:.4g} is worse "
                              "than the median of earlier trials at that epoch")


@dataclass
class TrackedSweep:
    """What one study's sweep did.

    Parameters
    ----------
    run_id : str
        The parent sweep run.
    study_name : str
        The Optuna study.
    storage : str
        Its RDB URL.
    counts : dict of str to int
        Trials by state (``complete``, ``pruned``, ``failed``).
    best_run_id : str or None
        The best complete trial's run (None without one).
    best_value : float or None
        Its objective value.
    registered : str or None
        ``<name>/<version>`` of the best trial's registered model.
    """

    run_id: str
    study_name: str
    storage: str
    counts: dict[str, int]
    best_run_id: str | None
    best_value: float | None
    registered: str | None


def experiment_label(settings: TrainSettings) -> str:
    """The MLflow experiment the sweep logs to, by name: study names and the default folder derive from it."""
    if settings.experiment_name:
        return settings.experiment_name
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return os.environ["MLFLOW_EXPERIMENT_NAME"]
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return MlflowClient().get_experiment(os.environ["MLFLOW_EXPERIMENT_ID"]).name
    return "Default"


def train_settings(settings: SweepSettings, include_upstream: bool) -> TrainSettings:
    """The base training settings of one experiment of a sweep (plain ``TrainSettings``, no seeds or resume)."""
    values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(TrainSettings)}
    return TrainSettings(**{**values, "include_upstream": include_upstream, "seeds": None, "resume": None})


def sweep_tracked(settings: SweepSettings) -> list[TrackedSweep]:
    """Run the sweep (or both experiments' sweeps, one after the other, each its own study and parent run).

    Parameters
    ----------
    settings : SweepSettings
        The sweep's settings; its training settings are the base configuration.

    Returns
    -------
    list of TrackedSweep
        One per experiment swept.
    """
    space = load_space(settings.space)  # a bad file is refused before anything starts
    check_tracking_store()
    label = experiment_label(settings)
    output_dir = Path(settings.output_dir or Path("outputs") / f"sweep-{label}").resolve()
    experiments = (False, True) if settings.experiments == "both" else (settings.include_upstream,)
    if len(experiments) > 1 and settings.study_name:
        raise ConfigError("--study-name names one study; with --experiments both the two studies are named "
                          "<experiment>-baseline and <experiment>-upstream: leave --study-name out.", "study_name")
    if len(experiments) > 1:  # the upstream region is checked now, not after the baseline's whole study
        data = open_dataset(settings.data or str(demo_data_path()), member=settings.member)
        check_regions(data, settings.regions, include_upstream=True)
    if len(experiments) > 1 and os.environ.get("MLFLOW_RUN_ID"):
        _hand_over_launcher_run(os.environ.pop("MLFLOW_RUN_ID"))
    return [_sweep_one(settings, include_upstream, space, label, output_dir) for include_upstream in experiments]


def _hand_over_launcher_run(run_id: str) -> None:
    """Under ``mlflow run`` with two experiments: each gets its own parent run; the launcher's run says so."""
    client = MlflowClient()
    client.set_tag(run_id, "run_type", "sweep_launcher")
    client.set_tag(run_id, "mlflow.note.content", "This launch swept both experiments; their parent runs are the runs "
                                                  "tagged run_type=sweep in this experiment.")


def _sweep_one(settings: SweepSettings, include_upstream: bool, space: list[Dimension], label: str,
               output_dir: Path) -> TrackedSweep:
    """One experiment's study: open (or continue) it, run the trials it still lacks, summarize it on its parent run."""
    base = train_settings(settings, include_upstream)
    kind = base.experiment_type
    study_name = settings.study_name or f"{label}-{kind}"
    study_dir = output_dir / study_name
    study_dir.mkdir(parents=True, exist_ok=True)
    log_path = study_dir / LOG_NAME
    configure_logging(settings.log_level, log_path)
    storage_url = settings.study_storage or f"sqlite:///{output_dir / 'optuna.db'}"
    study = _open_study(settings, study_name, storage_url, space)
    tags = {"run_type": "sweep", "experiment_type": kind, "include_upstream": str(include_upstream).lower(),
            "sweep_study": study_name, "sweep_storage": storage_url, "sweep_objective": settings.objective}
    parent_id, shared = _parent_run(study, label, tags, timestamped(f"{kind}-sweep"))
    if shared:  # another process runs this study too: draw other values than it does
        study.sampler = optuna.samplers.TPESampler(seed=settings.model.seed + len(study.trials) + os.getpid())
    with managed_run(parent_id, None, settings.experiment_name, tags, log_path,
                     keep_running=lambda: _others_running(study)) as run:
        log_new_params(run.info.run_id, settings_params(dataclasses.replace(settings, include_upstream=include_upstream)))
        _end_stale_trial_runs(study, run.info.experiment_id)
        finished = sum(t.state in FINISHED_STATES for t in study.get_trials(deepcopy=False))
        remaining = settings.n_trials - finished
        logger.info("Sweep %s (parent run %s): %d of %d trials finished, %d to run.", study_name, run.info.run_id,
                    finished, settings.n_trials, max(remaining, 0))
        if remaining > 0:
            objective = _Objective(base, space, settings.objective, study_name, study_dir, log_path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(objective, n_trials=remaining, catch=TRIAL_FAILURES, gc_after_trial=True,
                               callbacks=[optuna.study.MaxTrialsCallback(settings.n_trials, states=COUNTED_STATES)])
        _end_stale_trial_runs(study, run.info.experiment_id)
        result = _summarize(study, run.info.run_id, base, settings.objective)
    return dataclasses.replace(result, storage=storage_url)


def _parent_run(study: optuna.Study, label: str, tags: dict[str, str], run_name: str) -> tuple[str, bool]:
    """The study's parent run, and whether another process is running the study too.

    The parent is the run the study names, else a new one (``mlflow run``'s own run, when there is one). Sweeps
    started on a new study at the same time each make one; all settle on the earliest, the others' are deleted
    (or, for ``mlflow run``'s run, tagged ``sweep_launcher`` and pointed to it).
    """
    client = MlflowClient()
    named = study.user_attrs.get(PARENT_ATTR)
    existing = _active_run(named) if named else None
    if existing is not None:
        return named, existing.info.status == "RUNNING"
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher:
        own = client.get_run(launcher)
        for key, value in {**tags, "mlflow.runName": run_name}.items():
            client.set_tag(launcher, key, value)
    else:
        own = client.create_run(mlflow.set_experiment(label).experiment_id, run_name=run_name, tags=tags)
    since = own.info.start_time - CLAIM_WINDOW_S * 1000
    rivals = client.search_runs([own.info.experiment_id],
                                f"tags.sweep_study = '{study.study_name}' and tags.run_type = 'sweep' and "
                                f"attributes.status = 'RUNNING' and attributes.start_time >= {since}")
    others = [run for run in rivals if run.info.run_id != own.info.run_id
              and run.data.tags.get("sweep_storage") == tags["sweep_storage"]]
    first = min([own, *others], key=lambda run: (run.info.start_time, run.info.run_id)).info.run_id
    if first != own.info.run_id:
        logger.info("Another sweep started study %s at the same time; its run %s is the parent.",
                    study.study_name, first)
        if launcher:
            _hand_over_launcher_run(launcher)
        else:
            client.delete_run(own.info.run_id)
    study.set_user_attr(PARENT_ATTR, first)
    if named:
        client.set_tag(first, "mlflow.note.content", f"Continues Optuna study {study.study_name} "
                                                     f"({tags['sweep_storage']}); its earlier parent run {named} is "
                                                     "not in this tracking store.")
    return first, bool(others)


def _others_running(study: optuna.Study) -> bool:
    """Whether another process still runs trials of the study (asked when this one is done with its own)."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _open_study(settings: SweepSettings, study_name: str, storage_url: str, space: list[Dimension]) -> optuna.Study:
    """Create the study, or load it and check it was made with the same space and objective."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(storage_url, heartbeat_interval=settings.heartbeat_s,
                                             grace_period=2 * settings.heartbeat_s)
    space_text = json.dumps([dataclasses.asdict(d) for d in space], sort_keys=True)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    done = existing[study_name].n_trials if study_name in existing else 0
    # the seed moves on with the study, so a continued study does not draw its first trials' values again
    sampler = optuna.samplers.TPESampler(seed=settings.model.seed + done)
    pruner = make_pruner(settings)
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                direction="minimize", load_if_exists=True)
    if study_name not in existing:
        study.set_user_attr(SPACE_ATTR, space_text)
        study.set_user_attr(OBJECTIVE_ATTR, settings.objective)
        study.enqueue_trial(base_params(space, settings.model), skip_if_exists=True)  # the base configuration first
        return study
    for attr, value, flag in ((SPACE_ATTR, space_text, "space"), (OBJECTIVE_ATTR, settings.objective, "objective")):
        if study.user_attrs.get(attr) != value:
            raise ConfigError(f"--{flag}: study {study_name} in {storage_url} was made with another {flag}; keep it to "
                              "continue the study, or pass a new --study-name.", flag)
    return study


def make_pruner(settings: SweepSettings) -> optuna.pruners.BasePruner:
    """The median pruner: a trial whose epoch is worse than the median of earlier trials at that epoch stops.

    Steps are epochs counted from 1 and Optuna prunes from step ``n_warmup_steps`` on, so epochs 1..W are spared
    with ``n_warmup_steps = W + 1``.
    """
    return optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials,
                                       n_warmup_steps=settings.pruner_warmup_epochs + 1)


def _active_run(run_id: str) -> Any | None:
    """The run, unless it is deleted or not in this tracking store."""
    try:
        run = MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - an id of another store, or deleted for good
        return None
    return run if run.info.lifecycle_stage == "active" else None


def _trial_runs(experiment_id: str, study_name: str) -> list[Any]:
    """The study's trial runs in this experiment (by their ``sweep_study`` tag)."""
    return MlflowClient().search_runs([experiment_id], f"tags.sweep_study = '{study_name}' and tags.run_type = 'training'",
                                      max_results=10000)


def _end_stale_trial_runs(study: optuna.Study, experiment_id: str) -> None:
    """Fail the trials a killed sweep left RUNNING (no heartbeat for the grace period) and end their MLflow runs
    FAILED; a trial another live process is running keeps its heartbeat and is left alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    client = MlflowClient()
    for run in _trial_runs(experiment_id, study.study_name):
        number = int(run.data.tags.get("sweep_trial", -1))
        if run.info.status == "RUNNING" and states.get(number) not in (None, TrialState.RUNNING):
            client.set_tag(run.info.run_id, STATE_TAG, "failed")
            client.set_tag(run.info.run_id, "error", "The sweep running this trial was killed; the study marked it FAIL.")
            client.set_terminated(run.info.run_id, "FAILED")
            logger.warning("Trial %d (run %s) was left running by a killed sweep: marked failed.", number, run.info.run_id)


class _Objective:
    """One trial: the base settings with the trial's values, trained as a nested child run; returns its objective."""

    def __init__(self, base: TrainSettings, space: list[Dimension], metric: str, study_name: str, study_dir: Path,
                 log_path: Path) -> None:
        self.base, self.space, self.metric = base, space, metric
        self.study_name, self.study_dir, self.log_path = study_name, study_dir, log_path

    def __call__(self, trial: optuna.Trial) -> float:
        values = {dimension.name: dimension.suggest(trial) for dimension in self.space}
        settings = dataclasses.replace(self.base, output_dir=str(self.study_dir / f"trial-{trial.number:03d}"),
                                       model=apply(self.base.model, values), registered_model_name="")
        tags = {"sweep_study": self.study_name, "sweep_trial": str(trial.number), STATE_TAG: "running",
                "mlflow.runName": f"{settings.experiment_type}-trial{trial.number}"}
        logger.info("Trial %d: %s", trial.number, ", ".join(f"{k}={as_text(v)}" for k, v in values.items()))
        try:
            trained = train_tracked(settings, nested=True, callbacks=[PruningCallback(trial, self.metric)], tags=tags)
        except optuna.TrialPruned:
            raise
        except BaseException as exc:
            self._mark_failed(trial.number, exc)
            raise
        finally:
            configure_logging(self.base.log_level, self.log_path)  # back to the sweep's log (appended)
        trial.set_user_attr(RUN_ATTR, trained.run_id)
        MlflowClient().set_tag(trained.run_id, STATE_TAG, "complete")
        state = trained.outcome.state
        value = state.best_val_loss if self.metric == "val_loss" else state.history[state.best_epoch - 1][self.metric]
        trial.set_user_attr("test_rmse_mm", trained.outcome.test_scores.get("test_rmse_mm", float("nan")))
        return float(value)

    def _mark_failed(self, number: int, exc: BaseException) -> None:
        """Tag the trial's run (if it started) ``sweep_state=failed``, or ``killed`` when a signal stopped it (its
        run ended KILLED); managed_run has ended it."""
        state = "killed" if ended_status(exc) == "KILLED" else "failed"
        logger.warning("Trial %d %s: %s", number, state, exc)
        runs = MlflowClient().search_runs(
            [mlflow.active_run().info.experiment_id],  # type: ignore[union-attr]
            f"tags.sweep_study = '{self.study_name}' and tags.sweep_trial = '{number}'")
        for run in runs:
            MlflowClient().set_tag(run.info.run_id, STATE_TAG, state)


def _trial_run_ids(study: optuna.Study, experiment_id: str) -> dict[int, str]:
    """Trial number → its MLflow run id (from the runs' tags, so failed and pruned trials have one too)."""
    return {int(run.data.tags["sweep_trial"]): run.info.run_id for run in _trial_runs(experiment_id, study.study_name)}


def _summarize(study: optuna.Study, run_id: str, base: TrainSettings, metric: str) -> TrackedSweep:
    """Log the study on the parent run: counts, the best trial, the trials table, Optuna's plots; register the best model.

    Params cannot change once logged and a continued study may find a better trial, so the best trial's
    values are metrics (``sweep/best_<param>``; categorical ones also in the ``best_params`` tag and
    ``best_trial.json``), rewritten at each (re)run.
    """
    trials = study.get_trials(deepcopy=False)
    counts = {name: sum(t.state == state for t in trials) for name, state in
              (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED), ("failed", TrialState.FAIL))}
    mlflow.log_metrics({f"{SWEEP_PREFIX}n_{name}": count for name, count in counts.items()})
    experiment_id = mlflow.active_run().info.experiment_id  # type: ignore[union-attr]
    run_ids = _trial_run_ids(study, experiment_id)
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration"), multi_index=False)
    if not table.empty:
        table["run_id"] = [run_ids.get(int(n), "") for n in table["number"]]
        table["state"] = table["state"].astype(str)
        table["duration_s"] = pd.to_timedelta(table.pop("duration")).dt.total_seconds()
        mlflow.log_text(table.to_json(orient="split", index=False), TRIALS_TABLE)
    _log_plots(study, counts["complete"])
    if not counts["complete"]:
        mlflow.set_tag("sweep_note", "No trial completed: no best trial and no model registered.")
        return TrackedSweep(run_id, study.study_name, "", counts, None, None, None)
    best = study.best_trial
    best_run = best.user_attrs.get(RUN_ATTR) or run_ids.get(best.number)
    numbers = {k: v for k, v in best.params.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    mlflow.log_metrics({f"{SWEEP_PREFIX}best_value": float(best.value), f"{SWEEP_PREFIX}best_trial": best.number,  # type: ignore[arg-type]
                        **{f"{SWEEP_PREFIX}best_{k}": float(v) for k, v in numbers.items()}})
    mlflow.set_tags({"best_trial": str(best.number), "best_run_id": str(best_run), "best_params": json.dumps(best.params)})
    mlflow.log_dict({"number": best.number, "run_id": best_run, "objective": metric, "value": best.value,
                     "params": best.params}, BEST_TRIAL)
    logger.info("Best trial %d (run %s): %s %.4g with %s.", best.number, best_run, metric, best.value, best.params)
    registered = _register_best(best_run, base, study.study_name) if best_run else None
    return TrackedSweep(run_id, study.study_name, "", counts, best_run, float(best.value), registered)  # type: ignore[arg-type]


def _log_plots(study: optuna.Study, n_complete: int) -> None:
    """Optuna's optimization history and (with two complete trials or more) parameter importances, as PNGs."""
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        plots = [(HISTORY_PLOT, optuna_plots.plot_optimization_history)]
        if n_complete >= 2:
            plots.append((IMPORTANCE_PLOT, optuna_plots.plot_param_importances))
        else:
            mlflow.set_tag("sweep_note_importance", f"Parameter importances need 2 complete trials; {n_complete} so far.")
        for name, plot in plots:
            try:
                axes = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. importances of a space no complete trial varied
                mlflow.set_tag(f"sweep_note_{Path(name).stem}", f"not drawn: {exc}"[:500])
                continue
            figure = axes.figure
            figure.tight_layout()
            mlflow.log_figure(figure, name)
            plt.close(figure)


def _register_best(run_id: str, base: TrainSettings, study_name: str) -> str | None:
    """Register the best trial's logged model (once per trial: a rerun with the same best trial adds nothing)."""
    name = base.registered_model_name
    if not name:
        return None
    rmse = MlflowClient().get_run(run_id).data.metrics.get("test_rmse_mm", float("nan"))
    version = register_run_model(run_id, name, base.experiment_type, rmse)
    if version is None:
        return None
    MlflowClient().set_model_version_tag(name, version, "sweep_study", study_name)
    mlflow.set_tag("registered_model", f"{name}/{version}")
    return f"{name}/{version}"

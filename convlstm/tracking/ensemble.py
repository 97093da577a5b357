"""Several seeds of one configuration under one MLflow parent run: each seed is a normal training run
(nested under the parent), trained one after another; the parent holds the shared settings, the seed
list and a summary of the seeds (a table, and the mean and spread of their scores), so the spread between
trainings can be read beside any one of them.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from convlstm.cli import configure_logging
from convlstm.config import TrainSettings
from convlstm.errors import ConfigError
from convlstm.settings import as_text
from convlstm.tracking.runs import log_new_params, managed_run, settings_params, timestamped
from convlstm.tracking.store import check_tracking_store
from convlstm.tracking.training import TrackedTraining, train_tracked

logger = logging.getLogger(__name__)

#: The parent run's metric keys start with this: their own chart section, apart from the learning curves.
ENSEMBLE_PREFIX = "ensemble/"
#: The parent's table artifact: one row per seed (``mlflow.load_table``).
SEEDS_TABLE = "seeds_table.json"
#: Per-seed scores summarized on the parent (mean and standard deviation over the seeds).
SUMMARIZED = ("best_val_loss", "test_rmse_mm", "test_mae_mm")
LOG_NAME = "ensemble.log"


@dataclass
class TrackedEnsemble:
    """What ``train_ensemble_tracked`` did: the parent run, its folder and one training per seed.

    Parameters
    ----------
    run_id : str
        The parent run.
    output_dir : pathlib.Path
        Holds one ``seed-<N>`` folder per seed and ``ensemble.log``.
    members : list of TrackedTraining
        The child runs, in the order of the seeds.
    summary : pandas.DataFrame
        One row per seed: ``seed``, ``run_id``, ``best_epoch`` and the :data:`SUMMARIZED` scores.
    """

    run_id: str
    output_dir: Path
    members: list[TrackedTraining]
    summary: pd.DataFrame


def seed_settings(settings: TrainSettings, seed: int) -> TrainSettings:
    """One seed's settings: the ensemble's, with that seed and its own folder ``<output_dir>/seed-<seed>``.

    Parameters
    ----------
    settings : TrainSettings
        The ensemble's settings (``output_dir`` set).
    seed : int
        The seed.

    Returns
    -------
    TrainSettings
        Settings of a normal training run (no ``seeds``).
    """
    return dataclasses.replace(settings, seeds=None, output_dir=str(Path(str(settings.output_dir)) / f"seed-{seed}"),
                               model=dataclasses.replace(settings.model, seed=seed))


def summarize(members: list[TrackedTraining]) -> tuple[pd.DataFrame, dict[str, float]]:
    """The per-seed table and the mean and standard deviation (ddof 1: a sample of trainings) of its scores.

    Parameters
    ----------
    members : list of TrackedTraining
        The seeds' trainings.

    Returns
    -------
    tuple
        The table (one row per seed) and ``{"<score>_mean": ..., "<score>_std": ...}`` (std NaN for one seed).
    """
    rows = [{"seed": m.settings.model.seed, "run_id": m.run_id, "best_epoch": m.outcome.state.best_epoch,
             "best_val_loss": m.outcome.state.best_val_loss,
             **{key: m.outcome.test_scores.get(key, np.nan) for key in SUMMARIZED[1:]}} for m in members]
    table = pd.DataFrame(rows)
    stats = {}
    for key in SUMMARIZED:
        values = table[key].to_numpy(dtype=float)
        stats[f"{key}_mean"] = float(np.mean(values))
        stats[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else np.nan
    return table, stats


def _name_seed(exc: BaseException, seed: int) -> None:
    """Put the failed seed in front of the error's message (type and exit status kept), for the parent's
    ``error`` tag and the one line the command prints."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"seed {seed}: {exc.args[0]}", *exc.args[1:])


def train_ensemble_tracked(settings: TrainSettings) -> TrackedEnsemble:
    """Train ``settings`` once per seed of ``settings.seeds``, one after another, as nested child runs of one
    parent run (tagged ``run_type=ensemble``); the first seed that fails stops the ensemble and fails the parent.

    Parameters
    ----------
    settings : TrainSettings
        With two or more ``seeds``; ``output_dir`` (default ``outputs/<experiment>-ensemble-<time>``) gets
        one ``seed-<N>`` folder per seed.

    Returns
    -------
    TrackedEnsemble
        The parent run, its folder, each seed's training and the per-seed table.
    """
    if not settings.ensemble:
        raise ConfigError("train_ensemble_tracked needs two or more --seeds.", "seeds")
    name = timestamped(f"{settings.experiment_type}-ensemble")
    output_dir = Path(settings.output_dir or Path("outputs") / name).resolve()
    if output_dir.is_dir() and any(output_dir.iterdir()):
        raise ConfigError(f"--output-dir {output_dir} already holds files; choose a new directory.", "output_dir")
    settings = dataclasses.replace(settings, output_dir=str(output_dir),
                                   data=str(Path(settings.data).resolve()) if settings.data else None)
    check_tracking_store()
    log_path = output_dir / LOG_NAME
    configure_logging(settings.log_level, log_path)
    seeds = as_text(settings.seeds)
    tags = {"run_type": "ensemble", "experiment_type": settings.experiment_type,
            "include_upstream": str(settings.include_upstream).lower(), "seeds": seeds}
    members: list[TrackedTraining] = []
    with managed_run(None, name, settings.experiment_name, tags, log_path) as run:
        log_new_params(run.info.run_id, {**settings_params(settings), "data": settings.data or "demo"})
        started = time.monotonic()
        for seed in settings.seeds or ():
            logger.info("Ensemble %s: seed %d (%d of %d).", run.info.run_id, seed, len(members) + 1, len(settings.seeds or ()))
            try:
                members.append(train_tracked(seed_settings(settings, seed), nested=True))
            except BaseException as exc:
                _name_seed(exc, seed)
                raise
            finally:
                configure_logging(settings.log_level, log_path)  # back to the parent's log (appended)
        table, stats = summarize(members)
        mlflow.log_metrics({ENSEMBLE_PREFIX + key: value for key, value in stats.items() if np.isfinite(value)})
        mlflow.log_metric(ENSEMBLE_PREFIX + "wall_time_s", time.monotonic() - started)
        mlflow.log_table(table, SEEDS_TABLE)
        logger.info("Ensemble of %d seeds (%s):\n%s", len(members), seeds, table.to_string(index=False))
    return TrackedEnsemble(run.info.run_id, output_dir, members, table)

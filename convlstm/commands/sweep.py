"""Sweep the training hyperparameters with Optuna: each trial a nested child training run of one parent run.

The ``convlstm-sweep`` command (MLflow runs it as ``python -m entrypoints.sweep``): the flags come from
``convlstm.config.SweepSettings`` (the training flags are the base configuration); the sweep is
``convlstm.tracking.sweep.sweep_tracked``.
"""

from __future__ import annotations

import click

from convlstm.cli import run_cli, settings_command
from convlstm.config import SweepSettings

EPILOG = """
\b
Examples:
  # 20 trials of the upstream experiment on the demo; rerun the same command to continue the study
  mlflow run . -e sweep --env-manager local --experiment-name convlstm-demo -P include_upstream=true -P n_trials=20
  # both experiments, the same budget and search space, one after the other
  mlflow run . -e sweep --env-manager local --experiment-name convlstm-demo -P experiments=both -P n_trials=20
  # your own search space, a shorter budget per trial
  convlstm-sweep --experiment-name convlstm-demo --space my_space.yaml --num-epochs 6
"""


@settings_command(SweepSettings, EPILOG)
def sweep(settings: SweepSettings) -> None:
    """Tune the training hyperparameters with Optuna (TPE, median pruning), recorded as nested MLflow runs."""
    from convlstm.tracking.sweep import sweep_tracked

    for result in sweep_tracked(settings):
        counts = ", ".join(f"{count} {state}" for state, count in result.counts.items())
        best = (f"best trial run {result.best_run_id} ({settings.objective} {result.best_value:.4g})"
                if result.best_run_id else "no complete trial")
        registered = f"; registered {result.registered}" if result.registered else ""
        click.echo(f"Sweep {result.study_name}: parent run {result.run_id}, trials {counts}; {best}{registered}")


def main() -> None:
    """``convlstm-sweep``: run the command; user errors end as one line and an exit status."""
    run_cli(sweep)

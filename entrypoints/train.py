"""Train a ConvLSTM U-Net: the baseline (downstream only) or the upstream experiment.

A thin door into the library: the flags come from ``convlstm.config.TrainSettings``; the run is
``convlstm.tracking.training.train_tracked``. Runs the same under ``mlflow run . -e train`` and as
``python -m entrypoints.train``.
"""

from __future__ import annotations

import click

from convlstm.cli import given_on_command_line, run_cli, settings_command
from convlstm.config import TrainSettings

EPILOG = """
\b
Examples:
  # baseline on the built-in demo atmosphere
  python -m entrypoints.train
  # upstream experiment on your own file, larger model
  python -m entrypoints.train --data era5.nc --include-upstream --hidden-channels 32 64 --num-epochs 50
  # the same through MLflow
  mlflow run . -e train -P include_upstream=true --env-manager local
  # continue an interrupted run (run id, output directory or checkpoint file)
  python -m entrypoints.train --resume <run id>
  # train a finished run on, to 20 epochs in all
  python -m entrypoints.train --resume <run id> --num-epochs 20
"""


@settings_command(TrainSettings, EPILOG)
def train(settings: TrainSettings) -> None:
    """Train the ConvLSTM U-Net and record everything in MLflow."""
    from convlstm.tracking.training import train_tracked

    # with --resume, --num-epochs only counts when given: it continues a run that ended
    outcome = train_tracked(settings, settings.model.num_epochs if given_on_command_line("num_epochs") else None)
    click.echo(f"Finished {outcome.settings.experiment_type} run {outcome.run_id}; outputs in {outcome.output_dir}")


if __name__ == "__main__":
    run_cli(train)

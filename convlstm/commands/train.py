"""Train a ConvLSTM U-Net: the baseline (downstream only) or the upstream experiment.

The ``convlstm-train`` command (MLflow runs it as ``python -m entrypoints.train``): the flags come from
``convlstm.config.TrainSettings``; the run is ``convlstm.tracking.training.train_tracked``, or with several
``--seeds`` ``convlstm.tracking.ensemble.train_ensemble_tracked``.
"""

from __future__ import annotations

import click

from convlstm.cli import given_args, given_on_command_line, run_cli, settings_command
from convlstm.config import TrainSettings
from convlstm.errors import ConfigError
from convlstm.tracking.journal import SYNC_HINT

EPILOG = """
\b
Examples:
  # baseline on the built-in demo atmosphere
  convlstm-train
  # upstream experiment on your own file, larger model
  convlstm-train --data era5.nc --include-upstream --hidden-channels 32 64 --num-epochs 50
  # the same through MLflow
  mlflow run . -e train -P include_upstream=true --env-manager local
  # five seeds of one configuration: one parent run, a child run per seed
  mlflow run . -e train -P include_upstream=true -P seeds=0,1,2,3,4 --env-manager local
  # continue an interrupted run (run id, output directory or checkpoint file)
  convlstm-train --resume <run id>
  # train a finished run on, to 20 epochs in all
  convlstm-train --resume <run id> --num-epochs 20
  # four training processes on this machine (one per GPU, or CPU processes), one MLflow run
  convlstm-train --include-upstream --nproc-per-node 4 --batch-size 16
"""


@settings_command(TrainSettings, EPILOG)
def train(settings: TrainSettings) -> None:
    """Train the ConvLSTM U-Net and record everything in MLflow."""
    from convlstm.training.distributed import launched_by_torchrun, process_group

    if settings.nproc_per_node > 1 and not launched_by_torchrun():
        from convlstm.tracking.distributed import train_distributed

        train_distributed(settings, given_args())  # torchrun runs this command in each process
        return
    with process_group(settings.device) as processes:
        _train(settings, processes.world_size, processes.is_main)


def _train(settings: TrainSettings, world_size: int, main: bool) -> None:
    """Train in this process: alone, or as one of ``world_size`` (only rank 0, ``main``, logs and reports)."""
    from convlstm.tracking.ensemble import train_ensemble_tracked
    from convlstm.tracking.training import train_tracked

    if settings.ensemble:
        if world_size > 1:
            raise ConfigError("--seeds trains its seeds one after another, each in one process: start it without "
                              "torchrun.", "seeds")
        ensemble = train_ensemble_tracked(settings)
        click.echo(f"Finished {settings.experiment_type} ensemble run {ensemble.run_id} ({len(ensemble.members)} seeds, "
                   f"child runs {', '.join(member.run_id for member in ensemble.members)}); outputs in {ensemble.output_dir}")
        return
    # with --resume, --num-epochs only counts when given: it continues a run that ended
    outcome = train_tracked(settings, settings.model.num_epochs if given_on_command_line("num_epochs") else None,
                            tags={"world_size": str(world_size)} if world_size > 1 else None)
    if not main:
        return
    processes = f" in {world_size} processes" if world_size > 1 else ""
    if outcome.pending:
        click.echo(f"Finished training {outcome.settings.experiment_type}{processes}; outputs in {outcome.output_dir}. "
                   f"The tracking server has not taken {outcome.pending} entries of the run's record "
                   f"({'run ' + outcome.run_id if outcome.run_id else 'the run is not on it yet'}): send them with "
                   f"{SYNC_HINT.format(outcome.output_dir)}")
        return
    click.echo(f"Finished {outcome.settings.experiment_type} run {outcome.run_id}{processes}; outputs in "
               f"{outcome.output_dir}")


def main() -> None:
    """``convlstm-train``: run the command; user errors end as one line and an exit status."""
    run_cli(train)


if __name__ == "__main__":  # each of several training processes: python -m convlstm.commands.train (torchrun)
    main()

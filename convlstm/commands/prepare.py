"""Prepare raw reanalysis data once: crop the regions, aggregate in time, and write a chunked Zarr store.

The ``convlstm-prepare`` command (MLflow runs it as ``python -m entrypoints.prepare``): a door into
``convlstm.tracking.prepare.prepare_tracked``; the flags come from ``convlstm.config.PrepareSettings``.
Training, inference and comparison then take the store as their ``--data`` and read it in bounded memory.
"""

from __future__ import annotations

import click

from convlstm.cli import run_cli, settings_command
from convlstm.config import PrepareSettings

EPILOG = """
\b
Examples:
  # ERA5 as the Climate Data Store delivers it (pressure-level and single-level files, hourly)
  convlstm-prepare --data "era5/*.nc" --output prepared.zarr
  # GRIB, one ensemble member, 6-hourly steps, your own regions
  convlstm-prepare --data era5.grib --member 0 --time-step 6 --output prepared.zarr \\
      --downstream-lon-min 5 --downstream-lon-max 15 --upstream-lon-min -10 --upstream-lon-max 5
  # the same through MLflow, then train from the store
  mlflow run . -e prepare -P data="era5/*.nc" -P output=prepared.zarr --env-manager local
  convlstm-train --data prepared.zarr --include-upstream
"""


@settings_command(PrepareSettings, EPILOG)
def prepare(settings: PrepareSettings) -> None:
    """Read raw data lazily and write the regions, at the model's time step, to a Zarr store."""
    from convlstm.tracking.prepare import prepare_tracked

    outcome = prepare_tracked(settings)
    store = outcome.store
    click.echo(f"Wrote {store.path} ({store.n_times} time steps, {store.size_bytes / 1e9:.2f} GB) in run "
               f"{outcome.run_id}; train on it with --data {store.path}")


def main() -> None:
    """``convlstm-prepare``: run the command; user errors end as one line and an exit status."""
    run_cli(prepare)

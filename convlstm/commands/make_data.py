"""Write the synthetic demo atmosphere to a netCDF file.

The ``convlstm-make-data`` command (MLflow runs it as ``python -m entrypoints.make_data``): a door into
``convlstm.data.demo.write_demo_dataset``; the flags come from ``convlstm.config.MakeDataSettings``. An existing file is kept unless
--overwrite is given.
"""

from __future__ import annotations

from pathlib import Path

import click

from convlstm.cli import configure_logging, run_cli, settings_command
from convlstm.config import MakeDataSettings
from convlstm.errors import ConfigError

EPILOG = """
\b
Examples:
  # two years of 12-hourly data on a 1-degree grid (the training demo's defaults)
  convlstm-make-data --output demo.nc --years 2 --resolution 1.0 --seed 0 --start 2000-01-01
  # a finer grid, another random atmosphere, replacing an existing file
  convlstm-make-data --output demo-fine.nc --resolution 0.25 --seed 7 --overwrite
"""


@settings_command(MakeDataSettings, EPILOG)
def make_data(settings: MakeDataSettings) -> None:
    """Generate the seeded synthetic atmosphere (DPT, GPH, TEM, U, V, precipitation) and write it."""
    from convlstm.data.demo import write_demo_dataset

    configure_logging(settings.log_level)
    output = Path(settings.output)
    if output.exists() and not settings.overwrite:
        raise ConfigError(f"{output} already exists. Pass --overwrite to replace it, or choose another --output.", "output")
    path = write_demo_dataset(output, settings.atmosphere, compress=settings.compress)
    click.echo(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB).")


def main() -> None:
    """``convlstm-make-data``: run the command; user errors end as one line and an exit status."""
    run_cli(make_data)

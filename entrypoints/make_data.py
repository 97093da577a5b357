"""Write the synthetic demo atmosphere to a netCDF file.

A thin door into ``convlstm.data.synthetic.write_demo_dataset``: parse flags, refuse to overwrite by
accident, and report argument problems against the flag that caused them.
"""

from __future__ import annotations

from pathlib import Path

import click

from convlstm.cli import configure_logging
from convlstm.data.synthetic import DemoParameterError, write_demo_dataset

EPILOG = """
\b
Examples:
  # two years of 12-hourly data on a 1-degree grid (the training demo's defaults)
  python -m entrypoints.make_data --output demo.nc --years 2 --resolution 1.0 --seed 0 --start 2000-01-01
  # a finer grid, another random atmosphere, replacing an existing file
  python -m entrypoints.make_data --output demo-fine.nc --resolution 0.25 --seed 7 --overwrite
"""

#: Library argument → the flag a user typed.
FLAGS = {"years": "--years", "resolution": "--resolution", "seed": "--seed", "start": "--start",
         "lat_range": "--lat-range", "lon_range": "--lon-range", "path": "--output"}


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="netCDF file to write (its folder is created if needed).")
@click.option("--years", type=float, default=2.0, show_default=True, help="Length of the record in years (12-hourly steps).")
@click.option("--resolution", type=float, default=1.0, show_default=True, help="Grid spacing in degrees (e.g. 1.0 or 0.25).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed: the same flags give the same file contents.")
@click.option("--start", default="2000-01-01", show_default=True, help="First time stamp (a date, or a date with 00 or 12 UTC).")
@click.option("--lat-range", type=(float, float), default=(25.0, 40.0), show_default=True, help="Southern and northern edge (°N).")
@click.option("--lon-range", type=(float, float), default=(70.0, 125.0), show_default=True, help="Western and eastern edge (°E).")
@click.option("--compress/--no-compress", default=True, show_default=True,
              help="zlib level 1: about a third smaller, a few seconds slower to write at 1°.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace --output if it already exists.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
def main(output: Path, years: float, resolution: float, seed: int, start: str,
         lat_range: tuple[float, float], lon_range: tuple[float, float], compress: bool, overwrite: bool, log_level: str) -> None:
    """Generate the seeded synthetic atmosphere (DPT, GPH, TEM, U, V, precipitation) and write it."""
    configure_logging(log_level)
    if output.exists() and not overwrite:
        raise click.UsageError(f"{output} already exists. Pass --overwrite to replace it, or choose another --output.")
    try:
        path = write_demo_dataset(output, start=start, years=years, resolution=resolution, seed=seed,
                                  lat_range=lat_range, lon_range=lon_range, compress=compress)
    except DemoParameterError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{FLAGS.get(exc.argument, exc.argument)}'") from exc
    except OSError as exc:
        raise click.ClickException(f"Cannot write {output}: {exc}") from exc
    click.echo(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB).")


if __name__ == "__main__":
    main()

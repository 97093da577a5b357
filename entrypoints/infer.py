"""Forecast with a trained model: predictions.nc (CF), metadata.json and, with --visualize, maps.

A thin door into the library: the flags come from ``convlstm.config.InferSettings``; the run is
``convlstm.tracking.reports.infer_tracked``, recorded as an MLflow inference run tagged with the
training run whose model it used.
"""

from __future__ import annotations

import click

from convlstm.cli import run_cli, settings_command
from convlstm.config import InferSettings

EPILOG = """
\b
Examples:
  python -m entrypoints.infer --checkpoint outputs/upstream-20261124-120000/best_model.pt --visualize
  python -m entrypoints.infer --model <training run id> --data era5_2021.nc --split all
  python -m entrypoints.infer --model models:/convlstm-precipitation/3 --split test
  mlflow run . -e infer --env-manager local -P model=<training run id> -P visualize=true
"""


@settings_command(InferSettings, EPILOG)
def infer(settings: InferSettings) -> None:
    """Forecast downstream precipitation (mm) with a trained model."""
    from convlstm.tracking.reports import infer_tracked

    outcome = infer_tracked(settings)
    click.echo(f"Wrote {outcome.scores['n_forecasts']} forecasts to {outcome.files[0]} "
               f"(RMSE {outcome.scores['rmse_mm']:.3f} mm against the observations in the file).")


if __name__ == "__main__":
    run_cli(infer)

"""Forecast with a trained model: predictions.nc (CF), metadata.json and, with --visualize, maps.

The ``convlstm-infer`` command (MLflow runs it as ``python -m entrypoints.infer``): the flags come from
``convlstm.config.InferSettings``; the run is ``convlstm.tracking.reports.infer_tracked``, recorded as an
MLflow inference run tagged with the training run whose model it used.
"""

from __future__ import annotations

import click

from convlstm.cli import run_cli, settings_command
from convlstm.config import InferSettings

EPILOG = """
\b
Examples:
  convlstm-infer --checkpoint outputs/upstream-20261124-120000/best_model.pt --visualize
  convlstm-infer --model <training run id> --data era5_2021.nc --split all
  convlstm-infer --model models:/convlstm-precipitation/3 --split test
  mlflow run . -e infer --env-manager local -P model=<training run id> -P visualize=true
"""


@settings_command(InferSettings, EPILOG)
def infer(settings: InferSettings) -> None:
    """Forecast downstream precipitation (mm) with a trained model."""
    from convlstm.tracking.reports import infer_tracked

    outcome = infer_tracked(settings)
    click.echo(f"Wrote {outcome.scores['n_forecasts']} forecasts to {outcome.files[0]} "
               f"(RMSE {outcome.scores['rmse_mm']:.3f} mm against the observations in the file).")


def main() -> None:
    """``convlstm-infer``: run the command; user errors end as one line and an exit status."""
    run_cli(infer)

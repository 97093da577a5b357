"""Forecast with a trained model: predictions.nc (CF), metadata.json and, with --visualize, maps.

A thin door into ``convlstm.inference.run_inference``, recorded as an MLflow inference run tagged with
the training run whose model it used.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from convlstm.cli import BOOL_FLAG, configure_logging, optional_existing_file, optional_text, run_cli
from convlstm.inference import SPLITS
from convlstm.training.device import DEVICE_CHOICES

EPILOG = """
\b
Examples:
  python -m entrypoints.infer --checkpoint outputs/upstream-20261124-120000/best_model.pt --visualize
  python -m entrypoints.infer --model <training run id> --data era5_2021.nc --split all
  python -m entrypoints.infer --model models:/convlstm-precipitation/3 --split test
  mlflow run . -e infer --env-manager local -P model=<training run id> -P visualize=true
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--checkpoint", default=None, callback=optional_text,
              help="A checkpoint file (best_model.pt) or a training output directory.")
@click.option("--model", "model_uri", default=None, callback=optional_text,
              help="Instead of --checkpoint: a training run id, runs:/<run id>, or models:/<name>/<version> or models:/<name>@<alias>.")
@click.option("--data", default=None, callback=optional_existing_file,
              help="netCDF file to forecast from (any naming open_dataset accepts). Default: the demo atmosphere.")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="Forecast every window of the file, or only one split of it, cut as in training.")
@click.option("--output-dir", default=None, callback=optional_text, help="Default: outputs/infer-<baseline|upstream>-<time>.")
@click.option("--visualize", **BOOL_FLAG, default=False, help="Write prediction_map_<time>.png (forecast beside the observation).")
@click.option("--max-maps", type=click.IntRange(min=1), default=12, show_default=True, help="At most this many maps, evenly spread in time.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Windows per forward pass.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option("--experiment-name", default=None, callback=optional_text, help="MLflow experiment (ignored under mlflow run).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), default="INFO", show_default=True)
def infer(checkpoint: str | None, model_uri: str | None, data: Path | None, split: str, output_dir: str | None,
          visualize: bool, max_maps: int, batch_size: int, device: str, experiment_name: str | None, log_level: str) -> None:
    """Forecast downstream precipitation (mm) with a trained model."""
    from convlstm.data.synthetic import demo_data_path
    from convlstm.inference import load_forecast_model, run_inference
    from convlstm.tracking import experiment_of_run, inference_run, log_inference, resolve_model

    if bool(checkpoint) == bool(model_uri):
        raise click.UsageError("Give exactly one of --checkpoint (a file or directory) and --model (a run id or models:/ URI).")
    reference = str(checkpoint or model_uri)
    checkpoint_path, normalizer_path = resolve_model(reference)
    forecast = load_forecast_model(checkpoint_path, device, normalizer_path)
    out = Path(output_dir or Path("outputs") / f"infer-{forecast.experiment_type}-{time.strftime('%Y%m%d-%H%M%S')}")
    log_file = out / "inference.log"
    configure_logging(log_level, log_file)
    data_path = data or demo_data_path()
    if experiment_name is None and forecast.run_id:
        experiment_name = experiment_of_run(forecast.run_id)  # beside the training run it used
    with inference_run(forecast, reference, experiment_name, log_file):
        outcome = run_inference(forecast, data_path, out, split, batch_size, visualize, max_maps,
                                extra_metadata={"model_uri": reference})
        log_inference(outcome, {"data": str(data_path), "split": split, "batch_size": batch_size, "model_uri": reference})
    click.echo(f"Wrote {outcome.scores['n_forecasts']} forecasts to {out / 'predictions.nc'} "
               f"(RMSE {outcome.scores['rmse_mm']:.3f} mm against the observations in the file).")


if __name__ == "__main__":
    run_cli(infer)

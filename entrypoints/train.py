"""Train a ConvLSTM U-Net: the baseline (downstream only) or the upstream experiment.

A thin door into the library: parse and check flags, build the configs, hand them to
``convlstm.training.experiment.run_training`` inside an MLflow run. Runs the same under
``mlflow run . -e train`` and as ``python -m entrypoints.train``.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
from click_option_group import optgroup

from convlstm.cli import (
    BOOL_FLAG,
    SpaceSeparatedCommand,
    configure_logging,
    optional_existing_file,
    optional_text,
    parse_int_list,
    run_cli,
)
from convlstm.config import ConvLSTMConfig
from convlstm.data.regions import RegionConfig
from convlstm.errors import DataError
from convlstm.pyfunc import DEFAULT_REGISTERED_NAME
from convlstm.training.device import DEVICE_CHOICES
from convlstm.training.experiment import TrainOptions

DEFAULTS = ConvLSTMConfig(num_epochs=12, hidden_channels=[16, 32, 64], early_stopping_patience=5, checkpoint_frequency=5)
REGION_DEFAULTS = RegionConfig()
POSITIVE_INT = click.IntRange(min=1)
POSITIVE_FLOAT = click.FloatRange(min=0.0, min_open=True)
RATIO = click.FloatRange(0.0, 1.0, min_open=True, max_open=True)

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
"""


def _region_option(name: str) -> click.Option:
    flag = "--" + name.replace("_", "-")
    region, coord, bound = name.split("_")
    return optgroup.option(flag, type=float, default=getattr(REGION_DEFAULTS, name), show_default=True,
                           help=f"{region.capitalize()} region {bound}imum {'latitude (°N)' if coord == 'lat' else 'longitude (°E)'}.")


def _with_region_options(func):  # type: ignore[no-untyped-def]
    for name in reversed(list(REGION_DEFAULTS.to_dict())):
        func = _region_option(name)(func)
    return func


@click.command(cls=SpaceSeparatedCommand, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@optgroup.group("Data")
@optgroup.option("--data", default=None, callback=optional_existing_file,
                 help="netCDF reanalysis file (standard, descriptive or ERA5 names). Default: the built-in demo atmosphere.")
@optgroup.option("--output-dir", default=None, callback=optional_text,
                 help="Where checkpoints, normalizer, log and figures go. Default: outputs/<baseline|upstream>-<time>.")
@optgroup.option("--nan-policy", type=click.Choice(["raise", "drop", "fill"]), default="raise", show_default=True,
                 help="Missing values: refuse them, drop those time steps, or interpolate them in time.")
@optgroup.option("--window-size", type=POSITIVE_INT, default=DEFAULTS.window_size, show_default=True,
                 help="Input time steps per window (6 = 3 days of 12-hourly data).")
@optgroup.option("--target-offset", type=POSITIVE_INT, default=DEFAULTS.target_offset, show_default=True,
                 help="Steps ahead of the last input to predict.")
@optgroup.option("--train-ratio", type=RATIO, default=DEFAULTS.train_ratio, show_default=True, help="Fraction of time steps for training.")
@optgroup.option("--val-ratio", type=RATIO, default=DEFAULTS.val_ratio, show_default=True,
                 help="Fraction for validation; the rest is the test split.")
@optgroup.group("Regions (degrees; upstream lies west of downstream, same latitudes)")
@optgroup.option("--include-upstream", **BOOL_FLAG, default=False,
                 help="Join the upstream region west of the downstream one (the upstream experiment).")
@_with_region_options
@optgroup.group("Model")
@optgroup.option("--hidden-channels", default=" ".join(map(str, DEFAULTS.hidden_channels)), show_default=True,
                 callback=parse_int_list, help="Hidden channels per U-Net level, e.g. 32 64.")
@optgroup.option("--kernel-size", type=POSITIVE_INT, default=DEFAULTS.kernel_size, show_default=True, help="Odd convolution kernel size.")
@optgroup.group("Training")
@optgroup.option("--learning-rate", type=POSITIVE_FLOAT, default=DEFAULTS.learning_rate, show_default=True, help="AdamW learning rate (cosine-annealed).")
@optgroup.option("--weight-decay", type=click.FloatRange(min=0.0), default=DEFAULTS.weight_decay, show_default=True, help="AdamW weight decay.")
@optgroup.option("--batch-size", type=POSITIVE_INT, default=DEFAULTS.batch_size, show_default=True, help="Windows per batch.")
@optgroup.option("--num-epochs", type=POSITIVE_INT, default=DEFAULTS.num_epochs, show_default=True, help="Maximum number of epochs.")
@optgroup.option("--high-precip-threshold", type=click.FloatRange(min=0.0), default=DEFAULTS.high_precip_threshold, show_default=True,
                 help="Rain (mm per step) from which errors weigh more in the loss.")
@optgroup.option("--high-precip-weight", type=POSITIVE_FLOAT, default=DEFAULTS.high_precip_weight, show_default=True,
                 help="Loss weight of cells at or above the threshold.")
@optgroup.option("--gradient-accumulation-steps", type=POSITIVE_INT, default=DEFAULTS.gradient_accumulation_steps, show_default=True,
                 help="Batches per optimizer step (effective batch = batch size × this).")
@optgroup.option("--gradient-clip-norm", type=POSITIVE_FLOAT, default=DEFAULTS.gradient_clip_norm, show_default=True, help="Max gradient norm.")
@optgroup.option("--early-stopping-patience", type=click.IntRange(min=0), default=DEFAULTS.early_stopping_patience, show_default=True,
                 help="Stop after this many epochs without a better validation loss (0: never).")
@optgroup.option("--use-amp", **BOOL_FLAG, default=DEFAULTS.use_amp, help="Mixed precision on CUDA (bf16, or fp16 with loss scaling).")
@optgroup.option("--seed", type=click.IntRange(min=0), default=DEFAULTS.seed, show_default=True, help="Random seed (CPU runs repeat exactly).")
@optgroup.group("System")
@optgroup.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True, help="auto picks cuda, then mps, then cpu.")
@optgroup.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True,
                 help="DataLoader worker processes (windows are in memory; 0 is fastest on CPU).")
@optgroup.option("--pin-memory", **BOOL_FLAG, default=True, help="Pinned host memory for faster GPU copies (CUDA only).")
@optgroup.group("Checkpoints and tracking")
@optgroup.option("--checkpoint-frequency", type=POSITIVE_INT, default=DEFAULTS.checkpoint_frequency, show_default=True,
                 help="Keep checkpoint_epoch_N.pt every N epochs (last.pt and best_model.pt are always written).")
@optgroup.option("--resume", default=None, callback=optional_text, help="Continue a run: its MLflow run id, output directory or a checkpoint file.")
@optgroup.option("--experiment-name", default=None, callback=optional_text, help="MLflow experiment (ignored under mlflow run, which sets it).")
@optgroup.option("--registered-model-name", default=DEFAULT_REGISTERED_NAME, show_default=True,
                 help="Register the best model under this name in the MLflow model registry ('' to skip).")
@optgroup.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), default="INFO", show_default=True)
def train(**flags: object) -> None:
    """Train the ConvLSTM U-Net and record everything in MLflow."""
    from convlstm.tracking import resolve_resume, training_run
    from convlstm.training.experiment import run_training

    options = resume_options(flags, resolve_resume) if flags["resume"] else build_options(flags)
    log_file = Path(options.output_dir) / "training.log"
    configure_logging(str(flags["log_level"]), log_file)
    with training_run(options, flags["experiment_name"], log_file,  # type: ignore[arg-type]
                      registered_model_name=str(flags["registered_model_name"] or "") or None) as tracker:
        outcome = run_training(options, callbacks=[tracker], on_data_ready=tracker.on_data_ready)
        tracker.log_outcome(outcome)
    click.echo(f"Finished {options.experiment_type} run {options.run_id}; outputs in {options.output_dir}")


def build_options(flags: dict[str, object]) -> TrainOptions:
    """Flags → configs, refusing impossible combinations before any work starts."""
    try:
        regions = RegionConfig(**{name: flags[name] for name in REGION_DEFAULTS.to_dict()})
        if flags["include_upstream"]:
            regions.check_upstream()
        if float(flags["train_ratio"]) + float(flags["val_ratio"]) >= 1.0:  # type: ignore[arg-type]
            raise DataError("--train-ratio plus --val-ratio must be below 1 so that a test split remains.")
        config = ConvLSTMConfig(**{name: flags[name] for name in ConvLSTMConfig().to_dict() if name in flags})
    except DataError as exc:
        raise click.UsageError(str(exc)) from exc
    kind = "upstream" if flags["include_upstream"] else "baseline"
    output_dir = flags["output_dir"] or Path("outputs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    if Path(output_dir).is_dir() and any(Path(output_dir).iterdir()):  # type: ignore[arg-type]
        raise click.UsageError(f"--output-dir {output_dir} already holds files; choose a new directory, or --resume that run.")
    return TrainOptions(  # absolute paths: a checkpoint must find them again from any directory
        output_dir=Path(output_dir).resolve(),  # type: ignore[arg-type]
        config=config, regions=regions, include_upstream=bool(flags["include_upstream"]),
        data=Path(flags["data"]).resolve() if flags["data"] else None,  # type: ignore[arg-type]
        device=str(flags["device"]), num_workers=int(flags["num_workers"]),  # type: ignore[arg-type]
        pin_memory=bool(flags["pin_memory"]), nan_policy=str(flags["nan_policy"]),
    )


def resume_options(flags: dict[str, object], resolve: object) -> TrainOptions:
    """Settings come from the checkpoint (the run continues as it was configured)."""
    checkpoint = resolve(str(flags["resume"]))  # type: ignore[operator]
    output_dir = Path(str(flags["output_dir"])) if flags["output_dir"] else None
    return TrainOptions.from_checkpoint(checkpoint, output_dir)


if __name__ == "__main__":
    run_cli(train)

"""Compare the baseline and the upstream experiment on the same held-out times.

A thin door into ``convlstm.evaluation.comparison``: either two trained models (run ids or model URIs; the test
split of ``--data`` is forecast here) or two ``predictions.nc`` files and a ground-truth file. The
result is an MLflow comparison run with one child run per forecast, figures and ``report.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from convlstm.cli import BOOL_FLAG, configure_logging, optional_existing_file, optional_text, parse_int_list, run_cli
from convlstm.pyfunc import DEFAULT_REGISTERED_NAME
from convlstm.training.device import DEVICE_CHOICES

EPILOG = """
\b
Examples:
  mlflow run . -e compare --env-manager local --experiment-name convlstm-demo   # newest runs of the experiment
  mlflow run . -e compare --env-manager local -P baseline=<run id> -P upstream=<run id>
  python -m entrypoints.compare --baseline <run id> --upstream <run id> --data era5.nc
  python -m entrypoints.compare --predictions-exp1 base/predictions.nc --predictions-exp2 up/predictions.nc \\
      --ground-truth era5.nc
"""


def parse_float_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(token) for token in value.replace(",", " ").split())
    except ValueError:
        numbers = ()
    if not numbers or min(numbers) < 0:
        raise click.BadParameter(f"expected non-negative numbers such as '0.1 1 5 10 20', got {value!r}.", ctx, param)
    return numbers


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--baseline", default=None, callback=optional_text,
              help="Baseline model: training run id, runs:/ or models:/ URI, or checkpoint. Default (with --upstream also "
                   "omitted and no files): the newest finished baseline and upstream runs of the experiment.")
@click.option("--upstream", default=None, callback=optional_text, help="Upstream model, likewise.")
@click.option("--data", default=None, callback=optional_existing_file, help="With models: the netCDF whose test split is scored (default: demo).")
@click.option("--predictions-exp1", default=None, callback=optional_existing_file, help="Instead of models: baseline predictions.nc.")
@click.option("--predictions-exp2", default=None, callback=optional_existing_file, help="Upstream predictions.nc.")
@click.option("--ground-truth", default=None, callback=optional_existing_file, help="netCDF with the observed precipitation.")
@click.option("--output-dir", default=None, callback=optional_text, help="Default: outputs/compare-<time>.")
@click.option("--thresholds", default="0.1 1 5 10 20", show_default=True, callback=parse_float_list,
              help="Rain thresholds (mm per step) for the categorical scores.")
@click.option("--fss-windows", default="1 3 5", show_default=True, callback=parse_int_list, help="FSS neighbourhood sizes (grid cells).")
@click.option("--n-boot", type=click.IntRange(min=100), default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--block-length", type=click.IntRange(min=1), default=None, help="Bootstrap block length in steps (default: n^(1/3)).")
@click.option("--set-aliases", **BOOL_FLAG, default=True, help="Give the better model's registered version the alias champion.")
@click.option("--registered-model-name", default=DEFAULT_REGISTERED_NAME, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option("--experiment-name", default=None, callback=optional_text, help="Default: the baseline run's experiment.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), default="INFO", show_default=True)
def compare(**flags: object) -> None:
    """Score baseline vs upstream against the truth, persistence and climatology, with uncertainty."""
    from convlstm.data.synthetic import demo_data_path
    from convlstm.evaluation.comparison import compare as run_comparison
    from convlstm.evaluation.comparison import inputs_from_files, inputs_from_models
    from convlstm.inference import load_forecast_model
    from convlstm.tracking import (
        comparison_run,
        experiment_of_run,
        latest_training_runs,
        log_comparison,
        resolve_model,
        set_champion,
    )

    files = flags["predictions_exp1"] or flags["predictions_exp2"] or flags["ground_truth"]
    if files and (flags["baseline"] or flags["upstream"]):
        raise click.UsageError("Give either --baseline and --upstream (models), or --predictions-exp1, --predictions-exp2 "
                               "and --ground-truth (files), not both.")
    if not files and not flags["baseline"] and not flags["upstream"]:
        flags.update(latest_training_runs(flags["experiment_name"]))  # type: ignore[arg-type]
    models = not files
    needed = ("baseline", "upstream") if models else ("predictions_exp1", "predictions_exp2", "ground_truth")
    missing = [f"--{name.replace('_', '-')}" for name in needed if not flags[name]]
    if missing:
        raise click.UsageError(f"Missing {', '.join(missing)}.")
    out = Path(str(flags["output_dir"] or Path("outputs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"))
    log_file = out / "compare.log"
    configure_logging(str(flags["log_level"]), log_file)

    run_ids: dict[str, str | None] = {"baseline": None, "upstream": None}
    if models:
        loaded = {}
        for name in ("baseline", "upstream"):
            checkpoint, normalizer = resolve_model(str(flags[name]))
            loaded[name] = load_forecast_model(checkpoint, str(flags["device"]), normalizer)
            run_ids[name] = loaded[name].run_id
        inputs = inputs_from_models(loaded["baseline"], loaded["upstream"], flags["data"] or demo_data_path(),
                                    int(flags["batch_size"]))  # type: ignore[arg-type]
    else:
        inputs = inputs_from_files(flags["predictions_exp1"], flags["predictions_exp2"], flags["ground_truth"])  # type: ignore[arg-type]
    experiment = flags["experiment_name"] or (experiment_of_run(run_ids["baseline"]) if run_ids["baseline"] else None)
    params = {key: str(flags[key]) for key in ("baseline", "upstream", "data", "predictions_exp1", "predictions_exp2",
                                                "ground_truth", "thresholds", "fss_windows", "n_boot", "block_length")}
    with comparison_run(run_ids, experiment, log_file):  # type: ignore[arg-type]
        result = run_comparison(inputs, out, tuple(flags["thresholds"]), tuple(flags["fss_windows"]),  # type: ignore[arg-type]
                                int(flags["n_boot"]), flags["block_length"])  # type: ignore[arg-type]
        log_comparison(result, params)
        if models and flags["set_aliases"] and all(run_ids.values()):
            set_champion(run_ids, {name: float(result.scores["rmse_mm"].sel(forecast=name)) for name in run_ids},  # type: ignore[arg-type]
                         str(flags["registered_model_name"]))
    click.echo(f"{result.verdict}\nReport: {out / 'report.md'}")


if __name__ == "__main__":
    run_cli(compare)

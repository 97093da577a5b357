"""The research answer: does the upstream experiment beat the baseline, by how much, where, and is
the gain larger than noise?

Both experiments, persistence and climatology are scored on the same held-out times and downstream
cells; the upstream − baseline difference gets a paired block-bootstrap confidence interval; figures
and ``report.md`` are written to the output directory. MLflow bookkeeping is in ``convlstm.tracking``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from convlstm.atomic import atomic_write_bytes
from convlstm.data.schema import PRECIPITATION, open_dataset
from convlstm.errors import DataError
from convlstm.inference import ForecastModel, observed_downstream, select_split
from convlstm.reference_forecasts import climatology_forecast, persistence_forecast
from convlstm.verification import (
    DEFAULT_FSS_WINDOWS,
    DEFAULT_THRESHOLDS_MM,
    all_scores,
    bootstrap_csi_difference,
    bootstrap_rmse_difference,
    errors_by_time,
    rmse_map,
    skill_score,
)

logger = logging.getLogger(__name__)

REPORT_NAME = "report.md"
SCORES_NAME = "scores.csv"
EXPERIMENTS = ("baseline", "upstream")
REFERENCES = ("persistence", "climatology")
#: Climatology from the ground-truth file needs at least this many earlier steps (a month of 12-hourly data).
_MIN_CLIMATOLOGY_STEPS = 60


@dataclass
class ComparisonInputs:
    """Aligned forecasts (mm on the downstream grid at the same times) and the truth to score them on."""

    truth: xr.DataArray
    forecasts: dict[str, xr.DataArray]
    source: str
    notes: list[str] = field(default_factory=list)


@dataclass
class ComparisonResult:
    """Scores per forecast, the bootstrap intervals of the upstream − baseline differences, and files."""

    scores: pd.DataFrame
    differences: dict[str, dict[str, float]]
    csi_intervals: dict[str, dict[str, tuple[float, float, float]]]
    verdict: str
    files: list[Path]


def _precip(da: xr.DataArray | xr.Dataset) -> xr.DataArray:
    return (da[PRECIPITATION] if isinstance(da, xr.Dataset) else da).transpose("time", "lat", "lon")


def check_same_grid(named: dict[str, xr.DataArray]) -> None:
    """Refuse forecasts that do not cover the same times and grid, saying what differs."""
    (first_name, first), *rest = named.items()
    for name, other in rest:
        for dim in ("time", "lat", "lon"):
            a, b = first[dim].values, other[dim].values
            same = a.shape == b.shape and (np.array_equal(a, b) if dim == "time" else np.allclose(a, b, atol=1e-4))
            if not same:
                only_a = np.setdiff1d(a, b)
                only_b = np.setdiff1d(b, a)
                raise DataError(
                    f"{first_name} and {name} forecasts differ in {dim}: {len(a)} vs {len(b)} values; "
                    f"{len(only_a)} only in {first_name} (e.g. {only_a[:3]}), {len(only_b)} only in {name} (e.g. {only_b[:3]}). "
                    "Forecast the same data, split and window size with both models."
                )


def inputs_from_models(baseline: ForecastModel, upstream: ForecastModel, data: str | os.PathLike[str],
                       batch_size: int = 8) -> ComparisonInputs:
    """Forecast the test split of ``data`` with both models, and build the reference forecasts."""
    opened = open_dataset(data)
    for name, model in zip(EXPERIMENTS, (baseline, upstream)):
        if model.experiment_type != name:
            logger.warning("The %s model was trained as %s; using it as %s anyway.", name, model.experiment_type, name)
    if (baseline.config.train_ratio, baseline.config.val_ratio) != (upstream.config.train_ratio, upstream.config.val_ratio):
        raise DataError("The two models were trained with different split ratios, so their test splits differ.")
    forecasts = {name: _precip(model.predict_dataset(select_split(opened, "test", model.config), batch_size))
                 for name, model in zip(EXPERIMENTS, (baseline, upstream))}
    check_same_grid(forecasts)
    times = forecasts["baseline"]["time"].values
    truth = observed_downstream(opened, baseline, times)
    downstream = observed_downstream(opened, baseline, opened["time"].values)
    lead = _lead(forecasts["baseline"], opened)
    train = observed_downstream(opened, baseline, select_split(opened, "train", baseline.config)["time"].values)
    forecasts["persistence"] = persistence_forecast(downstream, times, lead)
    forecasts["climatology"] = climatology_forecast(train, times)
    return ComparisonInputs(truth, forecasts, f"test split of {opened.attrs.get('convlstm_source', data)}",
                            ["Climatology: mean of the training split by calendar month and hour, per grid cell."])


def inputs_from_files(predictions_exp1: str | os.PathLike[str], predictions_exp2: str | os.PathLike[str],
                      ground_truth: str | os.PathLike[str]) -> ComparisonInputs:
    """Compare two ``predictions.nc`` files (baseline first, upstream second) against a ground-truth file."""
    forecasts = {}
    for name, path in zip(EXPERIMENTS, (predictions_exp1, predictions_exp2)):
        if not Path(path).is_file():
            raise DataError(f"Predictions file {path} does not exist; write it with the infer entry point.")
        with xr.open_dataset(path) as ds:
            if PRECIPITATION not in ds:
                raise DataError(f"{path} has no '{PRECIPITATION}' variable; is it a predictions.nc written by infer?")
            forecasts[name] = _precip(ds).load()
    check_same_grid(forecasts)
    truth_data = open_dataset(ground_truth)
    times = forecasts["baseline"]["time"].values
    observed = truth_data[PRECIPITATION].transpose("time", "lat", "lon")
    missing = np.setdiff1d(times, observed["time"].values)
    if len(missing):
        raise DataError(f"{ground_truth} lacks {len(missing)} forecast time(s), e.g. {missing[:3]}; give the file the forecasts were made from.")
    try:
        observed = observed.sel(lat=forecasts["baseline"]["lat"], lon=forecasts["baseline"]["lon"], method="nearest", tolerance=1e-3)
    except KeyError as exc:
        raise DataError(f"{ground_truth} does not contain the forecasts' downstream grid points.") from exc
    observed = observed.assign_coords(lat=forecasts["baseline"]["lat"], lon=forecasts["baseline"]["lon"])
    truth = observed.sel(time=times).load()
    lead = _lead(forecasts["baseline"], truth_data)
    earlier = observed.sel(time=observed["time"] < times[0])
    notes = []
    if earlier.sizes["time"] >= _MIN_CLIMATOLOGY_STEPS:
        climate_source = earlier
        notes.append("Climatology: mean of the ground-truth times before the first forecast, by month and hour.")
    else:
        climate_source = observed.sel(time=~observed["time"].isin(times))
        notes.append("Climatology: too few ground-truth times before the forecasts; it uses every non-forecast time of the file.")
    if climate_source.sizes["time"] == 0:
        raise DataError(f"{ground_truth} holds only the forecast times; climatology needs other times as well.")
    forecasts["persistence"] = persistence_forecast(observed, times, lead)
    forecasts["climatology"] = climatology_forecast(climate_source, times)
    return ComparisonInputs(truth, forecasts, f"{predictions_exp1} vs {predictions_exp2} on {ground_truth}", notes)


def _lead(forecast: xr.DataArray, data: xr.Dataset) -> np.timedelta64:
    """Forecast lead time: from ``forecast_reference_time`` when present, else one time step of the data."""
    if "forecast_reference_time" in forecast.coords:
        return (forecast["time"].values[0] - forecast["forecast_reference_time"].values[0]).astype("timedelta64[ns]")
    steps = np.diff(data["time"].values)
    values, counts = np.unique(steps, return_counts=True)
    return values[np.argmax(counts)].astype("timedelta64[ns]")


def compare(inputs: ComparisonInputs, output_dir: str | os.PathLike[str],
            thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS_MM, windows: tuple[int, ...] = DEFAULT_FSS_WINDOWS,
            n_boot: int = 1000, block_length: int | None = None, seed: int = 0) -> ComparisonResult:
    """Score every forecast, bootstrap the experiments' differences, write figures and report.md."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    truth, forecasts = inputs.truth, inputs.forecasts
    check_same_grid({"truth": truth, **forecasts})
    rows = {name: all_scores(forecast, truth, thresholds, windows) for name, forecast in forecasts.items()}
    for name in rows:
        for reference in REFERENCES:
            rows[name][f"rmse_skill_vs_{reference}"] = skill_score(rows[name]["rmse_mm"], rows[reference]["rmse_mm"])
    scores = pd.DataFrame(rows).T
    base, up = forecasts["baseline"], forecasts["upstream"]
    boot = {"n_boot": n_boot, "block_length": block_length, "seed": seed}
    results = {"rmse_mm": bootstrap_rmse_difference(base, up, truth, **boot)}
    for threshold in thresholds:
        results[f"csi_{threshold:g}mm"] = bootstrap_csi_difference(base, up, truth, threshold, **boot)
    differences = {key: {"estimate": r.estimate, "low": r.low, "high": r.high, "excludes_zero": float(r.excludes_zero)}
                   for key, r in results.items()}
    csi_intervals = _csi_intervals(forecasts, truth, thresholds, boot)
    verdict = _verdict(scores, differences)
    files = _figures(inputs, scores, csi_intervals, output_dir, thresholds)
    files.append(atomic_write_bytes(output_dir / SCORES_NAME, scores.to_csv(index_label="forecast").encode()))
    files.append(atomic_write_bytes(output_dir / REPORT_NAME, _report(inputs, scores, differences, verdict, results).encode()))
    logger.info("%s", verdict)
    return ComparisonResult(scores, differences, csi_intervals, verdict, files)


def _csi_intervals(forecasts: dict[str, xr.DataArray], truth: xr.DataArray, thresholds: tuple[float, ...],
                   boot: dict[str, object]) -> dict[str, dict[str, tuple[float, float, float]]]:
    """CSI of each forecast per threshold with a block-bootstrap interval (for the bar chart's error bars).

    The paired bootstrap of (forecast − a forecast that never rains) gives the interval of the forecast's
    own CSI: a forecast without events scores CSI 0 on every resample.
    """
    never = xr.zeros_like(truth) - 1.0
    return {
        name: {f"{t:g}mm": _triple(bootstrap_csi_difference(never, forecast, truth, t, **boot)) for t in thresholds}
        for name, forecast in forecasts.items()
    }


def _triple(result: object) -> tuple[float, float, float]:
    return (result.estimate, result.low, result.high)  # type: ignore[attr-defined]


def _verdict(scores: pd.DataFrame, differences: dict[str, dict[str, float]]) -> str:
    rmse = differences["rmse_mm"]
    base, up = scores.loc["baseline", "rmse_mm"], scores.loc["upstream", "rmse_mm"]
    change = 100.0 * (up - base) / base
    beats = [name for name in EXPERIMENTS if all(scores.loc[name, "rmse_mm"] < scores.loc[r, "rmse_mm"] for r in REFERENCES)]
    better = "lower" if rmse["estimate"] < 0 else "higher"
    significance = ("the 95 % interval excludes zero: the difference is larger than sampling noise" if rmse["excludes_zero"]
                    else "the 95 % interval includes zero: the difference is not distinguishable from sampling noise")
    return (f"The upstream model's RMSE is {up:.3f} mm vs {base:.3f} mm for the baseline ({change:+.1f} %, {better}); "
            f"difference {rmse['estimate']:+.3f} mm, 95 % CI [{rmse['low']:+.3f}, {rmse['high']:+.3f}] mm — {significance}. "
            f"Models beating both persistence and climatology on RMSE: {', '.join(beats) or 'none'}.")


def _report(inputs: ComparisonInputs, scores: pd.DataFrame, differences: dict[str, dict[str, float]], verdict: str,
            results: dict[str, object]) -> str:
    main = ["rmse_mm", "mae_mm", "bias_mm", "correlation", "rmse_latw_mm", "csi_1mm", "csi_5mm", "ets_5mm", "fss_5mm_w3",
            "rmse_skill_vs_persistence", "rmse_skill_vs_climatology"]
    columns = [c for c in main if c in scores.columns]
    table = _markdown_table(scores[columns])
    diff_rows = "\n".join(
        f"| {key} | {d['estimate']:+.4f} | [{d['low']:+.4f}, {d['high']:+.4f}] | {'yes' if d['excludes_zero'] else 'no'} |"
        for key, d in differences.items())
    first = next(iter(results.values()))
    n_times = inputs.truth.sizes["time"]
    return f"""# Upstream vs baseline: comparison report

Scored on {n_times} forecast times ({_fmt(inputs.truth['time'].values[0])} to {_fmt(inputs.truth['time'].values[-1])}),
{inputs.truth.sizes['lat']} × {inputs.truth.sizes['lon']} downstream grid cells; {inputs.source}.

**Verdict.** {verdict}

## Scores (mm per step; skill = 1 − RMSE / RMSE of the reference)

{table}

## Upstream − baseline, with a paired moving-block bootstrap 95 % interval

{getattr(first, 'n_boot', '')} resamples of forecast times in blocks of {getattr(first, 'block_length', '')} steps (to respect
autocorrelation). Negative RMSE and positive CSI differences favour the upstream model.

| score | difference | 95 % interval | excludes zero |
|---|---|---|---|
{diff_rows}

{chr(10).join('- ' + note for note in inputs.notes)}

Full table: `{SCORES_NAME}`. Figures: `rmse_difference_map.png`, `case_maps.png`, `csi_bars.png`,
`performance_diagram.png`, `error_by_time.png`.
"""


def _markdown_table(frame: pd.DataFrame) -> str:
    header = "| forecast | " + " | ".join(frame.columns) + " |"
    rule = "|---" * (len(frame.columns) + 1) + "|"
    rows = ["| " + name + " | " + " | ".join(f"{v + 0.0:.3f}" for v in row) + " |" for name, row in frame.iterrows()]
    return "\n".join([header, rule, *rows])


def _fmt(value: np.datetime64) -> str:
    return str(np.datetime_as_string(value, unit="m")).replace("T", " ")


def _figures(inputs: ComparisonInputs, scores: pd.DataFrame, csi: dict[str, dict[str, tuple[float, float, float]]],
             output_dir: Path, thresholds: tuple[float, ...]) -> list[Path]:
    from convlstm.plotting import (
        plot_case_maps,
        plot_csi_bars,
        plot_difference_map,
        plot_error_by_time,
        plot_performance_diagram,
        save_figure,
    )

    truth, forecasts = inputs.truth, inputs.forecasts
    diff = rmse_map(forecasts["upstream"], truth) - rmse_map(forecasts["baseline"], truth)
    coords = {"forecast": list(forecasts), "threshold": list(thresholds)}
    table = xr.DataArray([[csi[name][f"{t:g}mm"] for t in thresholds] for name in forecasts], coords=coords,
                         dims=("forecast", "threshold", "part"))  # part: value, low, high
    pod, far = (xr.DataArray(scores.loc[list(forecasts), [f"{score}_{t:g}mm" for t in thresholds]].to_numpy(float),
                             coords=coords, dims=("forecast", "threshold")) for score in ("pod", "far"))
    errors = xr.concat([errors_by_time(f, truth).reset_coords(drop=True) for f in forecasts.values()],
                       pd.Index(list(forecasts), name="forecast"))
    figures = {
        "rmse_difference_map.png": plot_difference_map(diff),
        "case_maps.png": plot_case_maps(truth, {name: forecasts[name] for name in EXPERIMENTS}),
        "csi_bars.png": plot_csi_bars(*(table.isel(part=i) for i in range(3)),
                                      title="CSI per threshold (95 % block-bootstrap intervals)"),
        "performance_diagram.png": plot_performance_diagram(pod, far),
        "error_by_time.png": plot_error_by_time(errors),
    }
    return [save_figure(fig, output_dir / name) for name, fig in figures.items()]

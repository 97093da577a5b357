"""The research answer: does the upstream experiment beat the baseline, by how much, and is the gain
larger than noise? Both experiments, persistence, climatology and (with the training data at hand) the
linear yardstick of each experiment are scored on the same held-out times and cells into one score table
(an ``xr.Dataset`` on ``forecast``, ``threshold``, ``window``); the upstream − baseline differences get a
paired block-bootstrap interval, and so does the network's gain from upstream minus the linear model's.
Files are written by :mod:`convlstm.evaluation.report`, MLflow bookkeeping by ``convlstm.tracking``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from convlstm.checks import require_finite
from convlstm.config import DEFAULT_FSS_WINDOWS, DEFAULT_THRESHOLDS_MM
from convlstm.data.regions import downstream_precipitation
from convlstm.data.schema import PRECIPITATION, NanPolicy, open_dataset
from convlstm.data.split import select_split
from convlstm.errors import DataError
from convlstm.evaluation.alignment import check_aligned, describe_coordinate
from convlstm.evaluation.bootstrap import BootstrapOptions, csi_difference, gain_difference, rmse_difference
from convlstm.evaluation.linear import ridge_forecast
from convlstm.evaluation.references import climatology_forecast, persistence_forecast
from convlstm.evaluation.report import (
    EXPERIMENTS,
    LINEAR,
    REFERENCES,
    linear_verdict,
    metric_key,
    verdict,
    write_outputs,
)
from convlstm.evaluation.scores import CategoricalScores, ContinuousScores, FractionsSkillScore, rmse_from_sums
from convlstm.evaluation.seeds import Member, SeedComparison, compare_seeds
from convlstm.forecast import ForecastModel

logger = logging.getLogger(__name__)

#: Climatology from the ground-truth file needs at least this many earlier steps (a month of 12-hourly data).
_MIN_CLIMATOLOGY_STEPS = 60


@dataclass
class ComparisonInputs:
    """What a comparison scores: forecasts in mm on the truth's times and downstream grid.

    Parameters
    ----------
    truth : xarray.DataArray
        Observed precipitation ``(time, lat, lon)``.
    forecasts : dict of str to xarray.DataArray
        ``baseline``, ``upstream``, ``persistence``, ``climatology``, and the linear yardstick
        ``ridge_baseline``, ``ridge_upstream`` when it could be fitted, aligned with the truth.
    source, notes : str, list of str
        Where the data come from, and remarks for the report.
    members : dict of str to list of Member
        When a side holds several trainings (seeds): ``{"baseline": [...], "upstream": [...]}``, and
        ``forecasts["baseline"]`` / ``["upstream"]`` are their ensemble means (:func:`ensemble_mean`); empty
        with one model a side.
    """

    truth: xr.DataArray
    forecasts: dict[str, xr.DataArray]
    source: str
    notes: list[str] = field(default_factory=list)
    members: dict[str, list[Member]] = field(default_factory=dict)


@dataclass
class ComparisonResult:
    """Everything a comparison found, for the report, MLflow and the registry aliases.

    Parameters
    ----------
    scores, csi_interval : xarray.Dataset
        The score table on ``forecast``, ``threshold``, ``window`` (flat keys: ``report.flat_metrics``);
        ``low``, ``high`` of each forecast's CSI on ``(forecast, threshold)``, for error bars.
    differences : dict of str to dict
        Upstream − baseline per score (``rmse_mm``, ``csi_1mm`` ...): ``estimate, low, high, excludes_zero``.
    rmse_by_time : xarray.DataArray
        RMSE over the grid of each forecast at each time, ``(forecast, time)``, mm.
    verdict, n_boot, block_length, files : str, int, int, list of pathlib.Path
        The answer in two sentences, how the bootstrap resampled, and the files written.
    linear : dict of str to float, optional
        The network's RMSE gain from upstream minus the ridge regressions' (mm, positive: the network gains
        more): ``estimate, low, high, excludes_zero``; None without the ridge forecasts.
    linear_verdict : str
        Whether the network uses the upstream information at least as well as a linear model, in one
        sentence (or that this was not computed).
    seeds : SeedComparison, optional
        With several trainings a side: the difference per pairing of seeds, its mean, range and interval over
        seeds and times, and whether the gain holds for every seed.
    """

    scores: xr.Dataset
    differences: dict[str, dict[str, float]]
    csi_interval: xr.Dataset
    rmse_by_time: xr.DataArray
    verdict: str
    n_boot: int
    block_length: int
    linear: dict[str, float] | None = None
    linear_verdict: str = ""
    seeds: SeedComparison | None = None
    files: list[Path] = field(default_factory=list)


def _precip(da: xr.DataArray | xr.Dataset) -> xr.DataArray:
    return (da[PRECIPITATION] if isinstance(da, xr.Dataset) else da).transpose("time", "lat", "lon")


def ensemble_mean(members: Sequence[Member]) -> xr.DataArray:
    """The mean of the members' forecasts: the ensemble's own forecast, scored like any model.

    Parameters
    ----------
    members : sequence of Member
        Forecasts on the same times and grid.

    Returns
    -------
    xarray.DataArray
        Their mean, on the first member's coordinates.
    """
    check_aligned({f"{m.name} (seed {m.seed})": m.forecast for m in members})
    first = members[0].forecast
    values = np.mean([m.forecast.values for m in members], axis=0, dtype=np.float64).astype(first.dtype)
    return first.copy(data=values)


def _members(models: Sequence[ForecastModel], forecasts: Sequence[xr.DataArray]) -> list[Member]:
    return [Member(model.run_id or f"member {i + 1}", model.config.seed, forecast)
            for i, (model, forecast) in enumerate(zip(models, forecasts))]


def _on_shared_times(predicted: dict[str, list[xr.DataArray]], sides: dict[str, list[ForecastModel]]
                     ) -> tuple[dict[str, list[xr.DataArray]], list[str]]:
    """Every forecast cut to the times all of them forecast, and a note when that left some out.

    Models with longer windows (tuned models differ) start forecasting later into the test split, and with
    ``nan_policy="drop"`` the upstream model, reading more cells, may leave out more windows: scoring each
    model on the same times is what makes the comparison fair.
    """
    times = [f["time"].values for side in predicted.values() for f in side]
    common = functools.reduce(np.intersect1d, times)
    windows = ", ".join(f"{name} {models[0].config.window_size}" for name, models in sides.items())
    if common.size == 0:
        raise DataError("The models share no forecast time in the test split: it is too short for their windows "
                        f"({windows} steps).")
    if all(t.size == common.size for t in times):
        return predicted, []
    note = (f"Scored on the {common.size} forecast times every model forecasts ({describe_coordinate(common)}); "
            f"{max(t.size for t in times) - common.size} more were forecast by some only (windows: {windows} steps).")
    logger.info(note)
    return {name: [f.sel(time=common) for f in side] for name, side in predicted.items()}, [note]


def inputs_from_models(baseline: ForecastModel | Sequence[ForecastModel], upstream: ForecastModel | Sequence[ForecastModel],
                       data: str | os.PathLike[str], batch_size: int = 8, nan_policy: NanPolicy = "raise",
                       member: int | None = None) -> ComparisonInputs:
    """Forecast the test split of ``data`` with both models and build the references, all on the same times.

    The references are persistence, climatology and, for each model, the ridge regression on its inputs
    (:func:`~convlstm.evaluation.linear.ridge_forecast`: its regions, window, target offset and split).

    Parameters
    ----------
    baseline, upstream : ForecastModel or sequence of ForecastModel
        The two experiments, trained with the same split ratios. A side with several models (trainings of one
        configuration with different seeds) is forecast by each, and its forecast is their ensemble mean;
        the members are kept for :func:`~convlstm.evaluation.seeds.compare_seeds`. One model a side is the
        plain comparison.
    data : str or path
        The data whose test split is forecast (as cut in training): raw input, brought to the models' time
        step, or a prepared store.
    batch_size : int
        Windows per forward pass.
    nan_policy : {"raise", "drop", "fill"}
        Missing values in the models' regions: refuse them, score only the times both models could
        forecast, or interpolate them in time.

    Returns
    -------
    ComparisonInputs
        The six forecasts and the observed downstream precipitation.
    """
    sides = {name: list(models) if isinstance(models, Sequence) else [models]
             for name, models in zip(EXPERIMENTS, (baseline, upstream))}
    baseline, upstream = sides["baseline"][0], sides["upstream"][0]  # the first member stands for its side's config
    for name, models in sides.items():
        for model in models:
            if model.experiment_type != name:
                logger.warning("The %s model was trained as %s; using it as %s anyway.", name, model.experiment_type, name)
    if (baseline.config.train_ratio, baseline.config.val_ratio) != (upstream.config.train_ratio, upstream.config.val_ratio):
        raise DataError("The two models were trained with different split ratios, so their test splits differ.")
    if baseline.config.time_step != upstream.config.time_step:
        raise DataError(f"The two models forecast different time steps ({baseline.config.time_step} h and "
                        f"{upstream.config.time_step} h), so their forecasts cannot be scored side by side.")
    opened = open_dataset(data, nan_policy=nan_policy, member=member, time_step=baseline.config.time_step)
    predicted = {name: [_precip(model.predict_dataset(select_split(opened, "test", model.config), batch_size, nan_policy))
                        for model in models] for name, models in sides.items()}
    predicted, shared_note = _on_shared_times(predicted, sides)
    several = any(len(models) > 1 for models in sides.values())
    members = {name: _members(sides[name], predicted[name]) for name in EXPERIMENTS} if several else {}
    forecasts = {name: ensemble_mean(members[name]) if several else predicted[name][0] for name in EXPERIMENTS}
    check_aligned(forecasts)
    times = forecasts["baseline"]["time"].values
    downstream = downstream_precipitation(opened, baseline.regions, opened["time"].values)  # read once
    train = downstream.sel(time=select_split(opened, "train", baseline.config)["time"].values)
    if nan_policy == "drop":
        train = train.isel(time=np.flatnonzero(np.isfinite(train.values).all(axis=(1, 2))))
    forecasts["persistence"] = persistence_forecast(downstream, times, _lead(forecasts["baseline"], opened))
    forecasts["climatology"] = climatology_forecast(train, times)
    notes = ["Climatology: mean of the training split by calendar month and hour, per grid cell.", *shared_note]
    for name, side in members.items():
        notes.append(f"{name}: the ensemble mean of {len(side)} trainings (seeds {', '.join(str(m.seed) for m in side)}; "
                     f"runs {', '.join(m.name for m in side)}).")
    for name, model in zip(LINEAR, (baseline, upstream)):
        fit = ridge_forecast(opened, model.regions, model.include_upstream, model.config, times)
        forecasts[name] = fit.forecast
        notes.append(fit.describe(name))
    truth = downstream.sel(time=times)
    return ComparisonInputs(truth, forecasts, f"test split of {opened.attrs.get('convlstm_source', data)}", notes, members)


def inputs_from_files(baseline_predictions: str | os.PathLike[str], upstream_predictions: str | os.PathLike[str],
                      ground_truth: str | os.PathLike[str]) -> ComparisonInputs:
    """Set two ``predictions.nc`` files from ``infer`` against a ground-truth file, with the references.

    Parameters
    ----------
    baseline_predictions, upstream_predictions : path
        Baseline and upstream predictions, on the same times and grid.
    ground_truth : path
        netCDF with the observed precipitation at those times (and earlier ones, for the references).

    Returns
    -------
    ComparisonInputs
        The four forecasts and the truth at the forecast times. The linear yardstick is not among them: its
        ridge regressions are fitted on the training split, which the files do not carry (the report says so).
    """
    forecasts = {}
    for name, path in zip(EXPERIMENTS, (baseline_predictions, upstream_predictions)):
        if not Path(path).is_file():
            raise DataError(f"Predictions file {path} does not exist; write it with the infer entry point.")
        with xr.open_dataset(path) as ds:
            if PRECIPITATION not in ds:
                raise DataError(f"{path} has no '{PRECIPITATION}' variable; is it a predictions.nc written by infer?")
            forecasts[name] = _precip(ds).load()
    check_aligned(forecasts)
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
    return ComparisonInputs(truth, forecasts, f"{baseline_predictions} vs {upstream_predictions} on {ground_truth}", notes)


def _lead(forecast: xr.DataArray, data: xr.Dataset) -> np.timedelta64:
    """Forecast lead time: from ``forecast_reference_time`` when present, else one time step of the data."""
    if "forecast_reference_time" in forecast.coords:
        return (forecast["time"].values[0] - forecast["forecast_reference_time"].values[0]).astype("timedelta64[ns]")
    steps = np.diff(data["time"].values)
    values, counts = np.unique(steps, return_counts=True)
    return values[np.argmax(counts)].astype("timedelta64[ns]")


def compare(inputs: ComparisonInputs, output_dir: str | os.PathLike[str],
            thresholds: Iterable[float] = DEFAULT_THRESHOLDS_MM, windows: Iterable[int] = DEFAULT_FSS_WINDOWS,
            n_boot: int = 1000, block_length: int | None = None, seed: int = 0) -> ComparisonResult:
    """Score every forecast against the truth, bootstrap the experiments' differences, write figures and report.

    Parameters
    ----------
    inputs : ComparisonInputs
        Baseline, upstream, persistence and climatology (and the ridge regressions of
        :data:`~convlstm.evaluation.report.LINEAR`, when given) on the truth's times and grid.
    output_dir : path
        Where figures, ``scores.csv`` and ``report.md`` go (created).
    thresholds, windows : iterable
        Rain thresholds (mm) and FSS window sizes (grid cells).
    n_boot, block_length, seed : int
        Bootstrap settings (see :class:`~convlstm.evaluation.bootstrap.BootstrapOptions`).

    Returns
    -------
    ComparisonResult
        Scores, differences, verdict and the files written.
    """
    options = BootstrapOptions(n_boot, block_length, seed=seed)
    thresholds, windows = tuple(thresholds), tuple(windows)
    truth, forecasts = inputs.truth, inputs.forecasts
    check_aligned({"truth": truth, **forecasts})
    for name, values in {"truth": truth, **forecasts}.items():
        require_finite(values.values, f"The {name} field")
    continuous, categorical, rows = {}, {}, []
    for name, forecast in forecasts.items():
        continuous[name] = ContinuousScores(truth["lat"], per_time=True).accumulate(forecast, truth)
        categorical[name] = CategoricalScores(thresholds, per_time=True).accumulate(forecast, truth)
        fss = FractionsSkillScore(thresholds, windows).accumulate(forecast, truth)
        rows.append(xr.Dataset(continuous[name].compute()).merge(categorical[name].compute()).merge(fss.compute()))
    scores = xr.concat(rows, dim=pd.Index(list(forecasts), name="forecast"))
    for reference in REFERENCES:  # (model − reference) / (perfect − reference), perfect RMSE = 0
        ref = scores["rmse_mm"].sel(forecast=reference, drop=True)
        scores[f"rmse_skill_vs_{reference}"] = ((scores["rmse_mm"] - ref) / (0.0 - ref)).where(ref != 0)

    base, up = EXPERIMENTS
    results = {"rmse_mm": rmse_difference(continuous[base], continuous[up], options)}
    for threshold, diff in csi_difference(categorical[base], categorical[up], options).items():
        results[metric_key("csi", threshold)] = diff
    differences = {key: {"estimate": r.estimate, "low": r.low, "high": r.high, "excludes_zero": float(r.excludes_zero)}
                   for key, r in results.items()}
    # Each forecast's own CSI interval (error bars): its paired difference against a forecast that never rains.
    never = CategoricalScores(thresholds, per_time=True).accumulate(np.full(truth.shape, -1.0), truth)
    intervals = [list(csi_difference(never, categorical[name], options).values()) for name in forecasts]
    csi_bounds = xr.Dataset({bound: (("forecast", "threshold"), [[getattr(r, bound) for r in row] for row in intervals])
                             for bound in ("low", "high")}, coords={"forecast": list(forecasts), "threshold": scores["threshold"].values})
    rmse_by_time = xr.DataArray([rmse_from_sums(continuous[name].per_time()) for name in forecasts], dims=("forecast", "time"),
                                coords={"forecast": list(forecasts), "time": truth["time"].values}, name="rmse_mm")
    linear = None
    if all(name in forecasts for name in LINEAR):  # the network's gain from upstream minus the ridge regressions'
        gap = gain_difference(*(continuous[name] for name in (*EXPERIMENTS, *LINEAR)), options)
        linear = {"estimate": gap.estimate, "low": gap.low, "high": gap.high, "excludes_zero": float(gap.excludes_zero)}
    seeds = compare_seeds(truth, inputs.members, options) if inputs.members else None
    result = ComparisonResult(scores, differences, csi_bounds, rmse_by_time, verdict(scores, differences), options.n_boot,
                              results["rmse_mm"].block_length, linear, linear_verdict(scores, linear), seeds)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    result.files = write_outputs(inputs, result, output_dir)
    logger.info("%s", result.verdict)
    logger.log(logging.INFO if linear else logging.WARNING, "%s", result.linear_verdict)
    if seeds is not None:
        logger.info("%s", seeds.verdict)
    return result

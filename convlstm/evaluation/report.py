"""What a comparison leaves behind: the flat score keys (``scores.csv``, the MLflow tables), the few
headline numbers MLflow logs as metrics, the verdicts, ``report.md`` and the five figures.

The score table is one ``xr.Dataset`` (dims ``forecast``, ``threshold``, ``window``); the flat keys
users see (``rmse_mm``, ``csi_1mm``, ``pod_0.1mm``, ``fss_5mm_w3``, ``rmse_skill_vs_persistence``) come
from :func:`metric_key` only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from convlstm.atomic import atomic_write_bytes
from convlstm.evaluation.scores import ContinuousScores, rmse_from_sums

if TYPE_CHECKING:
    from convlstm.evaluation.comparison import ComparisonInputs, ComparisonResult

REPORT_NAME = "report.md"
SCORES_NAME = "scores.csv"
#: With several trainings a side: upstream − baseline for each pairing of seeds.
SEEDS_NAME = "seeds.csv"
FIGURES = ("rmse_difference_map.png", "case_maps.png", "csi_bars.png", "performance_diagram.png", "error_by_time.png")
EXPERIMENTS = ("baseline", "upstream")
REFERENCES = ("persistence", "climatology")
#: The linear yardstick: ridge regressions on the baseline's and on the upstream model's inputs
#: (:mod:`convlstm.evaluation.linear`), in the order of :data:`EXPERIMENTS`.
LINEAR = ("ridge_baseline", "ridge_upstream")
LINEAR_QUESTION = "Does the network use the upstream information at least as well as a linear model?"
#: What the report and the log say when the ridge regressions were not fitted (predictions files only).
LINEAR_MISSING = (f"{LINEAR_QUESTION} Not computed: the ridge regressions are fitted on the training split, which "
                  "predictions files do not carry; compare the models (--baseline, --upstream, --data) to get it.")
#: The scores of every forecast that MLflow gets as metrics (with the upstream − baseline RMSE difference);
#: a few, so that a comparison beside the training runs does not crowd their charts. All are in the tables.
HEADLINE_SCORES = ("rmse_mm", "mae_mm")
_REPORT_COLUMNS = ("rmse_mm", "mae_mm", "bias_mm", "correlation", "rmse_latw_mm", "csi_1mm", "csi_5mm", "ets_5mm",
                   "fss_5mm_w3", "rmse_skill_vs_persistence", "rmse_skill_vs_climatology")


def metric_key(score: str, threshold: float | None = None, window: int | None = None) -> str:
    """The flat name of one score, e.g. ``csi_1mm`` or ``fss_0.1mm_w3``, as logged to MLflow.

    Parameters
    ----------
    score, threshold, window : str, float, int
        Variable in the score table; threshold (mm, written with ``:g``) and FSS window, when it has them.

    Returns
    -------
    str
        The key.
    """
    return score + ("" if threshold is None else f"_{threshold:g}mm") + ("" if window is None else f"_w{window}")


def flat_metrics(scores: xr.Dataset, forecast: str) -> dict[str, float]:
    """One forecast's scores under the flat keys that MLflow runs and ``scores.csv`` have always used.

    Parameters
    ----------
    scores : xarray.Dataset
        The comparison's score table.
    forecast : str
        ``baseline``, ``upstream``, ``persistence`` or ``climatology``.

    Returns
    -------
    dict of str to float
        Every score of that forecast, NaN where undefined.
    """
    return {metric_key(name, **labels): value for name, labels, value in _cells(scores.sel(forecast=forecast))}


def _cells(scores: xr.Dataset) -> Iterator[tuple[str, dict[str, float | int], float]]:
    """Every value of the score table: its score name, its labels (threshold, window) and the value."""
    for name, da in scores.data_vars.items():
        for index in np.ndindex(da.shape):
            labels = {str(dim): da[dim].values.tolist()[i] for dim, i in zip(da.dims, index)}
            yield str(name), labels, float(da.values[index])


def score_rows(scores: xr.Dataset) -> pd.DataFrame:
    """The whole score table, one row per forecast and score: what MLflow keeps as a table artifact.

    Parameters
    ----------
    scores : xarray.Dataset
        The comparison's score table.

    Returns
    -------
    pandas.DataFrame
        Columns ``forecast``, ``metric`` (the flat key), ``score``, ``threshold_mm``, ``window``, ``value``
        (NaN where undefined; no threshold or window where the score has none).
    """
    rows = []
    for name, labels, value in _cells(scores):  # every score is per forecast
        forecast = labels.pop("forecast")
        rows.append({"forecast": forecast, "metric": metric_key(name, **labels), "score": name,
                     "threshold_mm": labels.get("threshold"), "window": labels.get("window"), "value": value})
    return pd.DataFrame(rows)


def difference_rows(differences: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Upstream − baseline per score with its bootstrap interval, one row per score (a table artifact).

    Parameters
    ----------
    differences : dict
        ``ComparisonResult.differences``: ``estimate``, ``low``, ``high``, ``excludes_zero`` per score.

    Returns
    -------
    pandas.DataFrame
        Columns ``metric``, ``difference``, ``ci_low``, ``ci_high``, ``excludes_zero``.
    """
    return pd.DataFrame([{"metric": key, "difference": d["estimate"], "ci_low": d["low"], "ci_high": d["high"],
                          "excludes_zero": bool(d["excludes_zero"])} for key, d in differences.items()])


def headline_metrics(result: ComparisonResult) -> dict[str, float]:
    """The numbers that answer the question at a glance: RMSE and MAE of every forecast
    (``baseline_rmse_mm``, ``persistence_mae_mm``, ...) and the upstream − baseline RMSE difference with
    its 95 % interval (``delta_rmse_mm``, ``delta_rmse_mm_ci_low``, ``delta_rmse_mm_ci_high``).

    Parameters
    ----------
    result : ComparisonResult
        What the comparison found.

    Returns
    -------
    dict of str to float
        About ten values; NaN where undefined. The network's gain from upstream in % of the baseline's RMSE
        (``gain_rmse_pct``), and with the linear yardstick the ridge regressions' (``ridge_gain_rmse_pct``) and
        the network's gain minus the ridge's in mm (``gain_minus_ridge_gain_rmse_mm``, positive: the network
        gains more). With several trainings a side (then ``baseline`` and ``upstream`` are ensemble means) also
        the RMSE difference over seeds: its mean, range and interval, and whether every seed gains
        (:meth:`~convlstm.evaluation.seeds.SeedComparison.metrics`).
    """
    out = {f"{forecast}_{score}": float(result.scores[score].sel(forecast=forecast))
           for forecast in map(str, result.scores["forecast"].values) for score in HEADLINE_SCORES}
    diff = result.differences["rmse_mm"]
    out.update({"delta_rmse_mm": diff["estimate"], "delta_rmse_mm_ci_low": diff["low"],
                "delta_rmse_mm_ci_high": diff["high"], "gain_rmse_pct": rmse_gain(result.scores, *EXPERIMENTS)[1]})
    if result.linear is not None:
        out.update({"ridge_gain_rmse_pct": rmse_gain(result.scores, *LINEAR)[1],
                    "gain_minus_ridge_gain_rmse_mm": result.linear["estimate"]})
    if result.seeds is not None:
        out.update(result.seeds.metrics())
    return out


def _score_table(scores: xr.Dataset) -> pd.DataFrame:
    """One row of flat metrics per forecast: the layout of ``scores.csv``."""
    names = [str(name) for name in scores["forecast"].values]
    return pd.DataFrame.from_dict({name: flat_metrics(scores, name) for name in names}, orient="index").rename_axis("forecast")


def verdict(scores: xr.Dataset, differences: dict[str, dict[str, float]]) -> str:
    """The answer in two sentences: the RMSE change with its interval, and which models beat both references.

    Parameters
    ----------
    scores : xarray.Dataset
        The comparison's score table.
    differences : dict
        Upstream − baseline per score: ``estimate``, ``low``, ``high``, ``excludes_zero``.

    Returns
    -------
    str
        The verdict.
    """
    rmse = {str(name): float(value) for name, value in zip(scores["forecast"].values, scores["rmse_mm"].values)}
    diff, base, up = differences["rmse_mm"], rmse["baseline"], rmse["upstream"]
    beats = [name for name in EXPERIMENTS if all(rmse[name] < rmse[ref] for ref in REFERENCES)]
    significance = ("the 95 % interval excludes zero: the difference is larger than sampling noise" if diff["excludes_zero"]
                    else "the 95 % interval includes zero: the difference is not distinguishable from sampling noise")
    return (f"The upstream model's RMSE is {up:.3f} mm vs {base:.3f} mm for the baseline "
            f"({100.0 * (up - base) / base:+.1f} %, {'lower' if diff['estimate'] < 0 else 'higher'}); "
            f"difference {diff['estimate']:+.3f} mm, 95 % CI [{diff['low']:+.3f}, {diff['high']:+.3f}] mm — {significance}. "
            f"Models beating both persistence and climatology on RMSE: {', '.join(beats) or 'none'}.")


def rmse_gain(scores: xr.Dataset, baseline: str, upstream: str) -> tuple[float, float]:
    """What the upstream data take off a forecast's RMSE: baseline − upstream, in mm and in % of the baseline's.

    Parameters
    ----------
    scores : xarray.Dataset
        The comparison's score table.
    baseline, upstream : str
        The two forecasts, e.g. ``baseline`` and ``upstream`` or the ridge regressions of :data:`LINEAR`.

    Returns
    -------
    tuple of float
        The gain in mm and in % (positive: the upstream data help; NaN % for a zero baseline RMSE).
    """
    base, up = (float(scores["rmse_mm"].sel(forecast=name)) for name in (baseline, upstream))
    return base - up, 100.0 * (base - up) / base if base else math.nan


def linear_verdict(scores: xr.Dataset, linear: dict[str, float] | None) -> str:
    """The answer to :data:`LINEAR_QUESTION` in one sentence: both gains, and whether the network's is at least the ridge's.

    Parameters
    ----------
    scores : xarray.Dataset
        The comparison's score table.
    linear : dict, optional
        The network's gain minus the ridge regressions' (RMSE, mm): ``estimate``, ``low``, ``high``,
        ``excludes_zero``; None when the ridge regressions were not fitted.

    Returns
    -------
    str
        The verdict, or :data:`LINEAR_MISSING`.
    """
    if linear is None:
        return LINEAR_MISSING
    (net, net_pct), (lin, lin_pct) = rmse_gain(scores, *EXPERIMENTS), rmse_gain(scores, *LINEAR)
    rmse = {name: float(scores["rmse_mm"].sel(forecast=name)) for name in (*EXPERIMENTS, *LINEAR)}
    answer = ("Yes: the network's gain from upstream is at least the linear model's" if net >= lin else
              "No: the network's gain from upstream is smaller than the linear model's, so it leaves upstream information "
              "unused that a linear model exploits")
    noise = "excludes zero" if linear["excludes_zero"] else "includes zero: the gap is not distinguishable from sampling noise"
    return (f"{LINEAR_QUESTION} {answer}. RMSE gain from upstream: network {net:+.3f} mm ({net_pct:+.1f} %: "
            f"{rmse['baseline']:.3f} → {rmse['upstream']:.3f} mm), ridge regression {lin:+.3f} mm ({lin_pct:+.1f} %: "
            f"{rmse['ridge_baseline']:.3f} → {rmse['ridge_upstream']:.3f} mm); network − ridge gain "
            f"{linear['estimate']:+.3f} mm, 95 % CI [{linear['low']:+.3f}, {linear['high']:+.3f}] mm, which {noise}.")


def _seeds_section(result: ComparisonResult) -> str:
    """The report's section on the spread between trainings: the per-pairing table, then the verdict."""
    seeds = result.seeds
    if seeds is None:
        return ""
    how = ("each baseline training is paired with the upstream training of the same seed" if seeds.pairing == "by seed" else
           "every baseline member is paired with every upstream member (the two sides do not hold the same seeds)")
    table = seeds.table.drop(columns=["baseline_run", "upstream_run"]).set_index(["baseline_seed", "upstream_seed"]) + 0.0
    return f"""## Upstream − baseline over seeds

`baseline` and `upstream` above are the ensemble means of each side's trainings. Here each training is scored on
its own: pairing {seeds.pairing} ({how}). The interval resamples forecast times in blocks of {seeds.block_length}
steps and, at the same time, the trainings (the seed pairs, or each side's members), {seeds.n_boot} times, so it
holds both the sampling of times and the spread between seeds.

{table.to_markdown(floatfmt="+.4f")}

**{seeds.verdict}**

"""


def _linear_section(result: ComparisonResult) -> str:
    """The report's answer to :data:`LINEAR_QUESTION`: both gains side by side, then the verdict."""
    if result.linear is None:
        return result.linear_verdict
    rows = {}
    for label, (base, up) in (("network", EXPERIMENTS), ("ridge regression", LINEAR)):
        gain, pct = rmse_gain(result.scores, base, up)
        rows[label] = {"baseline RMSE (mm)": float(result.scores["rmse_mm"].sel(forecast=base)),
                       "upstream RMSE (mm)": float(result.scores["rmse_mm"].sel(forecast=up)),
                       "gain (mm)": gain, "gain (%)": pct}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("forecasts") + 0.0
    return f"""Gain = baseline RMSE − upstream RMSE (positive: the upstream region helps). The ridge regressions read
the inputs each network sees (see the notes below); their forecasts are also in the score table above.

{table.to_markdown(floatfmt=".3f")}

**{result.linear_verdict}**"""


def write_outputs(inputs: ComparisonInputs, result: ComparisonResult, output_dir: str | os.PathLike[str]) -> list[Path]:
    """Write what a reader of the comparison needs: the figures, ``scores.csv`` and ``report.md``.

    Parameters
    ----------
    inputs, result : ComparisonInputs, ComparisonResult
        What was compared (fields, times, grid, source, notes) and what the comparison found.
    output_dir : path
        Existing directory.

    Returns
    -------
    list of pathlib.Path
        The figures (:data:`FIGURES`), then ``scores.csv``, ``seeds.csv`` (several trainings a side) and ``report.md``.
    """
    output_dir, table, truth = Path(output_dir), _score_table(result.scores), inputs.truth
    main = table[[c for c in _REPORT_COLUMNS if c in table.columns]] + 0.0  # + 0.0: no "-0.000"
    diffs = pd.DataFrame.from_dict(
        {key: {"difference": d["estimate"], "95 % interval": f"[{d['low']:+.4f}, {d['high']:+.4f}]",
               "excludes zero": "yes" if d["excludes_zero"] else "no"} for key, d in result.differences.items()},
        orient="index").rename_axis("score")
    first, last = (str(np.datetime_as_string(t, unit="m")).replace("T", " ") for t in truth["time"].values[[0, -1]])
    notes = "\n".join("- " + note for note in inputs.notes)
    over_seeds = "" if result.seeds is None else f"\n\n**Over seeds.** {result.seeds.verdict}"
    text = f"""# Upstream vs baseline: comparison report

Scored on {truth.sizes['time']} forecast times ({first} to {last}),
{truth.sizes['lat']} × {truth.sizes['lon']} downstream grid cells; {inputs.source}.

**Verdict.** {result.verdict}{over_seeds}

## Scores (mm per step; skill = 1 − RMSE / RMSE of the reference)

{main.to_markdown(floatfmt=".3f")}

## Upstream − baseline, with a paired moving-block bootstrap 95 % interval

{result.n_boot} resamples of forecast times in blocks of {result.block_length} steps (to respect
autocorrelation). Negative RMSE and positive CSI differences favour the upstream model.

{diffs.to_markdown(floatfmt="+.4f")}

{_seeds_section(result)}## {LINEAR_QUESTION}

{_linear_section(result)}

{notes}

Full table: `{SCORES_NAME}`. Figures: {', '.join(f'`{name}`' for name in FIGURES)}.
"""
    seeds = [] if result.seeds is None else [
        atomic_write_bytes(output_dir / SEEDS_NAME, result.seeds.table.to_csv(index=False).encode())]
    return [*_figures(inputs, result, output_dir), atomic_write_bytes(output_dir / SCORES_NAME, table.to_csv().encode()),
            *seeds, atomic_write_bytes(output_dir / REPORT_NAME, text.encode())]


def _figures(inputs: ComparisonInputs, result: ComparisonResult, output_dir: Path) -> list[Path]:
    """The five figures: where upstream helps, cases, CSI with intervals, performance, error over time."""
    from convlstm.plotting import (
        plot_case_maps,
        plot_csi_bars,
        plot_difference_map,
        plot_error_by_time,
        plot_performance_diagram,
        save_figure,
    )

    truth, forecasts, scores = inputs.truth, inputs.forecasts, result.scores
    per_cell = {name: _rmse_per_cell(forecasts[name], truth) for name in EXPERIMENTS}
    paths = [Path(output_dir) / name for name in FIGURES]
    return [
        save_figure(plot_difference_map(per_cell["upstream"] - per_cell["baseline"]), paths[0]),
        save_figure(plot_case_maps(truth, {name: forecasts[name] for name in EXPERIMENTS}), paths[1]),
        save_figure(plot_csi_bars(scores["csi"], result.csi_interval["low"], result.csi_interval["high"],
                                  title="CSI per threshold (95 % block-bootstrap intervals)"), paths[2]),
        save_figure(plot_performance_diagram(scores["pod"], scores["far"]), paths[3]),
        save_figure(plot_error_by_time(result.rmse_by_time), paths[4]),
    ]


def _rmse_per_cell(forecast: xr.DataArray, observed: xr.DataArray) -> xr.DataArray:
    """RMSE over time at each grid cell: the per-time sums of the cells laid out as the first axis."""
    f, o = (x.transpose("lat", "lon", "time") for x in (forecast, observed))
    shape = (f.sizes["lat"], f.sizes["lon"])
    sums = ContinuousScores(per_time=True).accumulate(*(x.values.reshape(math.prod(shape), -1) for x in (f, o)))
    return xr.DataArray(rmse_from_sums(sums.per_time()).reshape(shape), dims=("lat", "lon"),
                        coords={d: f[d].values for d in ("lat", "lon")})

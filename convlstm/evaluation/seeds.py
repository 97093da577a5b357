"""Upstream vs baseline when each side holds several trainings of one configuration (seeds): the difference
for each pairing of trainings, its mean, its range over seeds, an interval over seeds and forecast times,
and whether the gain holds for every seed. The ensemble mean of each side is scored with the other
forecasts (``convlstm.evaluation.comparison``); this module answers how much the answer depends on the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import xarray as xr

from convlstm.evaluation.alignment import check_aligned
from convlstm.evaluation.bootstrap import BootstrapOptions, seed_rmse_difference
from convlstm.evaluation.report import EXPERIMENTS
from convlstm.evaluation.scores import ContinuousScores

#: How members are paired: by seed when both sides hold the same distinct seeds, else every pair.
BY_SEED, ALL_PAIRS = "by seed", "all pairs"


@dataclass
class Member:
    """One training of a side that holds several.

    Parameters
    ----------
    name : str
        Its training run id (or the reference it was given by).
    seed : int
        The seed it was trained with.
    forecast : xarray.DataArray
        Its forecast, aligned with the truth.
    """

    name: str
    seed: int
    forecast: xr.DataArray


@dataclass
class SeedComparison:
    """The upstream − baseline difference over seeds.

    Parameters
    ----------
    pairing : str
        :data:`BY_SEED` or :data:`ALL_PAIRS`.
    table : pandas.DataFrame
        One row per pairing: ``baseline_seed``, ``upstream_seed``, the run ids, each member's RMSE and MAE and
        the upstream − baseline ``delta_rmse_mm`` and ``delta_mae_mm``.
    mean, low, high : float
        The mean RMSE difference over pairings and its 95 % interval over seeds and forecast times.
    minimum, maximum : float
        The range of the RMSE difference over pairings.
    n_boot, block_length : int
        How the interval resampled.
    verdict : str
        Whether the upstream model's RMSE is lower for every pairing, in one sentence.
    """

    pairing: str
    table: pd.DataFrame
    mean: float
    low: float
    high: float
    minimum: float
    maximum: float
    n_boot: int
    block_length: int
    verdict: str = ""

    @property
    def every_seed(self) -> bool:
        """Whether the upstream model gains (lower RMSE) in every pairing."""
        return bool((self.table["delta_rmse_mm"] < 0).all())

    def metrics(self) -> dict[str, float]:
        """The headline numbers, for MLflow: mean, range and interval of the RMSE difference, and the verdict as 1/0."""
        return {"seeds_delta_rmse_mm_mean": self.mean, "seeds_delta_rmse_mm_min": self.minimum,
                "seeds_delta_rmse_mm_max": self.maximum, "seeds_delta_rmse_mm_ci_low": self.low,
                "seeds_delta_rmse_mm_ci_high": self.high, "seeds_gain_every_seed": float(self.every_seed)}


def pairing(members: dict[str, list[Member]]) -> str:
    """:data:`BY_SEED` when both sides hold the same distinct seeds, else :data:`ALL_PAIRS`.

    Parameters
    ----------
    members : dict of str to list of Member
        ``{"baseline": [...], "upstream": [...]}``.

    Returns
    -------
    str
        The pairing.
    """
    seeds = [[m.seed for m in members[side]] for side in EXPERIMENTS]
    distinct = all(len(set(s)) == len(s) for s in seeds)
    return BY_SEED if distinct and set(seeds[0]) == set(seeds[1]) else ALL_PAIRS


def compare_seeds(truth: xr.DataArray, members: dict[str, list[Member]],
                  options: BootstrapOptions = BootstrapOptions()) -> SeedComparison:
    """Score every member, pair them (:func:`pairing`) and summarize the upstream − baseline differences.

    Parameters
    ----------
    truth : xarray.DataArray
        The observed precipitation the members are aligned with.
    members : dict of str to list of Member
        ``{"baseline": [...], "upstream": [...]}``, at least one each.
    options : BootstrapOptions
        How to resample (see :func:`~convlstm.evaluation.bootstrap.seed_rmse_difference`).

    Returns
    -------
    SeedComparison
        The per-pairing table, the mean, range and interval, and the verdict.
    """
    check_aligned({"truth": truth, **{f"{side} {m.name} (seed {m.seed})": m.forecast
                                      for side in EXPERIMENTS for m in members[side]}})
    how = pairing(members)
    sides = {side: sorted(members[side], key=lambda m: m.seed) if how == BY_SEED else members[side] for side in EXPERIMENTS}
    scores = {side: [ContinuousScores(truth["lat"], per_time=True).accumulate(m.forecast, truth) for m in sides[side]]
              for side in EXPERIMENTS}
    values = {side: [s.compute() for s in scores[side]] for side in EXPERIMENTS}
    n_base, n_up = len(sides["baseline"]), len(sides["upstream"])
    pairs = [(i, i) for i in range(n_base)] if how == BY_SEED else [(i, j) for i in range(n_base) for j in range(n_up)]
    rows = []
    for i, j in pairs:
        base, up = values["baseline"][i], values["upstream"][j]
        rows.append({"baseline_seed": sides["baseline"][i].seed, "upstream_seed": sides["upstream"][j].seed,
                     "baseline_run": sides["baseline"][i].name, "upstream_run": sides["upstream"][j].name,
                     "baseline_rmse_mm": float(base["rmse_mm"]), "upstream_rmse_mm": float(up["rmse_mm"]),
                     "delta_rmse_mm": float(up["rmse_mm"]) - float(base["rmse_mm"]),
                     "baseline_mae_mm": float(base["mae_mm"]), "upstream_mae_mm": float(up["mae_mm"]),
                     "delta_mae_mm": float(up["mae_mm"]) - float(base["mae_mm"])})
    table = pd.DataFrame(rows)
    interval = seed_rmse_difference(scores["baseline"], scores["upstream"], how == BY_SEED, options)
    delta = table["delta_rmse_mm"]
    result = SeedComparison(how, table, float(delta.mean()), interval.low, interval.high, float(delta.min()),
                            float(delta.max()), interval.n_boot, interval.block_length)
    result.verdict = seed_verdict(result)
    return result


def seed_verdict(result: SeedComparison) -> str:
    """Whether the gain holds for every seed, with the mean difference, its range and its interval.

    Parameters
    ----------
    result : SeedComparison
        The per-pairing differences.

    Returns
    -------
    str
        One sentence starting *Every seed: yes* or *Every seed: no*.
    """
    n, worse = len(result.table), int((result.table["delta_rmse_mm"] >= 0).sum())
    answer = (f"yes: the upstream model's RMSE is lower in all {n} pairings ({result.pairing})" if worse == 0 else
              f"no: the upstream model's RMSE is not lower in {worse} of {n} pairings ({result.pairing})")
    noise = ("excludes zero" if result.low > 0 or result.high < 0 else
             "includes zero: the difference is not distinguishable from the spread between seeds and times")
    return (f"Every seed: {answer}. Upstream − baseline RMSE over seeds: mean {result.mean:+.3f} mm, range "
            f"[{result.minimum:+.3f}, {result.maximum:+.3f}] mm, 95 % interval over seeds and forecast times "
            f"[{result.low:+.3f}, {result.high:+.3f}] mm, which {noise}.")

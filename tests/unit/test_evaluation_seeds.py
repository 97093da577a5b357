"""Several trainings (seeds) a side, on synthetic forecasts: the per-pairing differences, their mean, range and
interval over seeds and times, the every-seed verdict (true and false), the ensemble mean scored like any model,
and the settings that ask for an ensemble."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from convlstm.config import TrainSettings
from convlstm.errors import ConfigError
from convlstm.evaluation import report
from convlstm.evaluation.bootstrap import BootstrapOptions, rmse_difference, seed_rmse_difference
from convlstm.evaluation.comparison import ComparisonInputs, compare, ensemble_mean
from convlstm.evaluation.report import REPORT_NAME, SEEDS_NAME, headline_metrics
from convlstm.evaluation.scores import ContinuousScores
from convlstm.evaluation.seeds import ALL_PAIRS, BY_SEED, Member, compare_seeds
from tests.unit.test_evaluation_comparison import N_BOOT, synthetic_inputs


def members_of(inputs: ComparisonInputs, noise: dict[str, list[float]], seeds: dict[str, list[int]]) -> dict[str, list[Member]]:
    """Members a side: the truth plus noise of each given size (mm), seeded by the member's seed."""
    truth = inputs.truth
    out = {}
    for side in ("baseline", "upstream"):
        out[side] = []
        for sigma, seed in zip(noise[side], seeds[side]):
            rng = np.random.default_rng([seed, len(side)])
            values = np.clip(truth.values + rng.normal(0.0, sigma, truth.shape), 0.0, None).astype(np.float32)
            out[side].append(Member(f"{side}-run-{seed}", seed, truth.copy(data=values)))
    return out


def ensemble_inputs(noise: dict[str, list[float]], seeds: dict[str, list[int]]) -> ComparisonInputs:
    inputs = synthetic_inputs()
    members = members_of(inputs, noise, seeds)
    forecasts = {**inputs.forecasts, **{side: ensemble_mean(members[side]) for side in members}}
    return ComparisonInputs(inputs.truth, forecasts, inputs.source, inputs.notes, members)


def rmse(forecast: xr.DataArray, truth: xr.DataArray) -> float:
    return float(np.sqrt(np.mean((forecast.values.astype(np.float64) - truth.values) ** 2)))


@pytest.fixture(scope="module")
def gains_everywhere(tmp_path_factory: pytest.TempPathFactory):
    inputs = ensemble_inputs({"baseline": [3.0, 3.1, 2.9], "upstream": [2.0, 2.2, 2.1]}, {s: [0, 1, 2] for s in ("baseline", "upstream")})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "_figures", lambda *args: [])
        return inputs, compare(inputs, tmp_path_factory.mktemp("seeds"), n_boot=N_BOOT)


def test_pairs_by_seed_and_reports_each_difference_their_mean_and_range(gains_everywhere) -> None:
    inputs, result = gains_everywhere
    seeds = result.seeds
    assert seeds.pairing == BY_SEED and len(seeds.table) == 3
    assert list(seeds.table["baseline_seed"]) == list(seeds.table["upstream_seed"]) == [0, 1, 2]
    for row in seeds.table.itertuples():
        base = next(m for m in inputs.members["baseline"] if m.seed == row.baseline_seed)
        up = next(m for m in inputs.members["upstream"] if m.seed == row.upstream_seed)
        assert row.baseline_rmse_mm == pytest.approx(rmse(base.forecast, inputs.truth), rel=1e-6)
        assert row.delta_rmse_mm == pytest.approx(rmse(up.forecast, inputs.truth) - rmse(base.forecast, inputs.truth), rel=1e-6)
    delta = seeds.table["delta_rmse_mm"]
    assert seeds.mean == pytest.approx(delta.mean(), abs=1e-12)
    assert (seeds.minimum, seeds.maximum) == (delta.min(), delta.max())
    assert seeds.low <= seeds.mean <= seeds.high
    assert seeds.every_seed and seeds.verdict.startswith("Every seed: yes")
    metrics = headline_metrics(result)
    assert metrics["seeds_delta_rmse_mm_mean"] == seeds.mean and metrics["seeds_gain_every_seed"] == 1.0
    assert metrics["seeds_delta_rmse_mm_min"] == seeds.minimum and metrics["seeds_delta_rmse_mm_ci_high"] == seeds.high


def test_the_ensemble_mean_of_each_side_is_scored_like_any_forecast(gains_everywhere) -> None:
    inputs, result = gains_everywhere
    for side in ("baseline", "upstream"):
        mean = np.mean([m.forecast.values.astype(np.float64) for m in inputs.members[side]], axis=0)
        assert float(result.scores["rmse_mm"].sel(forecast=side)) == pytest.approx(
            float(np.sqrt(np.mean((mean - inputs.truth.values) ** 2))), rel=1e-5)
        # averaging seeds cancels part of their noise: the ensemble mean beats every member
        assert float(result.scores["rmse_mm"].sel(forecast=side)) < result.seeds.table[f"{side}_rmse_mm"].min()


def test_report_and_csv_hold_the_per_seed_table_and_the_verdict(gains_everywhere) -> None:
    _, result = gains_everywhere
    out = result.files[-1].parent
    text = (out / REPORT_NAME).read_text()
    assert "## Upstream − baseline over seeds" in text and text.count(result.seeds.verdict) == 2  # top and section
    assert (out / SEEDS_NAME).read_text().count("\n") == 1 + len(result.seeds.table)


def test_every_seed_is_false_when_one_seed_loses(tmp_path: Path) -> None:
    """Upstream seed 2 is worse than baseline seed 2: the mean still gains, the every-seed verdict says no."""
    inputs = ensemble_inputs({"baseline": [3.0, 3.0, 2.0], "upstream": [2.0, 2.0, 3.5]}, {s: [0, 1, 2] for s in ("baseline", "upstream")})
    seeds = compare_seeds(inputs.truth, inputs.members, BootstrapOptions(N_BOOT))
    assert seeds.table["delta_rmse_mm"].iloc[-1] > 0 > seeds.table["delta_rmse_mm"].iloc[0]
    assert not seeds.every_seed
    assert seeds.verdict.startswith("Every seed: no: the upstream model's RMSE is not lower in 1 of 3 pairings")
    assert seeds.metrics()["seeds_gain_every_seed"] == 0.0
    # the spread between seeds widens the interval beyond what the times alone give
    times_only = rmse_difference(*(ContinuousScores(per_time=True).accumulate(ensemble_mean(inputs.members[s]), inputs.truth)
                                   for s in ("baseline", "upstream")), BootstrapOptions(N_BOOT))
    assert seeds.high - seeds.low > times_only.high - times_only.low


def test_different_seeds_are_paired_all_against_all(tmp_path: Path) -> None:
    inputs = ensemble_inputs({"baseline": [3.0, 3.2], "upstream": [2.0, 2.1, 2.2]}, {"baseline": [0, 1], "upstream": [5, 6, 7]})
    seeds = compare_seeds(inputs.truth, inputs.members, BootstrapOptions(N_BOOT))
    assert seeds.pairing == ALL_PAIRS and len(seeds.table) == 6
    assert set(zip(seeds.table["baseline_seed"], seeds.table["upstream_seed"])) == {(b, u) for b in (0, 1) for u in (5, 6, 7)}
    assert seeds.mean == pytest.approx(seeds.table["upstream_rmse_mm"].mean() - seeds.table["baseline_rmse_mm"].mean())


def test_with_one_member_a_side_the_interval_is_the_time_bootstrap() -> None:
    inputs = synthetic_inputs()
    a, b = (ContinuousScores(per_time=True).accumulate(inputs.forecasts[s], inputs.truth) for s in ("baseline", "upstream"))
    options = BootstrapOptions(N_BOOT)
    assert seed_rmse_difference([a], [b], True, options) == rmse_difference(a, b, options)


def test_one_model_a_side_gives_no_seed_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "_figures", lambda *args: [])
    result = compare(synthetic_inputs(), tmp_path, n_boot=N_BOOT)
    assert result.seeds is None and not any(key.startswith("seeds_") for key in headline_metrics(result))
    assert "over seeds" not in (tmp_path / REPORT_NAME).read_text() and not (tmp_path / SEEDS_NAME).exists()


def test_seeds_settings() -> None:
    assert TrainSettings(seeds=[0, 1, 2]).ensemble
    single = TrainSettings(seeds=[7])
    assert (single.seeds, single.model.seed, single.ensemble) == (None, 7, False)  # one seed is --seed
    assert not TrainSettings().ensemble
    with pytest.raises(ConfigError, match="distinct"):
        TrainSettings(seeds=[1, 1])
    with pytest.raises(ConfigError, match="--resume continues one run") as raised:
        TrainSettings(seeds=[0, 1], resume="run-id")
    assert raised.value.setting == "seeds"

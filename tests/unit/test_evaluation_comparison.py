"""The comparison on fixed synthetic forecasts (no models): one score table with forecast, threshold and
window dims, today's flat metric keys, numbers pinned to the pre-refactor implementation, the report,
the figures, alignment refusals and the ``compare`` command's usage errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scores.continuous import mae
from scores.continuous import rmse as scores_rmse

from tests.helpers import assert_png
from convlstm.cli import run_cli
from convlstm.errors import ConfigError, DataError
from convlstm.evaluation import report
from convlstm.evaluation.alignment import check_aligned
from convlstm.evaluation.comparison import ComparisonInputs, ComparisonResult, compare
from convlstm.evaluation.report import FIGURES, LINEAR_MISSING, LINEAR_QUESTION, REPORT_NAME, SCORES_NAME, flat_metrics
from convlstm.config import DEFAULT_FSS_WINDOWS, DEFAULT_THRESHOLDS_MM
from convlstm.plotting import figure
from convlstm.commands.compare import compare as compare_command

FORECASTS = ("baseline", "upstream", "persistence", "climatology")
N_BOOT = 200


def synthetic_inputs(ridge_noise: tuple[float, float] | None = None) -> ComparisonInputs:
    """48 12-hourly times on a 6 x 7 grid: upstream less noisy than baseline, plus crude references; with
    ``ridge_noise`` also the two ridge regressions, that much noisier than the truth (baseline, upstream)."""
    rng = np.random.default_rng(20240611)
    n, ny, nx = 48, 6, 7
    coords = {"time": pd.date_range("2001-03-01T00", periods=n, freq="12h"),
              "lat": 30.0 + 2.5 * np.arange(ny), "lon": 110.0 + 2.5 * np.arange(nx)}

    def field(values: np.ndarray) -> xr.DataArray:
        return xr.DataArray(values.astype(np.float32), dims=("time", "lat", "lon"), coords=coords, name="precipitation")

    truth = np.where(rng.random((n, ny, nx)) < 0.45, 0.0, rng.gamma(0.8, 6.0, (n, ny, nx)))
    forecasts = {
        "baseline": field(np.clip(truth + rng.normal(0, 3.0, truth.shape), 0, None)),
        "upstream": field(np.clip(truth + rng.normal(0, 2.2, truth.shape), 0, None)),
        "persistence": field(np.roll(truth, 1, axis=0)),
        "climatology": field(np.broadcast_to(truth.mean(axis=0), truth.shape).copy()),
    }
    for name, noise in zip(("ridge_baseline", "ridge_upstream"), ridge_noise or ()):
        forecasts[name] = field(np.clip(truth + rng.normal(0, noise, truth.shape), 0, None))
    return ComparisonInputs(field(truth), forecasts, "synthetic test data", ["A note for the report."])


@pytest.fixture(scope="module")
def inputs() -> ComparisonInputs:
    return synthetic_inputs()


@pytest.fixture(scope="module")
def compared(inputs: ComparisonInputs, tmp_path_factory: pytest.TempPathFactory) -> tuple[ComparisonResult, Path]:
    """The comparison without its figures (drawn once, in test_figures)."""
    out = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "_figures", lambda *args: [])
        return compare(inputs, out, n_boot=N_BOOT), out


def report_table(text: str) -> pd.DataFrame:
    """The score table of report.md (a pipe table) as numbers, one row per forecast."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|:")]
    start = next(i for i, row in enumerate(rows) if row[0] == "forecast")
    body = [row for row in rows[start + 1:start + 1 + len(FORECASTS)]]
    return pd.DataFrame([[float(c) for c in row[1:]] for row in body], index=[row[0] for row in body],
                        columns=rows[start][1:])


def test_score_table_is_one_dataset_on_forecast_threshold_and_window(compared):
    scores = compared[0].scores
    assert list(scores["forecast"].values) == list(FORECASTS)
    assert scores["threshold"].values.tolist() == list(DEFAULT_THRESHOLDS_MM)
    assert scores["window"].values.tolist() == list(DEFAULT_FSS_WINDOWS)
    on = {name: scores[name].dims for name in scores.data_vars}
    assert on == {**{name: ("forecast",) for name in ("rmse_mm", "mae_mm", "bias_mm", "correlation", "rmse_latw_mm",
                                                      "rmse_skill_vs_persistence", "rmse_skill_vs_climatology")},
                  **{name: ("forecast", "threshold") for name in ("pod", "far", "csi", "ets", "fbias")},
                  "fss": ("forecast", "threshold", "window")}


def test_score_rows_hold_every_flat_metric_of_every_forecast_once(compared):
    scores = compared[0].scores
    rows = report.score_rows(scores)
    assert list(rows.columns) == ["forecast", "metric", "score", "threshold_mm", "window", "value"]
    assert not rows.duplicated(["forecast", "metric"]).any()
    for name in FORECASTS:
        mine = rows[rows["forecast"] == name].set_index("metric")["value"].to_dict()
        assert mine == pytest.approx(flat_metrics(scores, name), rel=0, abs=0, nan_ok=True), name
    fss = rows[(rows["metric"] == "fss_5mm_w3") & (rows["forecast"] == "upstream")].iloc[0]
    assert (fss["score"], fss["threshold_mm"], fss["window"]) == ("fss", 5.0, 3)
    rmse = rows[rows["metric"] == "rmse_mm"]
    assert rmse["threshold_mm"].isna().all() and rmse["window"].isna().all()


def test_headline_metrics_are_a_few_numbers_from_the_score_table(compared):
    result = compared[0]
    headline = report.headline_metrics(result)
    assert len(headline) == 12  # no ridge regression here: see test_the_linear_yardstick_*
    for name in FORECASTS:
        for score in ("rmse_mm", "mae_mm"):
            assert headline[f"{name}_{score}"] == flat_metrics(result.scores, name)[score]
    diff = result.differences["rmse_mm"]
    assert (headline["delta_rmse_mm"], headline["delta_rmse_mm_ci_low"], headline["delta_rmse_mm_ci_high"]) == (
        diff["estimate"], diff["low"], diff["high"])
    base, up = (flat_metrics(result.scores, name)["rmse_mm"] for name in ("baseline", "upstream"))
    assert headline["gain_rmse_pct"] == pytest.approx(100.0 * (base - up) / base, rel=1e-12)
    table = report.difference_rows(result.differences).set_index("metric")
    assert set(table.index) == set(result.differences)
    assert table.loc["rmse_mm", "difference"] == diff["estimate"]
    assert table.loc["rmse_mm", "excludes_zero"] == diff["excludes_zero"]


def test_flat_metrics_keep_todays_keys(compared):
    keys = set(flat_metrics(compared[0].scores, "upstream"))
    expected = {"rmse_mm", "mae_mm", "bias_mm", "correlation", "rmse_latw_mm",
                "rmse_skill_vs_persistence", "rmse_skill_vs_climatology"}
    for t in ("0.1", "1", "5", "10", "20"):
        expected |= {f"{name}_{t}mm" for name in ("pod", "far", "csi", "ets", "fbias")}
        expected |= {f"fss_{t}mm_w{w}" for w in (1, 3, 5)}
    assert keys == expected


def test_numbers_equal_the_pre_refactor_implementation(compared):
    # Literals from convlstm.comparison.compare before this refactor, on synthetic_inputs(), n_boot=200, seed 0.
    result = compared[0]
    expected = {
        ("baseline", "rmse_mm"): 2.389979733947477, ("upstream", "rmse_mm"): 1.8080232249549617,
        ("persistence", "rmse_mm"): 7.153685711485913, ("climatology", "rmse_mm"): 4.8967621094002824,
        ("upstream", "rmse_latw_mm"): 1.809487888418521, ("persistence", "correlation"): -0.04775315122979175,
        ("upstream", "csi_5mm"): 0.6907216494845361, ("persistence", "ets_1mm"): -0.0006813710722596955,
        ("upstream", "fss_5mm_w3"): 0.9171457558336151, ("climatology", "rmse_skill_vs_persistence"): 0.3154910200292876,
    }
    for (name, key), value in expected.items():
        assert flat_metrics(result.scores, name)[key] == pytest.approx(value, rel=1e-12), (name, key)
    pinned = {"rmse_mm": (-0.5819565089925152, -0.6398145661561805, -0.5082611255201636),
              "csi_5mm": (0.14381899461727943, 0.09868352269276057, 0.17134929812731892),
              "csi_20mm": (0.08190008190008191, -0.07283482142857131, 0.23265855343980354)}
    for key, (estimate, low, high) in pinned.items():
        diff = result.differences[key]
        assert (diff["estimate"], diff["low"], diff["high"]) == pytest.approx((estimate, low, high), rel=1e-12), key
    interval = result.csi_interval.sel(forecast="upstream", threshold=1.0)
    assert (float(interval["low"]), float(interval["high"])) == pytest.approx((0.5581331941626346, 0.5977212290849961))


def test_scores_equal_the_scores_library_on_the_same_arrays(compared, inputs):
    # An independent computation: truth and forecast are not swapped or shifted on the way into the table.
    scores = compared[0].scores
    for name, forecast in inputs.forecasts.items():
        f = forecast.astype(np.float64)
        assert float(scores["rmse_mm"].sel(forecast=name)) == pytest.approx(float(scores_rmse(f, inputs.truth)), rel=1e-12)
        assert float(scores["mae_mm"].sel(forecast=name)) == pytest.approx(float(mae(f, inputs.truth)), rel=1e-12)


def test_skill_scores_against_the_references(compared):
    scores = compared[0].scores
    for name in FORECASTS:
        for reference in ("persistence", "climatology"):
            expected = 1.0 - scores["rmse_mm"].sel(forecast=name) / scores["rmse_mm"].sel(forecast=reference)
            assert float(scores[f"rmse_skill_vs_{reference}"].sel(forecast=name)) == pytest.approx(float(expected), abs=1e-12)


def test_differences_match_the_table(compared):
    result = compared[0]
    flat = {name: flat_metrics(result.scores, name) for name in ("baseline", "upstream")}
    assert set(result.differences) == {"rmse_mm", *(f"csi_{t:g}mm" for t in DEFAULT_THRESHOLDS_MM)}
    for key, diff in result.differences.items():
        assert diff["estimate"] == pytest.approx(flat["upstream"][key] - flat["baseline"][key], abs=1e-9), key
        assert diff["low"] <= diff["high"] and diff["excludes_zero"] == float(diff["low"] > 0 or diff["high"] < 0)
    assert result.csi_interval["low"].dims == ("forecast", "threshold")
    assert (result.csi_interval["low"] <= result.csi_interval["high"]).all()
    assert (result.n_boot, result.block_length) == (N_BOOT, 4)  # 48 ** (1/3) rounds to 4


def test_scores_csv_and_report(compared):
    result, out = compared
    assert result.files == [out / SCORES_NAME, out / REPORT_NAME]  # and the figures, drawn in test_figures
    written = pd.read_csv(out / SCORES_NAME, index_col="forecast")
    assert list(written.index) == list(FORECASTS)
    for name in FORECASTS:
        assert written.loc[name].to_dict() == pytest.approx(flat_metrics(result.scores, name), rel=1e-15, nan_ok=True)
    text = (out / REPORT_NAME).read_text()
    assert result.verdict in text
    for name in ("baseline", "upstream"):
        assert f"{flat_metrics(result.scores, name)['rmse_mm']:.3f} mm" in result.verdict
    table = report_table(text)
    assert list(table.index) == list(FORECASTS) and {"rmse_mm", "csi_5mm", "fss_5mm_w3"} <= set(table.columns)
    for name in FORECASTS:
        for key in table.columns:
            assert table.loc[name, key] == pytest.approx(flat_metrics(result.scores, name)[key], abs=5e-4 + 1e-9)
    assert "| csi_0.1mm" in text and f"{N_BOOT} resamples" in text and "A note for the report." in text


def test_without_ridge_forecasts_the_linear_yardstick_is_reported_as_not_computed(compared):
    result, out = compared
    assert result.linear is None and result.linear_verdict == LINEAR_MISSING
    assert "Not computed" in LINEAR_MISSING and "--data" in LINEAR_MISSING
    assert LINEAR_MISSING in (out / REPORT_NAME).read_text()
    assert not {"ridge_gain_rmse_pct", "gain_minus_ridge_gain_rmse_mm"} & set(report.headline_metrics(result))


@pytest.mark.parametrize("ridge_noise, network_at_least", [((3.1, 2.9), True), ((3.1, 1.5), False)])
def test_the_linear_yardstick_sets_both_gains_side_by_side(ridge_noise, network_at_least, tmp_path, monkeypatch):
    """The network gains 3.0 → 2.2 (noise sd) from upstream; a ridge gaining 3.1 → 2.9 gains less, one gaining
    3.1 → 1.5 more: the verdict says which, the metrics and the report carry both gains."""
    monkeypatch.setattr(report, "_figures", lambda *args: [])
    inputs = synthetic_inputs(ridge_noise)
    result = compare(inputs, tmp_path, n_boot=N_BOOT)
    rmse = {name: flat_metrics(result.scores, name)["rmse_mm"] for name in inputs.forecasts}
    net, lin = rmse["baseline"] - rmse["upstream"], rmse["ridge_baseline"] - rmse["ridge_upstream"]
    assert (net >= lin) is network_at_least

    linear = result.linear
    assert linear["estimate"] == pytest.approx(net - lin, abs=1e-9)
    assert linear["low"] <= linear["estimate"] <= linear["high"]
    assert linear["excludes_zero"] == float(linear["low"] > 0 or linear["high"] < 0)
    assert linear["excludes_zero"]  # gaps of 0.6 and 0.8 noise sd on 2016 values: far beyond sampling noise
    verdict = result.linear_verdict
    assert verdict.startswith(LINEAR_QUESTION + (" Yes:" if network_at_least else " No:"))
    assert f"network {net:+.3f} mm ({100 * net / rmse['baseline']:+.1f} %" in verdict
    assert f"ridge regression {lin:+.3f} mm ({100 * lin / rmse['ridge_baseline']:+.1f} %" in verdict

    headline = report.headline_metrics(result)
    assert len(headline) == 6 * 2 + 3 + 3
    assert headline["gain_rmse_pct"] == pytest.approx(100 * net / rmse["baseline"], rel=1e-12)
    assert headline["ridge_gain_rmse_pct"] == pytest.approx(100 * lin / rmse["ridge_baseline"], rel=1e-12)
    assert headline["gain_minus_ridge_gain_rmse_mm"] == linear["estimate"]
    assert headline["ridge_upstream_rmse_mm"] == rmse["ridge_upstream"]

    text = (tmp_path / REPORT_NAME).read_text()
    assert f"## {LINEAR_QUESTION}" in text and verdict in text
    section = text.split(f"## {LINEAR_QUESTION}")[1]
    rows = {line.split("|")[1].strip(): [float(c) for c in line.strip().strip("|").split("|")[1:]]
            for line in section.splitlines() if line.startswith("| network") or line.startswith("| ridge regression")}
    assert rows["network"] == pytest.approx([rmse["baseline"], rmse["upstream"], net, 100 * net / rmse["baseline"]], abs=5e-4)
    assert rows["ridge regression"] == pytest.approx(
        [rmse["ridge_baseline"], rmse["ridge_upstream"], lin, 100 * lin / rmse["ridge_baseline"]], abs=5e-4)
    assert list(pd.read_csv(tmp_path / SCORES_NAME, index_col="forecast").index) == list(inputs.forecasts)


def test_rmse_per_cell_by_hand():
    obs = np.arange(8.0).reshape(2, 2, 2)
    error = np.array([1.0, -1.0, 1.0, -1.0, 2.0, -2.0, 0.0, 0.0]).reshape(2, 2, 2)
    coords = {"time": pd.date_range("2001-01-01", periods=2, freq="12h"), "lat": [0.0, 10.0], "lon": [100.0, 101.0]}
    f, o = (xr.DataArray(x, dims=("time", "lat", "lon"), coords=coords) for x in (obs + error, obs))
    cells = report._rmse_per_cell(f, o)
    assert cells.dims == ("lat", "lon")
    np.testing.assert_allclose(cells.values, np.sqrt([[2.5, 2.5], [0.5, 0.5]]))


def test_rmse_per_time_by_hand(compared, inputs):
    by_time = compared[0].rmse_by_time
    assert by_time.dims == ("forecast", "time") and list(by_time["forecast"].values) == list(FORECASTS)
    assert (by_time["time"].values == inputs.truth["time"].values).all()
    for name in FORECASTS:
        error = inputs.forecasts[name].values.astype(np.float64) - inputs.truth.values.astype(np.float64)
        np.testing.assert_allclose(by_time.sel(forecast=name).values, np.sqrt((error ** 2).mean(axis=(1, 2))), rtol=1e-12)


def test_figures(compared, inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(figure, "DPI", 60)  # small PNGs: encoding them is most of this test's time
    files = report._figures(inputs, compared[0], tmp_path)
    assert [path.name for path in files] == list(FIGURES)
    for path in files:
        assert_png(path)


def test_refusals(inputs, tmp_path):
    shifted = {**inputs.forecasts, "upstream": inputs.forecasts["upstream"].isel(time=slice(1, None))}
    with pytest.raises(DataError, match="truth and upstream differ in time"):
        compare(ComparisonInputs(inputs.truth, shifted, "shifted"), tmp_path / "never")
    gap = inputs.forecasts["baseline"].copy()
    gap[3, 2, 2] = np.nan
    with pytest.raises(DataError, match="baseline"):
        compare(ComparisonInputs(inputs.truth, {**inputs.forecasts, "baseline": gap}, "gap"), tmp_path / "never")
    for kwargs in ({"thresholds": ()}, {"windows": (0,)}, {"n_boot": 0}, {"block_length": 49}):
        with pytest.raises(ConfigError):
            compare(inputs, tmp_path / "never", **kwargs)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("dim", ["time", "lat", "lon"])
@pytest.mark.parametrize("how", ["shifted", "shorter"])
def test_check_aligned_names_the_dimension_that_differs(dim: str, how: str) -> None:
    first = xr.DataArray(np.zeros((4, 3, 2)), dims=("time", "lat", "lon"),
                         coords={"time": pd.date_range("2000-01-01", periods=4, freq="12h"),
                                 "lat": [30.0, 32.5, 35.0], "lon": [115.0, 117.5]})
    other = first.isel({dim: slice(0, -1)}) if how == "shorter" else first.assign_coords(
        {dim: first[dim] + (np.timedelta64(12, "h") if dim == "time" else 0.5)})
    check_aligned({"first": first, "second": first.copy()})  # identical: accepted
    with pytest.raises(DataError, match=f"first and second differ in {dim}:") as refused:
        check_aligned({"first": first, "second": other})
    assert "only in first (" in str(refused.value)  # names the values missing, not just the lengths
    with pytest.raises(DataError, match=f"first and third differ in {dim}:"):  # any later entry is checked
        check_aligned({"first": first, "second": first.copy(), "third": other})


@pytest.mark.parametrize("case", ["models and files", "only baseline", "only predictions-exp1", "bad thresholds"])
def test_compare_cli_usage_errors(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/never.db")
    monkeypatch.chdir(tmp_path)
    existing = tmp_path / "predictions.nc"
    existing.write_bytes(b"")
    args, expected = {
        "models and files": (["--baseline", "abc", "--predictions-exp1", existing], ["not both"]),
        "only baseline": (["--baseline", "abc"], ["Give both --baseline and --upstream"]),
        "only predictions-exp1": (["--predictions-exp1", existing], ["Missing --upstream-predictions, --ground-truth"]),
        "bad thresholds": (["--thresholds", "abc"], ["--thresholds", "'abc'"]),
    }[case]
    with pytest.raises(SystemExit) as exited:
        run_cli(compare_command, [*map(str, args), "--output-dir", str(tmp_path / "never")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "never").exists()
    assert not (tmp_path / "never.db").exists()  # refused before touching any tracking store

"""The comparison step: baseline vs upstream scored against the truth, persistence, climatology and (with
models) the ridge regressions of the linear yardstick, with a paired block-bootstrap interval of the
difference; the ``compare`` entry point in its two modes (models, files), and (slow) ``mlflow run -e
compare`` picking the newest runs. The parts that need no
trained model are in ``tests/unit/test_evaluation_*.py``.

The tests use the session's shared pair of tiny models, with a copy of its tracking store (the
comparison runs and registry aliases land there).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from convlstm.config import DEFAULT_REGISTERED_NAME, DEFAULT_THRESHOLDS_MM
from convlstm.data.prepare_store import prepare_store
from convlstm.data.schema import PRECIPITATION, open_dataset
from convlstm.errors import DataError
from convlstm.evaluation.comparison import ComparisonInputs, ComparisonResult, compare, inputs_from_files, inputs_from_models
from convlstm.evaluation.report import FIGURES, LINEAR_MISSING, LINEAR_QUESTION, REPORT_NAME, SCORES_NAME, flat_metrics
from convlstm.evaluation.scores import ContinuousScores
from convlstm.forecast import ForecastModel
from convlstm.inference import PREDICTIONS_NAME
from convlstm.commands.compare import compare as compare_command
from convlstm.commands.infer import infer
from convlstm.tracking.reports import DIFFERENCES_TABLE, METRIC_PREFIX, SCORES_TABLE
from tests.helpers import REPO, assert_png
from tests.integration.workspace import Workspace, invoke, mlflow_run, tracking_environment

EXPERIMENTS = Workspace.KINDS
FILE_FORECASTS = ("baseline", "upstream", "persistence", "climatology")
FORECASTS = (*FILE_FORECASTS, "ridge_baseline", "ridge_upstream")  # with models: the linear yardstick too
CONTINUOUS = ("rmse_mm", "mae_mm", "bias_mm", "correlation", "rmse_latw_mm")
N_BOOT = 200
EXPERIMENT = Workspace.EXPERIMENT


# ---------------------------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def ws(pair: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return pair.copy(tmp_path_factory.mktemp("compare"))


@pytest.fixture(scope="module")
def model_inputs(pair_models: dict[str, ForecastModel], ws: Workspace) -> ComparisonInputs:
    return inputs_from_models(pair_models["baseline"], pair_models["upstream"], ws.tiny)


@pytest.fixture(scope="module")
def library(model_inputs: ComparisonInputs, ws: Workspace) -> tuple[ComparisonResult, Path]:
    out = ws.root / "library-compare"
    return compare(model_inputs, out, n_boot=N_BOOT), out


@pytest.fixture(scope="module")
def predictions(ws: Workspace) -> dict[str, Path]:
    """``predictions.nc`` of the test split from the ``infer`` entry point, for both models."""
    paths = {}
    with pytest.MonkeyPatch.context() as mp, tracking_environment(ws.root, mp):
        for kind in EXPERIMENTS:
            out = ws.root / f"infer-{kind}"
            assert invoke(infer, ["--checkpoint", ws.train_dirs[kind], "--data", ws.tiny, "--split", "test",
                                  "--output-dir", out, "--experiment-name", EXPERIMENT]) == 0, kind
            paths[kind] = out / PREDICTIONS_NAME
            assert paths[kind].is_file()
    return paths


def rewrite(source: Path, target: Path, change) -> Path:
    """A copy of a netCDF file with ``change(dataset)`` applied."""
    with xr.open_dataset(source) as ds:
        changed = change(ds.load())
    changed.to_netcdf(target)
    return target


def report_table(text: str) -> pd.DataFrame:
    """The score table of report.md (a pipe table) as numbers, one row per forecast."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|:")]
    start = next(i for i, row in enumerate(rows) if row[0] == "forecast")
    body = rows[start + 1:start + 1 + len(FORECASTS)]
    return pd.DataFrame([[float(c) for c in row[1:]] for row in body], index=[row[0] for row in body],
                        columns=rows[start][1:])


def metrics_table(scores: xr.Dataset) -> pd.DataFrame:
    """The flat metrics of every forecast, one row each (the layout of scores.csv)."""
    return pd.DataFrame({str(name): flat_metrics(scores, str(name)) for name in scores["forecast"].values}).T


def assert_logged_comparison(ws: Workspace, run, reference: ComparisonResult) -> None:
    """The comparison run holds only the headline metrics, in their own chart section, and every score of
    every forecast in its tables, equal to the library's; it has no child runs crowding the experiment."""
    forecasts = tuple(map(str, reference.scores["forecast"].values))
    headline = {(forecast, score): f"{forecast}_{score}" for forecast in forecasts for score in ("rmse_mm", "mae_mm")}
    linear = ("ridge_gain_rmse_pct", "gain_minus_ridge_gain_rmse_mm") if reference.linear else ()
    assert set(run.data.metrics) == {f"{METRIC_PREFIX}{key}" for key in (*headline.values(), "delta_rmse_mm",
                                     "delta_rmse_mm_ci_low", "delta_rmse_mm_ci_high", "gain_rmse_pct", *linear)}
    assert len(run.data.metrics) == (18 if reference.linear else 12)
    metrics = {key.removeprefix(METRIC_PREFIX): value for key, value in run.data.metrics.items()}
    for key, field in (("", "estimate"), ("_ci_low", "low"), ("_ci_high", "high")):
        assert metrics[f"delta_rmse_mm{key}"] == pytest.approx(reference.differences["rmse_mm"][field], abs=1e-6)
    for (forecast, score), key in headline.items():
        assert metrics[key] == pytest.approx(flat_metrics(reference.scores, forecast)[score], abs=1e-6), key
    rmse = {name: flat_metrics(reference.scores, name)["rmse_mm"] for name in forecasts}
    assert metrics["gain_rmse_pct"] == pytest.approx(100 * (rmse["baseline"] - rmse["upstream"]) / rmse["baseline"], abs=1e-4)
    if reference.linear:
        assert metrics["ridge_gain_rmse_pct"] == pytest.approx(
            100 * (rmse["ridge_baseline"] - rmse["ridge_upstream"]) / rmse["ridge_baseline"], abs=1e-4)
        assert metrics["gain_minus_ridge_gain_rmse_mm"] == pytest.approx(reference.linear["estimate"], abs=1e-6)
    assert run.data.tags["linear_verdict"] == reference.linear_verdict

    client = ws.client()
    tables = {name: pd.read_json(Path(client.download_artifacts(run.info.run_id, name, str(ws.root / "tmp"))),
                                 orient="split") for name in (SCORES_TABLE, DIFFERENCES_TABLE)}
    scores = tables[SCORES_TABLE].pivot(index="forecast", columns="metric", values="value")
    expected = metrics_table(reference.scores)
    assert sorted(scores.index) == sorted(forecasts) and set(scores.columns) == set(expected.columns)
    pd.testing.assert_frame_equal(scores.loc[list(forecasts), expected.columns], expected, check_names=False,
                                  rtol=1e-6, atol=1e-6)
    differences = tables[DIFFERENCES_TABLE].set_index("metric")
    assert set(differences.index) == set(reference.differences)
    for key, diff in reference.differences.items():
        assert differences.loc[key, ["difference", "ci_low", "ci_high"]].tolist() == pytest.approx(
            [diff["estimate"], diff["low"], diff["high"]], abs=1e-6, nan_ok=True), key
    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [{"path": SCORES_TABLE, "type": "table"},
                                                                    {"path": DIFFERENCES_TABLE, "type": "table"}]
    assert ws.runs(f"tags.mlflow.parentRunId = '{run.info.run_id}'") == []


# ---------------------------------------------------------------------------------------------- the library


def test_a_prepared_store_gives_the_same_comparison_inputs(pair_models: dict[str, ForecastModel],
                                                           model_inputs: ComparisonInputs, ws: Workspace) -> None:
    store = prepare_store(ws.tiny, ws.root / "tiny.zarr", pair_models["baseline"].regions).path
    from_store = inputs_from_models(pair_models["baseline"], pair_models["upstream"], str(store))
    xr.testing.assert_allclose(from_store.truth, model_inputs.truth)
    for name in FORECASTS:
        xr.testing.assert_allclose(from_store.forecasts[name], model_inputs.forecasts[name], atol=1e-5, rtol=1e-5)


def test_inputs_from_models_aligns_six_forecasts_with_the_truth(model_inputs: ComparisonInputs, ws: Workspace) -> None:
    truth, forecasts = model_inputs.truth, model_inputs.forecasts
    assert tuple(forecasts) == FORECASTS
    assert truth.dims == ("time", "lat", "lon") and truth.sizes["time"] > 0
    for name, forecast in forecasts.items():
        assert forecast.dims == truth.dims, name
        assert forecast.shape == truth.shape, name
        np.testing.assert_array_equal(forecast["time"].values, truth["time"].values, err_msg=name)
        for dim in ("lat", "lon"):
            np.testing.assert_allclose(forecast[dim].values, truth[dim].values, atol=1e-6, err_msg=f"{name} {dim}")
        assert np.isfinite(forecast.values).all(), name

    # the truth is the observed downstream precipitation of the file at the forecast times
    raw = open_dataset(ws.tiny)
    observed = raw[PRECIPITATION].sel(time=truth["time"].values, lat=truth["lat"].values, lon=truth["lon"].values)
    np.testing.assert_array_equal(truth.values, observed.transpose("time", "lat", "lon").values)
    # the test split: the last forecast times of the file, consecutive steps
    times = truth["time"].values
    assert times[-1] == raw["time"].values[-1]
    step = np.unique(np.diff(raw["time"].values))
    assert len(step) == 1 and (np.diff(times) == step[0]).all()

    # persistence at lead one step is the previous observation, the first one taken from before the test split
    persistence = forecasts["persistence"].values
    np.testing.assert_array_equal(persistence[1:], truth.values[:-1])
    before = raw[PRECIPITATION].sel(time=times[0] - step[0], lat=truth["lat"].values, lon=truth["lon"].values)
    np.testing.assert_array_equal(persistence[0], before.values)

    # climatology depends on the calendar month and hour only
    climatology = forecasts["climatology"]
    index = pd.DatetimeIndex(times)
    for key in set(zip(index.month, index.hour)):
        same = climatology.values[(index.month == key[0]) & (index.hour == key[1])]
        assert (same == same[0]).all()
    assert (climatology.values >= 0).all()

    # the linear yardstick: one ridge regression per experiment, each on its model's inputs, described in the notes
    for name, features in (("ridge_baseline", 2), ("ridge_upstream", 6)):
        (note,) = [note for note in model_inputs.notes if note.startswith(f"{name}: ")]
        assert f"on {2 * features} inputs" in note and "penalty α = " in note, note
        assert (forecasts[name].values >= 0).all(), name
    assert "upstream precipitation" in next(note for note in model_inputs.notes if note.startswith("ridge_upstream"))


def test_models_with_different_windows_are_scored_on_the_times_both_forecast(
        pair_models: dict[str, ForecastModel], model_inputs: ComparisonInputs, ws: Workspace) -> None:
    """Tuned models differ in window size; the longer window starts forecasting later into the test split, and
    every forecast is scored on the times all of them have (the network's weights do not depend on the window)."""
    upstream = pair_models["upstream"]
    longer = dataclasses.replace(upstream, config=dataclasses.replace(upstream.config,
                                                                      window_size=upstream.config.window_size + 2))
    inputs = inputs_from_models(pair_models["baseline"], longer, ws.tiny)
    times = model_inputs.truth["time"].values
    np.testing.assert_array_equal(inputs.truth["time"].values, times[2:])
    for name in FORECASTS:
        np.testing.assert_array_equal(inputs.forecasts[name]["time"].values, times[2:], err_msg=name)
    for name in ("baseline", "persistence", "climatology"):  # what does not depend on the window is unchanged
        xr.testing.assert_allclose(inputs.forecasts[name], model_inputs.forecasts[name].isel(time=slice(2, None)))
    (note,) = [note for note in inputs.notes if note.startswith("Scored on the")]
    assert f"the {times.size - 2} forecast times" in note and "2 more" in note
    assert not any(note.startswith("Scored on the") for note in model_inputs.notes)


def test_compare_writes_report_scores_and_five_figures(library: tuple[ComparisonResult, Path]) -> None:
    result, out = library
    expected = {out / name for name in (REPORT_NAME, SCORES_NAME, *FIGURES)}
    assert set(result.files) == expected
    for name in FIGURES:
        assert_png(out / name)
    written = pd.read_csv(out / SCORES_NAME, index_col="forecast")
    assert list(written.index) == list(FORECASTS)
    assert {*CONTINUOUS, "rmse_skill_vs_persistence", "rmse_skill_vs_climatology", "csi_1mm", "pod_1mm", "far_1mm",
            "fss_1mm_w3"} <= set(written.columns)
    pd.testing.assert_frame_equal(written, metrics_table(result.scores), check_names=False, rtol=1e-12, atol=0)


def test_skill_scores_against_the_references(library: tuple[ComparisonResult, Path]) -> None:
    scores = metrics_table(library[0].scores)
    assert scores.loc["persistence", "rmse_skill_vs_persistence"] == 0.0
    assert scores.loc["climatology", "rmse_skill_vs_climatology"] == 0.0
    for name in FORECASTS:
        for reference in ("persistence", "climatology"):
            expected = 1.0 - scores.loc[name, "rmse_mm"] / scores.loc[reference, "rmse_mm"]
            assert scores.loc[name, f"rmse_skill_vs_{reference}"] == pytest.approx(expected, abs=1e-12)


def test_differences_have_bootstrap_intervals(library: tuple[ComparisonResult, Path]) -> None:
    result = library[0]
    scores, differences = metrics_table(result.scores), result.differences
    assert set(differences) == {"rmse_mm", *(f"csi_{t:g}mm" for t in DEFAULT_THRESHOLDS_MM)}
    rmse = differences["rmse_mm"]
    assert all(np.isfinite(rmse[key]) for key in ("estimate", "low", "high"))
    assert rmse["low"] <= rmse["high"]
    assert rmse["estimate"] == pytest.approx(scores.loc["upstream", "rmse_mm"] - scores.loc["baseline", "rmse_mm"], abs=1e-9)
    assert rmse["excludes_zero"] == float(rmse["low"] > 0 or rmse["high"] < 0)
    defined = 0
    for threshold in DEFAULT_THRESHOLDS_MM:
        key = f"csi_{threshold:g}mm"
        diff = differences[key]
        expected = scores.loc["upstream", key] - scores.loc["baseline", key]
        if np.isfinite(expected):
            defined += 1
            assert diff["estimate"] == pytest.approx(expected, abs=1e-9), key
            assert diff["low"] <= diff["high"], key
        else:  # no event at that threshold: undefined, not a made-up zero
            assert np.isnan(diff["estimate"]), key
    assert defined >= 1
    for name in FORECASTS:  # every forecast's CSI has its own interval for the bar chart
        bounds = result.csi_interval.sel(forecast=name, threshold=0.1)
        assert float(bounds["low"]) <= float(bounds["high"])


def test_verdict_names_both_rmses_and_is_in_the_report(library: tuple[ComparisonResult, Path]) -> None:
    result, out = library
    for name in EXPERIMENTS:
        assert f"{flat_metrics(result.scores, name)['rmse_mm']:.3f} mm" in result.verdict, name
    assert result.verdict in (out / REPORT_NAME).read_text()


def test_the_report_answers_whether_the_network_uses_upstream_as_well_as_a_linear_model(
        library: tuple[ComparisonResult, Path]) -> None:
    result, out = library
    rmse = {name: flat_metrics(result.scores, name)["rmse_mm"] for name in FORECASTS}
    network, linear = rmse["baseline"] - rmse["upstream"], rmse["ridge_baseline"] - rmse["ridge_upstream"]
    assert result.linear["estimate"] == pytest.approx(network - linear, abs=1e-9)
    assert result.linear["low"] <= result.linear["high"]
    assert result.linear_verdict.startswith(f"{LINEAR_QUESTION} {'Yes' if network >= linear else 'No'}:")
    assert f"ridge regression {linear:+.3f} mm" in result.linear_verdict
    text = (out / REPORT_NAME).read_text()
    assert f"## {LINEAR_QUESTION}" in text and result.linear_verdict in text


def test_report_scores_equal_continuous_scores_on_the_same_arrays(library: tuple[ComparisonResult, Path],
                                                                  model_inputs: ComparisonInputs) -> None:
    result, out = library
    table = report_table((out / REPORT_NAME).read_text())
    assert list(table.index) == list(FORECASTS)
    assert set(CONTINUOUS) <= set(table.columns)
    for name in FORECASTS:
        truth = model_inputs.truth
        expected = ContinuousScores(truth["lat"]).accumulate(model_inputs.forecasts[name], truth).compute()
        for key in CONTINUOUS:
            assert table.loc[name, key] == pytest.approx(expected[key], abs=5e-4 + 1e-9), (name, key)
            assert flat_metrics(result.scores, name)[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), (name, key)


# ---------------------------------------------------------------------------------------------- files and refusals


def test_files_give_the_same_forecasts_and_truth_as_the_models(predictions: dict[str, Path], ws: Workspace,
                                                               model_inputs: ComparisonInputs) -> None:
    from_files = inputs_from_files(predictions["baseline"], predictions["upstream"], ws.tiny)
    assert tuple(from_files.forecasts) == FILE_FORECASTS  # no ridge regression: the files carry no training split
    np.testing.assert_array_equal(from_files.truth["time"].values, model_inputs.truth["time"].values)
    np.testing.assert_allclose(from_files.truth.values, model_inputs.truth.values, rtol=0, atol=0)
    for name in ("baseline", "upstream", "persistence"):
        np.testing.assert_allclose(from_files.forecasts[name].values, model_inputs.forecasts[name].values,
                                   rtol=0, atol=1e-6, err_msg=name)
    assert from_files.forecasts["climatology"].shape == from_files.truth.shape
    assert any("Climatology" in note for note in from_files.notes)


def test_predictions_with_different_times_are_refused(predictions: dict[str, Path], ws: Workspace,
                                                      tmp_path: Path) -> None:
    with xr.open_dataset(predictions["upstream"]) as ds:
        times = ds["time"].values
    dropped = times[len(times) // 2]
    shorter = rewrite(predictions["upstream"], tmp_path / "shorter.nc", lambda ds: ds.drop_sel(time=dropped))
    with pytest.raises(DataError, match="differ in time") as refused:
        inputs_from_files(predictions["baseline"], shorter, ws.tiny)
    message = str(refused.value)
    assert f"{len(times)} values" in message and f"vs {len(times) - 1} values" in message
    assert "baseline" in message and "upstream" in message
    assert np.datetime_as_string(dropped, unit="D") in message


@pytest.mark.parametrize("dim", ["lat", "lon"])
def test_predictions_on_different_grids_are_refused(predictions: dict[str, Path], ws: Workspace, tmp_path: Path,
                                                    dim: str) -> None:
    moved = rewrite(predictions["upstream"], tmp_path / "moved.nc", lambda ds: ds.assign_coords({dim: ds[dim] + 5.0}))
    with pytest.raises(DataError, match=f"differ in {dim}"):
        inputs_from_files(predictions["baseline"], moved, ws.tiny)


def test_ground_truth_lacking_a_forecast_time_is_refused(predictions: dict[str, Path], ws: Workspace,
                                                         tmp_path: Path) -> None:
    with xr.open_dataset(predictions["baseline"]) as ds:
        dropped = ds["time"].values[3]
    gappy = rewrite(ws.tiny, tmp_path / "gappy.nc", lambda ds: ds.drop_sel(time=dropped))
    with pytest.raises(DataError, match=r"lacks 1 forecast time") as refused:
        inputs_from_files(predictions["baseline"], predictions["upstream"], gappy)
    assert np.datetime_as_string(dropped, unit="D") in str(refused.value)


def test_missing_predictions_file_is_refused(predictions: dict[str, Path], ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        inputs_from_files(predictions["baseline"], tmp_path / "absent.nc", ws.tiny)


# ---------------------------------------------------------------------------------------------- the entry point


def test_compare_cli_with_files_logs_a_comparison_run(predictions: dict[str, Path], ws: Workspace,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = ws.root / "files-compare"
    with pytest.MonkeyPatch.context() as mp, tracking_environment(ws.root, mp):
        code = invoke(compare_command, ["--predictions-exp1", predictions["baseline"], "--predictions-exp2",
                                        predictions["upstream"], "--ground-truth", ws.tiny, "--n-boot", N_BOOT,
                                        "--experiment-name", EXPERIMENT, "--output-dir", out])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"Report: {out / REPORT_NAME}" in printed
    for name in (REPORT_NAME, SCORES_NAME, *FIGURES, "compare.log"):
        assert (out / name).is_file(), name
    # the linear yardstick needs the training data: said once in the log, in the report and on the terminal
    assert (out / "compare.log").read_text().count(LINEAR_MISSING) == 1
    assert LINEAR_MISSING in (out / REPORT_NAME).read_text() and LINEAR_MISSING in printed

    (run,) = [r for r in ws.runs("tags.run_type = 'comparison'")
              if r.data.params.get("baseline_predictions") == str(predictions["baseline"])]
    assert run.info.status == "FINISHED"
    assert run.data.tags["baseline_run_id"] == run.data.tags["upstream_run_id"] == ""  # files: no training runs
    assert run.data.params["n_boot"] == str(N_BOOT)
    assert run.data.params["ground_truth"] == str(ws.tiny)
    # the same forecasts and truth as the models give, the same seed: the same scores, difference and interval
    # what the library gives for the same files (the references come from the truth file's own splits)
    reference = compare(inputs_from_files(predictions["baseline"], predictions["upstream"], ws.tiny),
                        ws.root / "library-files-compare", n_boot=N_BOOT)
    assert_logged_comparison(ws, run, reference)
    artifacts = {item.path for item in ws.client().list_artifacts(run.info.run_id)}
    assert {REPORT_NAME, SCORES_NAME, "compare.log", *FIGURES} <= artifacts


# ---------------------------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_mlflow_run_compares_the_newest_finished_runs_and_sets_aliases(ws: Workspace,
                                                                       library: tuple[ComparisonResult, Path]) -> None:
    client = ws.client()
    experiment_id = ws.experiment_id()
    # decoys that must be passed over: an older finished baseline run and a newer failed upstream run
    older_start = client.get_run(ws.run_ids["baseline"]).info.start_time - 3_600_000
    decoys = {}
    for kind, start, status in (("baseline", older_start, "FINISHED"), ("upstream", int(time.time() * 1000), "FAILED")):
        decoy = client.create_run(experiment_id, start_time=start, run_name=f"decoy-{kind}",
                                  tags={"run_type": "training", "experiment_type": kind})
        client.set_terminated(decoy.info.run_id, status)
        decoys[kind] = decoy.info.run_id
    before = {run.info.run_id for run in ws.runs()}
    absent = [name for name in ("mlflow.db", "outputs") if not (REPO / name).exists()]
    out = ws.root / "mlflow-run-compare"

    # `mlflow run` starts the command in the project directory: the data and output paths are absolute
    done = mlflow_run(ws.root, "compare", {"n_boot": N_BOOT, "data": ws.tiny, "output_dir": out}, EXPERIMENT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not [name for name in absent if (REPO / name).exists()], "compare wrote into the repository"

    new = [run for run in ws.runs() if run.info.run_id not in before]
    (run,) = [r for r in new if r.data.tags.get("run_type") == "comparison"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["baseline_run_id"] == ws.run_ids["baseline"]
    assert run.data.tags["upstream_run_id"] == ws.run_ids["upstream"]
    assert run.data.params["n_boot"] == str(N_BOOT)
    assert {key: value for key, value in run.data.params.items() if "'" in value} == {}  # as meant, not shell-quoted
    assert run.data.params["block_length"] == "none"
    assert_logged_comparison(ws, run, library[0])
    metrics = {key.removeprefix(METRIC_PREFIX): value for key, value in run.data.metrics.items()}
    assert metrics["delta_rmse_mm_ci_low"] <= metrics["delta_rmse_mm_ci_high"]
    assert metrics["delta_rmse_mm"] == pytest.approx(metrics["upstream_rmse_mm"] - metrics["baseline_rmse_mm"], abs=1e-9)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {REPORT_NAME, SCORES_NAME, *FIGURES} <= artifacts
    assert len(new) == 1
    assert "RUNNING" not in {r.info.status for r in ws.runs()}

    versions = {kind: client.search_model_versions(f"name='{DEFAULT_REGISTERED_NAME}' and run_id='{ws.run_ids[kind]}'")
                for kind in EXPERIMENTS}
    assert all(len(found) == 1 for found in versions.values())
    winner = "baseline" if metrics["baseline_rmse_mm"] <= metrics["upstream_rmse_mm"] else "upstream"
    loser = "upstream" if winner == "baseline" else "baseline"
    champion = client.get_model_version_by_alias(DEFAULT_REGISTERED_NAME, "champion")
    challenger = client.get_model_version_by_alias(DEFAULT_REGISTERED_NAME, "challenger")
    assert (champion.run_id, champion.version) == (ws.run_ids[winner], versions[winner][0].version)
    assert (challenger.run_id, challenger.version) == (ws.run_ids[loser], versions[loser][0].version)
    assert not set(decoys.values()) & {run.data.tags["baseline_run_id"], run.data.tags["upstream_run_id"]}

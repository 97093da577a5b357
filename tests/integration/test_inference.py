"""Inference: a trained model on raw fields (arrays, netCDF files in either naming), the ``infer`` entry
point and what it records in MLflow, and the registered model.

The tests read the session's shared pair of tiny models (``tests/integration/conftest.py``); the ``infer``
runs go to a copy of its tracking store.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import xarray as xr
from mlflow.tracking import MlflowClient

from convlstm.checkpoint import BEST_NAME
from convlstm.config import DEFAULT_REGISTERED_NAME, DEMO_LEVELS
from convlstm.data.dataset import ConvLSTMDataset
from convlstm.data.regions import crop_regions
from convlstm.data.schema import PRECIPITATION, STANDARD_GRAVITY, open_dataset
from convlstm.data.stacking import channel_names, stack_channels
from convlstm.data.thermo import saturation_vapour_pressure
from convlstm.errors import ConfigError, DataError, ModelError
from convlstm.forecast import ForecastModel, load_forecast_model, predict_windows
from convlstm.inference import METADATA_NAME, PREDICTIONS_NAME, generate_predictions, load_model, run_inference
from convlstm.model import ConvLSTMUNet
from convlstm.commands.infer import infer
from convlstm.tracking.reports import INFER_METRIC_PREFIX
from tests.integration.workspace import Workspace, invoke, tracking_environment

WINDOW, TARGET_OFFSET = 6, 1
N_TIMES = 146  # write_demo_dataset(years=0.2): 0.2 × 730.5 twelve-hourly steps
N_LEVELS = len(DEMO_LEVELS)
N_CHANNELS = 5 * N_LEVELS + 1
GRID = {"upstream": (4, 12, slice(8, 12)), "baseline": (4, 4, slice(0, 4))}  # H, W, downstream columns
PRECIP_STANDARD_NAME = "lwe_thickness_of_precipitation_amount"


# ---------------------------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def ws(pair: Workspace) -> Workspace:
    return pair


@pytest.fixture(scope="module")
def copied(pair: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A copy of the pair's tracking store, for the inference runs the entry point records."""
    return pair.copy(tmp_path_factory.mktemp("inference"))


@pytest.fixture(scope="module")
def raw(ws: Workspace) -> xr.Dataset:
    return open_dataset(ws.tiny).load()


def raw_windows(data: xr.Dataset, forecast: ForecastModel, starts: np.ndarray | range | None = None) -> np.ndarray:
    """Windows ``[N, T, C, H, W]`` of raw fields cut and stacked as the served model expects them."""
    stacked = stack_channels(crop_regions(data, forecast.regions, forecast.include_upstream).data)
    window = forecast.config.window_size
    starts = range(len(stacked) - window - forecast.config.target_offset + 1) if starts is None else starts
    return np.stack([stacked[s:s + window] for s in starts])


def era5_layout(data: xr.Dataset, humidity: str) -> xr.Dataset:
    """The same fields as ERA5 ships them: t, z (geopotential), u, v, r or q instead of the dew point,
    tp in metres; valid_time / pressure_level / latitude / longitude, latitude north to south."""
    tem, dpt = data["TEM"].astype(np.float64), data["DPT"].astype(np.float64)
    vapour = saturation_vapour_pressure(dpt)
    if humidity == "r":
        hum = (100.0 * vapour / saturation_vapour_pressure(tem)).assign_attrs(units="%", long_name="Relative humidity")
    else:
        level = data["level"].astype(np.float64)
        hum = (0.622 * vapour / (level - 0.378 * vapour)).assign_attrs(units="kg kg**-1", long_name="Specific humidity")
    out = xr.Dataset({
        "t": tem.assign_attrs(units="K", long_name="Temperature"),
        "z": (data["GPH"].astype(np.float64) * STANDARD_GRAVITY).assign_attrs(units="m**2 s**-2", long_name="Geopotential"),
        "u": data["U"].assign_attrs(units="m s**-1", long_name="U component of wind"),
        "v": data["V"].assign_attrs(units="m s**-1", long_name="V component of wind"),
        humidity: hum,
        "tp": (data[PRECIPITATION].astype(np.float64) / 1000.0).assign_attrs(units="m", long_name="Total precipitation"),
    })
    out = out.astype(np.float32)
    for var in out.data_vars:
        out[var].attrs = {k: v for k, v in out[var].attrs.items() if k != "standard_name"}
    out = out.rename(time="valid_time", level="pressure_level", lat="latitude", lon="longitude")
    out = out.isel(latitude=slice(None, None, -1), pressure_level=slice(None, None, -1))
    out["pressure_level"].attrs = {"units": "hPa", "long_name": "pressure"}
    out = out.assign_coords(number=0, expver=("valid_time", np.full(out.sizes["valid_time"], "0001")))
    out.attrs = {"Conventions": "CF-1.7", "institution": "European Centre for Medium-Range Weather Forecasts"}
    return out


# ---------------------------------------------------------------------------------------------- loading


def test_load_forecast_model_from_checkpoint_file_and_output_dir(ws: Workspace) -> None:
    directory = ws.train_dirs["upstream"]
    from_dir, from_file = load_forecast_model(directory), load_forecast_model(directory / BEST_NAME)
    assert from_dir.source == from_file.source == str(directory / BEST_NAME)
    assert from_dir.run_id == from_file.run_id == ws.run_ids["upstream"]
    for key, value in from_file.model.state_dict().items():
        assert torch.equal(from_dir.model.state_dict()[key], value), key
    assert not from_dir.model.training and from_dir.model.is_frozen  # ConvLSTMUNet.frozen: forecasts only

    model, config, regions = load_model(directory / BEST_NAME)
    assert isinstance(model, ConvLSTMUNet) and model.is_frozen
    assert (config.window_size, config.input_channels, config.hidden_channels) == (WINDOW, N_CHANNELS, [4, 8])
    assert regions == from_file.regions
    assert regions.downstream_lon_min == 110.0 and regions.upstream_lon_min == 70.0


def test_load_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_forecast_model(tmp_path)


@pytest.mark.parametrize("kind", ["upstream", "baseline"])
def test_describe_says_how_to_build_a_request(pair_models: dict[str, ForecastModel], ws: Workspace, kind: str) -> None:
    forecast = pair_models[kind]
    height, width, columns = GRID[kind]
    described = forecast.describe()
    json.dumps(described)  # JSON-ready
    assert described["experiment_type"] == kind and described["include_upstream"] == (kind == "upstream")
    assert (described["window_size"], described["target_offset"]) == (WINDOW, TARGET_OFFSET)
    assert described["levels_hpa"] == list(DEMO_LEVELS)
    assert described["channel_order"] == channel_names(DEMO_LEVELS)
    assert len(described["channel_order"]) == N_CHANNELS == forecast.config.input_channels
    assert described["channel_order"][0] == "DPT@1000hPa" and described["channel_order"][-1] == PRECIPITATION
    assert described["input_shape"] == ["N", WINDOW, N_CHANNELS, height, width]
    assert described["output_shape"] == ["N", height, columns.stop - columns.start]
    assert described["lat"] == [25.0, 30.0, 35.0, 40.0]
    assert described["lon"] == list(np.arange(125.0 - 5.0 * (width - 1), 126.0, 5.0))
    assert described["downstream_columns"] == [columns.start, columns.stop]
    assert described["downstream_lon"] == [110.0, 115.0, 120.0, 125.0]
    assert described["training_run_id"] == ws.run_ids[kind]
    assert described["model_config"]["hidden_channels"] == [4, 8]
    assert described["region_config"]["downstream_lon_max"] == 125.0


# ---------------------------------------------------------------------------------------------- raw arrays


@pytest.mark.parametrize("kind", ["upstream", "baseline"])
def test_predict_stacked_equals_predict_dataset(pair_models: dict[str, ForecastModel], raw: xr.Dataset, ws: Workspace,
                                               kind: str) -> None:
    forecast = pair_models[kind]
    height, _, columns = GRID[kind]
    predicted = forecast.predict_dataset(ws.tiny)
    n = N_TIMES - WINDOW - TARGET_OFFSET + 1
    assert predicted[PRECIPITATION].dims == ("time", "lat", "lon")
    assert predicted.sizes["time"] == n
    times = raw["time"].values
    np.testing.assert_array_equal(predicted["time"].values, times[WINDOW + TARGET_OFFSET - 1:])
    np.testing.assert_array_equal(predicted["forecast_reference_time"].values, times[WINDOW - 1:-TARGET_OFFSET])

    windows = raw_windows(raw, forecast)
    assert windows.shape == (n, WINDOW, N_CHANNELS, height, GRID[kind][1])
    stacked = forecast.predict_stacked(windows)
    assert stacked.shape == (n, height, columns.stop - columns.start)
    assert stacked.dtype == np.float32
    assert np.isfinite(stacked).all() and (stacked >= 0).all()
    np.testing.assert_allclose(stacked, predicted[PRECIPITATION].values, rtol=0, atol=1e-5)
    # batching does not change anything, and a single window works
    np.testing.assert_allclose(forecast.predict_stacked(windows[:7], batch_size=3), stacked[:7], rtol=0, atol=1e-5)
    np.testing.assert_allclose(forecast.predict_stacked(windows[5:6]), stacked[5:6], rtol=0, atol=1e-5)


def _bad_requests(raw: xr.Dataset, forecast: ForecastModel) -> dict[str, tuple[np.ndarray, str]]:
    window = raw_windows(raw, forecast, [0, 1])
    subset = raw.sel(level=[1000.0, 850.0, 500.0])
    nan, inf = window.copy(), window.copy()
    nan[0, 2, 3, 1, 1] = np.nan
    inf[1, 0, -1, 0, 0] = -np.inf
    shape = r"Expected raw fields shaped \[N, 6, 56, 4, 12\]"
    return {
        "rank": (window[0], shape),
        "time steps": (window[:, :5], shape),
        "channels": (raw_windows(subset, forecast, [0]), shape),
        "grid": (window[..., :10], shape),
        "nan": (nan, "NaN or infinite"),
        "inf": (inf, "NaN or infinite"),
        "no window": (window[:0], r"no window \(N = 0\)"),
    }


@pytest.mark.parametrize("case", ["rank", "time steps", "channels", "grid", "nan", "inf", "no window"])
def test_predict_stacked_refuses_bad_input(pair_models: dict[str, ForecastModel], raw: xr.Dataset, case: str) -> None:
    forecast = pair_models["upstream"]
    array, message = _bad_requests(raw, forecast)[case]
    with pytest.raises(DataError, match=message) as caught:
        forecast.predict_stacked(array)
    if "shaped" in message:  # the message also explains the layout and states what was received
        assert "56 channels = 5 variables × 11 levels" in str(caught.value)
        assert str(list(array.shape)) in str(caught.value)


# ---------------------------------------------------------------------------------------------- files


def test_run_inference_writes_cf_predictions_metadata_and_maps(pair_models: dict[str, ForecastModel], ws: Workspace,
                                                               tmp_path: Path) -> None:
    forecast = pair_models["upstream"]
    outcome = run_inference(forecast, ws.tiny, tmp_path, split="test", visualize=True, max_maps=5)

    with xr.open_dataset(tmp_path / PREDICTIONS_NAME) as written:
        precip = written[PRECIPITATION]
        assert precip.dims == ("time", "lat", "lon")
        assert precip.dtype == np.float32 and bool((precip >= 0).all())
        assert precip.attrs["units"] == "mm" and precip.attrs["standard_name"] == PRECIP_STANDARD_NAME
        np.testing.assert_array_equal(written["lat"].values, forecast.grid["lat"])
        np.testing.assert_array_equal(written["lon"].values, forecast.describe()["downstream_lon"])
        assert written["lat"].attrs["units"] == "degrees_north" and written["lon"].attrs["units"] == "degrees_east"
        reference = written["forecast_reference_time"]
        assert reference.dims == ("time",) and reference.attrs["standard_name"] == "forecast_reference_time"
        np.testing.assert_array_equal(written["time"].values - reference.values, np.timedelta64(12, "h"))
        assert written.attrs["Conventions"].startswith("CF-")
        assert written.attrs["training_run_id"] == ws.run_ids["upstream"]
        assert written.attrs["split"] == "test"
        n = written.sizes["time"]
        np.testing.assert_allclose(precip.values, outcome.predictions[PRECIPITATION].values)
        times = written["time"].values

    metadata = json.loads((tmp_path / METADATA_NAME).read_text())
    assert metadata["model_config"]["window_size"] == WINDOW
    assert metadata["region_config"] == forecast.regions.to_dict()
    assert metadata["training_run_id"] == ws.run_ids["upstream"]
    assert metadata["split"] == "test"
    assert metadata["prediction_times"] == [str(np.datetime_as_string(t, unit="m")) for t in times]
    assert metadata["scores"] == pytest.approx(outcome.scores)
    assert metadata["scores"]["n_forecasts"] == n

    maps = sorted(tmp_path.glob("prediction_map_*.png"))
    assert 1 <= len(maps) <= 5
    assert all(path.stat().st_size > 1000 for path in maps)
    assert set(maps) | {tmp_path / PREDICTIONS_NAME, tmp_path / METADATA_NAME} == set(outcome.files)


def test_test_split_reproduces_the_training_runs_test_scores(pair_models: dict[str, ForecastModel], ws: Workspace,
                                                            tmp_path: Path) -> None:
    """The same windows through the same model: the training run's test metrics come out again."""
    metrics = ws.client().get_run(ws.run_ids["upstream"]).data.metrics
    outcome = run_inference(pair_models["upstream"], ws.tiny, tmp_path, split="test")
    n_test = N_TIMES - round(0.7 * N_TIMES) - round(0.15 * N_TIMES) - WINDOW - TARGET_OFFSET + 1
    assert outcome.scores["n_forecasts"] == n_test
    assert outcome.scores["rmse_mm"] == pytest.approx(metrics["test_rmse_mm"], abs=1e-4)
    assert outcome.scores["mae_mm"] == pytest.approx(metrics["test_mae_mm"], abs=1e-4)
    assert not list(tmp_path.glob("*.png"))  # no maps unless asked


def test_run_inference_refuses_an_unknown_split(pair_models: dict[str, ForecastModel], ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split must be one of all, train, val, test"):
        run_inference(pair_models["upstream"], ws.tiny, tmp_path, split="validation")


# ---------------------------------------------------------------------------------------------- data from another source


@pytest.mark.parametrize("humidity", ["r", "q"])
def test_era5_layout_gives_the_same_predictions(pair_models: dict[str, ForecastModel], raw: xr.Dataset, tmp_path: Path,
                                                humidity: str) -> None:
    part = raw.isel(time=slice(0, 30))
    era5 = tmp_path / f"era5_{humidity}.nc"
    era5_layout(part, humidity).to_netcdf(era5)
    with xr.open_dataset(era5) as check:  # really in ERA5 layout on disk
        assert {"t", "z", "u", "v", humidity, "tp"} == set(check.data_vars)
        assert check["latitude"].values[0] > check["latitude"].values[-1]
        assert "valid_time" in check.dims and "pressure_level" in check.dims
    forecast = pair_models["upstream"]
    expected = forecast.predict_dataset(part)
    got = forecast.predict_dataset(era5)
    np.testing.assert_array_equal(got["time"].values, expected["time"].values)
    np.testing.assert_array_equal(got["lat"].values, expected["lat"].values)
    np.testing.assert_allclose(got[PRECIPITATION].values, expected[PRECIPITATION].values, rtol=0, atol=1e-2)


def _other_files(raw: xr.Dataset) -> dict[str, tuple[xr.Dataset, str]]:
    part = raw.isel(time=slice(0, 12))
    finer = part.interp(lat=np.arange(25.0, 40.1, 2.5), lon=np.arange(70.0, 125.1, 2.5))
    return {
        "levels subset": (part.sel(level=[1000.0, 850.0, 500.0, 200.0]), r"pressure levels \[1000.0, 850.0, 500.0, 200.0\]"),
        "2.5 degree grid": (finer, r"has lat 7 values 25 \.\. 40 but the model was trained on 4 values"),
        "missing column": (part.drop_sel(lon=85.0), r"has lon 11 values .* trained on 12 values"),
    }


@pytest.mark.parametrize("case", ["levels subset", "2.5 degree grid", "missing column"])
def test_a_file_on_other_levels_or_another_grid_is_refused(pair_models: dict[str, ForecastModel], raw: xr.Dataset,
                                                           tmp_path: Path, case: str) -> None:
    data, message = _other_files(raw)[case]
    path = tmp_path / "other.nc"
    data.to_netcdf(path)
    with pytest.raises(DataError, match=message) as caught:
        run_inference(pair_models["upstream"], path, tmp_path / "out", split="all")
    assert str(path) in str(caught.value)
    assert not (tmp_path / "out" / PREDICTIONS_NAME).exists()


# ---------------------------------------------------------------------------------------------- the documented API


def test_generate_predictions_equals_predict_windows(pair_models: dict[str, ForecastModel], ws: Workspace, raw: xr.Dataset) -> None:
    model, config, regions = load_model(ws.train_dirs["upstream"] / BEST_NAME)
    normalizer = pair_models["upstream"].normalizer
    normalized = normalizer.normalize(raw)
    out = generate_predictions(model, normalized, config.window_size, regions, include_upstream=True,
                               target_offset=config.target_offset, batch_size=16)
    n = N_TIMES - WINDOW - TARGET_OFFSET + 1
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (n, 1, 4, 4)
    windows = ConvLSTMDataset(normalized, config.window_size, regions, config.target_offset, include_upstream=True)
    expected = predict_windows(model, windows, slice(8, 12), torch.device("cpu"))
    torch.testing.assert_close(out[:, 0], expected, rtol=0, atol=1e-6)
    mm = normalizer.denormalize_precipitation(out[:, 0].numpy())
    np.testing.assert_allclose(mm, pair_models["upstream"].predict_dataset(raw)[PRECIPITATION].values, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------- the infer entry point


@pytest.fixture(scope="module")
def cli_outputs(copied: Workspace) -> dict[str, Path]:
    """``infer`` three ways: a training output directory, a training run id and a registered version."""
    references = {
        "checkpoint": ["--checkpoint", copied.train_dirs["upstream"], "--visualize", "--max-maps", "4"],
        "run id": ["--model", copied.run_ids["upstream"]],
        "registry": ["--model", f"models:/{DEFAULT_REGISTERED_NAME}/{copied.model_version('upstream')}"],
    }
    outputs = {}
    with pytest.MonkeyPatch.context() as mp, tracking_environment(copied.root, mp):
        for name, args in references.items():
            out = copied.root / f"infer-{name.replace(' ', '-')}"
            assert invoke(infer, [*args, "--data", copied.tiny, "--output-dir", out]) == 0, name
            outputs[name] = out
    return outputs


def inference_runs(client: MlflowClient) -> list:
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiments, "tags.run_type = 'inference'")


def test_infer_cli_gives_identical_predictions_whatever_the_model_reference(cli_outputs: dict[str, Path]) -> None:
    values = {}
    for name, out in cli_outputs.items():
        with xr.open_dataset(out / PREDICTIONS_NAME) as written:
            values[name] = written[PRECIPITATION].values
            assert written.attrs["split"] == "test"
        assert (out / METADATA_NAME).is_file() and (out / "inference.log").is_file()
    assert values["checkpoint"].shape == (16, 4, 4)
    np.testing.assert_array_equal(values["run id"], values["checkpoint"])
    np.testing.assert_array_equal(values["registry"], values["checkpoint"])
    assert 1 <= len(list(cli_outputs["checkpoint"].glob("prediction_map_*.png"))) <= 4
    assert not list(cli_outputs["run id"].glob("*.png"))


def test_infer_cli_records_finished_inference_runs(cli_outputs: dict[str, Path], copied: Workspace) -> None:
    client = copied.client()
    runs = {run.data.tags["model_uri"]: run for run in inference_runs(client)}
    for name, out in cli_outputs.items():
        metadata = json.loads((out / METADATA_NAME).read_text())
        run = runs[metadata["model_uri"]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["run_type"] == "inference"
        assert run.data.tags["training_run_id"] == copied.run_ids["upstream"]
        assert run.data.tags["experiment_type"] == "upstream"
        assert run.data.metrics[INFER_METRIC_PREFIX + "rmse_mm"] == pytest.approx(metadata["scores"]["rmse_mm"])
        assert run.data.metrics[INFER_METRIC_PREFIX + "n_forecasts"] == 16
        assert run.data.params["split"] == "test"
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert {PREDICTIONS_NAME, METADATA_NAME, "inference.log"} <= artifacts, name
        if name == "checkpoint":
            maps = client.list_artifacts(run.info.run_id, "maps")
            assert 1 <= len(maps) <= 4 and all(item.path.endswith(".png") for item in maps)
    # the same test windows as the training run scored
    metrics = client.get_run(copied.run_ids["upstream"]).data.metrics
    upstream = runs[str(copied.train_dirs["upstream"])]
    assert upstream.data.metrics[INFER_METRIC_PREFIX + "rmse_mm"] == pytest.approx(metrics["test_rmse_mm"], abs=1e-4)


@pytest.mark.parametrize("args", [[], ["--checkpoint", "train", "--model", "abc"]], ids=["neither", "both"])
def test_infer_cli_needs_exactly_one_model_reference(args: list[str], capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    assert invoke(infer, [*args, "--output-dir", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert "Give exactly one of --checkpoint" in err and "--model" in err
    assert not (tmp_path / "never").exists()


def test_infer_cli_unknown_run_id_is_one_clear_line(copied: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(inference_runs(copied.client()))
    unknown = "0123456789abcdef0123456789abcdef"
    with pytest.MonkeyPatch.context() as mp, tracking_environment(copied.root, mp):
        code = invoke(infer, ["--model", unknown, "--data", copied.tiny, "--output-dir", copied.root / "never"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and f"Cannot find a model at '{unknown}'" in errors[0], err
    assert len(inference_runs(copied.client())) == before
    assert not (copied.root / "never").exists()


# ---------------------------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("kind", ["upstream", "baseline"])
def test_training_registers_the_model_with_its_metadata(in_pair: Workspace, kind: str) -> None:
    tracking = in_pair
    client = tracking.client()
    versions = client.search_model_versions(f"name='{DEFAULT_REGISTERED_NAME}'")
    assert len(versions) == 2
    (version,) = [v for v in versions if v.run_id == tracking.run_ids[kind]]
    assert version.tags["experiment_type"] == kind
    assert tracking.run_ids[kind] in version.description
    assert client.get_run(tracking.run_ids[kind]).data.tags["registered_model"] == f"{DEFAULT_REGISTERED_NAME}/{version.version}"

    height, width, columns = GRID[kind]
    info = mlflow.models.get_model_info(f"models:/{DEFAULT_REGISTERED_NAME}/{version.version}")
    assert info.run_id == tracking.run_ids[kind]
    metadata = info.metadata
    assert metadata["window_size"] == WINDOW
    assert metadata["levels_hpa"] == list(DEMO_LEVELS)
    assert metadata["channel_order"] == channel_names(DEMO_LEVELS)
    assert metadata["experiment_type"] == kind
    assert info.signature.inputs is None  # the model checks requests itself (see convlstm/pyfunc.py)
    assert metadata["input_shape"] == ["N", WINDOW, N_CHANNELS, height, width]
    (outputs,) = info.signature.outputs.inputs
    assert outputs.shape == (-1, height, columns.stop - columns.start) and outputs.type == np.dtype(np.float32)

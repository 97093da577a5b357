"""Forecasting a file with an (untrained) tiny model: what predictions.nc holds, and the messages infer
and compare give for short files and missing values, naming only flags those commands have."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from convlstm.cli import settings_command
from convlstm.config import CompareSettings, ConvLSTMConfig, InferSettings, RegionConfig
from convlstm.data.dataset import ConvLSTMDataset
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.schema import PRECIPITATION
from convlstm.errors import DataError
from convlstm.forecast import ForecastModel
from convlstm.inference import PREDICTIONS_NAME, run_inference
from convlstm.model import ConvLSTMUNet
from convlstm.training.experiment import input_grid
from tests.helpers import TINY, make_dataset

LAT = np.array([25.0, 30.0, 35.0, 40.0])
LON = np.array([100.0, 105.0, 110.0, 115.0, 120.0, 125.0])
REGIONS = RegionConfig(upstream_lon_min=100.0, upstream_lon_max=110.0)
WINDOW = 3


def _forecast_model(include_upstream: bool = False) -> ForecastModel:
    data = make_dataset(n_time=10, lat=LAT, lon=LON)
    config = ConvLSTMConfig(**{**TINY, "window_size": WINDOW})  # type: ignore[arg-type]
    normalizer = ConvLSTMNormalizer().fit(data)
    windows = ConvLSTMDataset(data, WINDOW, REGIONS, include_upstream=include_upstream, normalizer=normalizer)
    config.input_channels = windows.inputs.shape[1]
    torch.manual_seed(0)
    model = ConvLSTMUNet(config.input_channels, config.hidden_channels, 1, config.kernel_size).eval()
    return ForecastModel(model, config, REGIONS, include_upstream, normalizer, input_grid(windows),
                         torch.device("cpu"), "in memory")


def _write(data: xr.Dataset, path: Path) -> Path:
    data.to_netcdf(path)
    return path


def test_predictions_file_is_cf_coordinates_without_fill_value_and_rain_as_a_sum(tmp_path: Path) -> None:
    data = _write(make_dataset(n_time=12, lat=LAT, lon=LON), tmp_path / "in.nc")
    run_inference(_forecast_model(), data, tmp_path / "out", split="all")
    with netCDF4.Dataset(tmp_path / "out" / PREDICTIONS_NAME) as nc:
        for name in ("time", "lat", "lon", "forecast_reference_time"):
            assert "_FillValue" not in nc[name].ncattrs(), name
        assert nc[PRECIPITATION].getncattr("cell_methods") == "time: sum"


def test_infer_on_a_short_file_counts_its_steps_and_names_no_train_flag(tmp_path: Path) -> None:
    data = _write(make_dataset(n_time=3, lat=LAT, lon=LON), tmp_path / "short.nc")
    with pytest.raises(DataError) as info:
        run_inference(_forecast_model(), data, tmp_path / "out", split="all")
    message = str(info.value)
    assert f"{data}: 3 time step(s) are too few for one window, which needs window_size + target_offset = 4" in message
    assert "longer file" in message and "--window-size" not in message

    data = _write(make_dataset(n_time=5, lat=LAT, lon=LON), tmp_path / "five.nc")
    with pytest.raises(DataError) as info:
        run_inference(_forecast_model(), data, tmp_path / "out", split="test")
    message = str(info.value)
    assert message.startswith(f"Cannot forecast the test split of {data} (0 of its 5 time steps)")
    assert "(--split all)" in message and "--window-size" not in message


def test_infer_missing_values_only_in_the_regions_count(tmp_path: Path) -> None:
    data = make_dataset(n_time=24, lat=LAT, lon=LON)
    data["TEM"][:, :, :, 0] = np.nan  # lon 100: scattered far outside the downstream region, at every step
    data[PRECIPITATION][10, 0, 3] = np.nan  # lon 115: inside it, at step 10
    path = _write(data, tmp_path / "gappy.nc")
    model = _forecast_model()
    with pytest.raises(DataError, match=r"in 1 time step\(s\), the first at 2000-01-06T00:00\. .*--nan-policy drop.*"
                                        r"--nan-policy fill"):
        run_inference(model, path, tmp_path / "refused", split="all")
    kept = run_inference(model, path, tmp_path / "dropped", split="all", nan_policy="drop")
    all_targets = data["time"].values[WINDOW:]  # target_offset 1
    read_step_10 = data["time"].values[10 + 1:10 + WINDOW + 1]  # windows whose inputs hold step 10 ...
    expected = np.setdiff1d(all_targets, np.append(read_step_10, data["time"].values[10]))  # ... or target it
    np.testing.assert_array_equal(kept.predictions["time"].values, expected)
    assert len(expected) == len(all_targets) - (WINDOW + 1)
    assert np.isfinite(kept.scores["rmse_mm"])


@pytest.mark.parametrize("settings_class,args", [
    (InferSettings, ["--checkpoint", "best_model.pt"]),
    (CompareSettings, []),
])
@pytest.mark.parametrize("policy", ["raise", "drop", "fill"])
def test_infer_and_compare_take_nan_policy(settings_class: type, args: list[str], policy: str) -> None:
    seen = {}

    @settings_command(settings_class)
    def command(settings: InferSettings | CompareSettings) -> None:
        seen["policy"] = settings.run.nan_policy

    result = CliRunner().invoke(command, [*args, "--nan-policy", policy])
    assert result.exit_code == 0, result.output
    assert seen["policy"] == policy
    refused = CliRunner().invoke(command, [*args, "--nan-policy", "ignore"])
    assert refused.exit_code == 2 and "--nan-policy" in refused.output


def test_compare_with_drop_scores_the_times_both_models_could_forecast(tmp_path: Path) -> None:
    from convlstm.evaluation.comparison import inputs_from_models

    data = make_dataset(n_time=80, lat=LAT, lon=LON)
    data[PRECIPITATION][75, 0, 1] = np.nan  # lon 105, in the test split: only the upstream model reads it
    path = _write(data, tmp_path / "gappy.nc")
    baseline, upstream = _forecast_model(), _forecast_model(include_upstream=True)
    with pytest.raises(DataError, match="--nan-policy drop"):
        inputs_from_models(baseline, upstream, path)
    inputs = inputs_from_models(baseline, upstream, path, nan_policy="drop")
    times = inputs.truth["time"].values
    assert len(times) == 12 - WINDOW - (WINDOW + 1)  # test split: steps 68..79; 4 windows read step 75
    assert data["time"].values[75] not in times
    for forecast in inputs.forecasts.values():
        np.testing.assert_array_equal(forecast["time"].values, times)
        assert np.isfinite(forecast.values).all()

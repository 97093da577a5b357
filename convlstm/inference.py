"""Forecasts from a trained model: raw fields in, precipitation in mm out.

``ForecastModel`` bundles the network with everything a checkpoint records (configs, normalizer,
the grid it was trained on) so that the ``infer`` entry point (netCDF in, netCDF out) and the pyfunc
model (stacked arrays in, arrays out) run the same steps: normalize → model → crop → denormalize.
MLflow URIs are resolved to checkpoint files in ``convlstm.tracking``; this module reads files only.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

import convlstm
from convlstm.config import ConvLSTMConfig
from convlstm.data.dataset import ConvLSTMDataset
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.regions import RegionConfig, crop_regions
from convlstm.data.schema import CF_ATTRS, PRECIPITATION, describe_source, open_dataset
from convlstm.data.stacking import channel_names
from convlstm.checks import require_finite
from convlstm.errors import DataError
from convlstm.evaluation.scores import ContinuousScores
from convlstm.model import ConvLSTMUNet
from convlstm.predict import forward_downstream, predict_windows
from convlstm.training.checkpoint import BEST_NAME, load_checkpoint
from convlstm.training.device import select_device

logger = logging.getLogger(__name__)

_GRID_TOL = 1e-4  # degrees


@dataclass
class ForecastModel:
    """A trained network plus the configs, normalizer and grid needed to use it on raw data."""

    model: ConvLSTMUNet
    config: ConvLSTMConfig
    regions: RegionConfig
    include_upstream: bool
    normalizer: ConvLSTMNormalizer
    grid: dict[str, Any]
    device: torch.device
    source: str
    run_id: str | None = None

    @property
    def downstream_columns(self) -> slice:
        start, stop = self.grid["downstream_columns"]
        return slice(start, stop)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(T, C, H, W)`` of one input window."""
        return (self.config.window_size, self.config.input_channels, len(self.grid["lat"]), len(self.grid["lon"]))

    @property
    def experiment_type(self) -> str:
        return "upstream" if self.include_upstream else "baseline"

    def describe(self) -> dict[str, Any]:
        """What a client needs to build a request, and what produced the forecasts (JSON-ready)."""
        lon = self.grid["lon"]
        columns = self.downstream_columns
        return {
            "experiment_type": self.experiment_type,
            "include_upstream": self.include_upstream,
            "window_size": self.config.window_size,
            "target_offset": self.config.target_offset,
            "input_shape": ["N", *self.input_shape],
            "output_shape": ["N", len(self.grid["lat"]), columns.stop - columns.start],
            "levels_hpa": self.grid["levels"],
            "channel_order": channel_names(self.grid["levels"]),
            "lat": self.grid["lat"],
            "lon": lon,
            "downstream_lon": lon[columns],
            "downstream_columns": [columns.start, columns.stop],
            "region_config": self.regions.to_dict(),
            "model_config": self.config.to_dict(),
            "training_run_id": self.run_id,
            "checkpoint": self.source,
            "convlstm_version": convlstm.__version__,
        }

    # ---- the pyfunc path: stacked raw fields -------------------------------------------------
    def check_stacked(self, raw: np.ndarray) -> None:
        """Refuse a request that is not ``[N, T, C, H, W]`` finite numbers on the model's grid."""
        expected = self.input_shape
        if raw.ndim != 5 or tuple(raw.shape[1:]) != expected:
            raise DataError(
                f"Expected raw fields shaped [N, {', '.join(map(str, expected))}] (N windows of {expected[0]} time steps, "
                f"{expected[1]} channels = 5 variables × {len(self.grid['levels'])} levels {self.grid['levels']} hPa + "
                f"precipitation, on the {expected[2]} × {expected[3]} {self.experiment_type} grid), got {list(raw.shape)}."
            )
        if raw.shape[0] == 0:
            raise DataError("The request holds no window (N = 0).")
        require_finite(raw)

    @torch.no_grad()
    def predict_stacked(self, raw: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Raw fields ``[N, T, C, H, W]`` in physical units → precipitation ``[N, H, W_down]`` in mm."""
        raw = np.asarray(raw, dtype=np.float32)
        self.check_stacked(raw)
        normalized = torch.from_numpy(self.normalizer.normalize_stacked(raw))
        self.model.eval()
        outputs = [
            forward_downstream(self.model, normalized[i:i + batch_size].to(self.device), self.downstream_columns).cpu()
            for i in range(0, len(normalized), batch_size)
        ]
        return np.asarray(self.normalizer.denormalize_precipitation(torch.cat(outputs).numpy()), dtype=np.float32)

    # ---- the infer path: a netCDF file or dataset ---------------------------------------------
    def windows(self, data: xr.Dataset) -> ConvLSTMDataset:
        """Normalized windows of ``data`` (opened with ``open_dataset``), checked against the model's grid and levels."""
        self.check_grid(data)
        return ConvLSTMDataset(data, self.config.window_size, self.regions, self.config.target_offset,
                               self.include_upstream, self.normalizer)

    def check_grid(self, data: xr.Dataset) -> None:
        """Refuse data whose region cut-out differs from the grid the model was trained on."""
        # coordinates only: the cut-out of the fields themselves is built once, by the dataset
        crop = crop_regions(data.drop_vars(list(data.data_vars)), self.regions, self.include_upstream).data
        for dim in ("lat", "lon"):
            got, want = crop[dim].values, np.asarray(self.grid[dim])
            if got.shape != want.shape or not np.allclose(got, want, atol=_GRID_TOL):
                raise DataError(
                    f"{describe_source(data)}: the {self.experiment_type} region has {len(got)} {dim} points "
                    f"({got.min():g}..{got.max():g}) but the model was trained on {len(want)} ({want.min():g}..{want.max():g}). "
                    "Regrid the data to the training grid."
                )

    def predict_dataset(self, data: xr.Dataset | str | os.PathLike[str], batch_size: int = 8) -> xr.Dataset:
        """Forecast every window of ``data``: precipitation (mm) on the downstream grid at the target times."""
        data = open_dataset(data)
        windows = self.windows(data)
        predicted = predict_windows(self.model, windows, self.downstream_columns, self.device, batch_size)
        out = self.normalizer.denormalize_tensor(predicted, windows.lat, windows.downstream_lon, windows.target_times)
        reference = windows.times[windows.target_indices - self.config.target_offset]
        out = out.assign_coords(forecast_reference_time=("time", reference))
        out["forecast_reference_time"].attrs = {"standard_name": "forecast_reference_time", "long_name": "time of the last input"}
        out["time"].attrs = CF_ATTRS["time"]
        out[PRECIPITATION].attrs = {**CF_ATTRS[PRECIPITATION], "long_name": "forecast precipitation over the time step"}
        out.attrs = {
            "Conventions": "CF-1.8",
            "title": f"ConvLSTM U-Net precipitation forecast ({self.experiment_type} experiment)",
            "source": f"convlstm {convlstm.__version__}; checkpoint {self.source}",
            "input_file": describe_source(data),
            "training_run_id": self.run_id or "",
            "window_size": self.config.window_size,
            "target_offset": self.config.target_offset,
            "history": f"{np.datetime64('now', 's')} predicted by convlstm.inference",
        }
        return out


def load_forecast_model(path: str | os.PathLike[str], device: str | torch.device = "cpu",
                        normalizer_path: str | os.PathLike[str] | None = None) -> ForecastModel:
    """Rebuild a model from a checkpoint file (or a training output directory holding ``best_model.pt``).

    The normalizer comes from the checkpoint; ``normalizer_path`` (a ``normalizer.pkl``) overrides it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / BEST_NAME
    device = device if isinstance(device, torch.device) else select_device(device)
    state = load_checkpoint(path, map_location=device)
    if "input_grid" not in state:
        raise DataError(f"{path} has no input grid record; it was written by an older convlstm. Retrain to use it for inference.")
    config = ConvLSTMConfig.from_dict(state["config"])
    model = ConvLSTMUNet(config.input_channels, config.hidden_channels, config.output_channels, config.kernel_size)
    model.load_state_dict(state["model_state_dict"])
    model.to(device).eval()
    normalizer = (ConvLSTMNormalizer().load(normalizer_path) if normalizer_path
                  else ConvLSTMNormalizer.from_dict(state["normalizer"]))
    return ForecastModel(model, config, RegionConfig.from_dict(state["region_config"]), bool(state["include_upstream"]),
                         normalizer, state["input_grid"], device, str(path), state.get("run_id"))


def load_model(checkpoint_path: str | os.PathLike[str], device: str | torch.device = "cpu"
               ) -> tuple[ConvLSTMUNet, ConvLSTMConfig, RegionConfig]:
    """The documented API: ``model, config, region_config = load_model("best_model.pt")``."""
    forecast = load_forecast_model(checkpoint_path, device)
    return forecast.model, forecast.config, forecast.regions


def generate_predictions(
    model: torch.nn.Module,
    data: xr.Dataset,
    window_size: int,
    region_config: RegionConfig,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    include_upstream: bool = False,
    target_offset: int = 1,
) -> torch.Tensor:
    """The documented API: normalized predictions ``[N, 1, H, W_down]`` for every window of
    already-normalized ``data`` (label them with ``ConvLSTMDataset(...).target_times``)."""
    device = torch.device(device)
    windows = ConvLSTMDataset(data, window_size, region_config, target_offset, include_upstream)
    return predict_windows(model.to(device), windows, windows.downstream_columns, device, batch_size)[:, None]


PREDICTIONS_NAME = "predictions.nc"
METADATA_NAME = "metadata.json"
SPLITS = ("all", "train", "val", "test")


@dataclass
class InferenceOutcome:
    """Files written by ``run_inference`` and, where the truth is in the data, the scores in mm."""

    predictions: xr.Dataset
    files: list[Path]
    scores: dict[str, float]


def select_split(data: xr.Dataset, split: str, config: ConvLSTMConfig) -> xr.Dataset:
    """The whole data or one split of it, cut exactly as training cut it (same ratios)."""
    from convlstm.data.split import create_train_val_test_split

    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
    if split == "all":
        return data
    parts = dict(zip(("train", "val", "test"), create_train_val_test_split(
        data, train_ratio=config.train_ratio, val_ratio=config.val_ratio)))
    return parts[split]


def observed_downstream(data: xr.Dataset, forecast: ForecastModel, times: np.ndarray) -> xr.DataArray:
    """Observed precipitation (mm) on the downstream grid at ``times``, to set beside the forecasts."""
    crop = crop_regions(data, forecast.regions, include_upstream=False).data
    return crop[PRECIPITATION].sel(time=times).load()


def run_inference(
    forecast: ForecastModel,
    data: xr.Dataset | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    split: str = "all",
    batch_size: int = 8,
    visualize: bool = False,
    max_maps: int = 12,
    extra_metadata: dict[str, Any] | None = None,
) -> InferenceOutcome:
    """Forecast every window of ``data`` (or one split) and write predictions.nc, metadata.json and maps."""
    from convlstm.atomic import atomic_path, atomic_write_bytes
    from convlstm.plotting import plot_prediction_map, save_figure

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    opened = open_dataset(data)
    selected = select_split(opened, split, forecast.config)
    predictions = forecast.predict_dataset(selected, batch_size)
    predictions.attrs["split"] = split
    observed = observed_downstream(opened, forecast, predictions["time"].values)
    computed = ContinuousScores().accumulate(predictions[PRECIPITATION].values, observed.values).compute()
    scores = {**{key: computed[key] for key in ("rmse_mm", "mae_mm", "bias_mm")}, "n_forecasts": int(predictions.sizes["time"])}
    files = []
    with atomic_path(output_dir / PREDICTIONS_NAME) as tmp:
        predictions.to_netcdf(tmp, engine="netcdf4", format="NETCDF4")
    files.append(output_dir / PREDICTIONS_NAME)
    metadata = {**forecast.describe(), "input_file": describe_source(opened), "split": split,
                "prediction_times": [str(np.datetime_as_string(t, unit="m")) for t in predictions["time"].values],
                "scores": scores, **(extra_metadata or {})}
    files.append(atomic_write_bytes(output_dir / METADATA_NAME, json.dumps(metadata, indent=2, default=str).encode()))
    if visualize:
        regions = forecast.regions
        box = (regions.downstream_lat_min, regions.downstream_lat_max, regions.downstream_lon_min, regions.downstream_lon_max)
        times = predictions["time"].values
        lead_hours = float((times[0] - predictions["forecast_reference_time"].values[0]) / np.timedelta64(1, "h"))
        for index in np.unique(np.linspace(0, len(times) - 1, min(max_maps, len(times))).round().astype(int)):
            label = str(np.datetime_as_string(times[index], unit="h")).replace(":", "")
            fig = plot_prediction_map(predictions[PRECIPITATION].isel(time=index), observed=observed.isel(time=index),
                                      downstream_box=box, title=f"{forecast.experiment_type} forecast, lead {lead_hours:g} h")
            files.append(save_figure(fig, output_dir / f"prediction_map_{label}.png"))
    logger.info("Wrote %d forecasts to %s (RMSE %.3f mm against the observed precipitation in the file).",
                scores["n_forecasts"], output_dir, scores["rmse_mm"])
    return InferenceOutcome(predictions, files, scores)

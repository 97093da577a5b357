"""Forecasting files with a trained model: ``run_inference`` writes predictions.nc, metadata.json and
maps; ``load_model`` and ``generate_predictions`` are the API the original documentation describes.

The steps themselves (normalize → model → crop → denormalize) are ``convlstm.forecast.ForecastModel``'s,
shared with the served model.
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

from convlstm.config import ConvLSTMConfig, RegionConfig
from convlstm.data.dataset import ConvLSTMDataset
from convlstm.data.regions import downstream_precipitation
from convlstm.data.schema import PRECIPITATION, NanPolicy, describe_source, open_dataset
from convlstm.data.split import describe_split, select_split
from convlstm.forecast import ForecastModel, load_forecast_model, predict_windows
from convlstm.evaluation.scores import ContinuousScores
from convlstm.errors import DataError
from convlstm.model import ConvLSTMUNet

logger = logging.getLogger(__name__)


def load_model(checkpoint_path: str | os.PathLike[str], device: str | torch.device = "cpu"
               ) -> tuple[ConvLSTMUNet, ConvLSTMConfig, RegionConfig]:
    """The documented API: ``model, config, region_config = load_model("best_model.pt")``.

    Parameters
    ----------
    checkpoint_path : path-like
        A checkpoint, or a training output directory holding ``best_model.pt``.
    device : str or torch.device
        Where the model runs (``auto`` picks the best available).

    Returns
    -------
    tuple
        The network, frozen for forecasting (``ConvLSTMUNet.frozen``), its ``ConvLSTMConfig`` and its
        ``RegionConfig``.
    """
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
    """The documented API: normalized predictions for every window of already-normalized ``data``.

    Parameters
    ----------
    model : torch.nn.Module
        The network (moved to ``device``).
    data : xarray.Dataset
        Normalized data in the library's layout.
    window_size, target_offset : int
        As the model was trained with.
    region_config : RegionConfig
        The region bounds.
    device : torch.device or str
        Where the model runs.
    batch_size : int
        Windows per forward pass.
    include_upstream : bool
        Whether the model takes the upstream region too.

    Returns
    -------
    torch.Tensor
        ``[N, 1, H, W_down]`` on the CPU, in window order; label them with
        ``ConvLSTMDataset(...).target_times``.
    """
    device = torch.device(device)
    windows = ConvLSTMDataset(data, window_size, region_config, target_offset, include_upstream)
    return predict_windows(model.to(device), windows, windows.downstream_columns, device, batch_size)[:, None]


PREDICTIONS_NAME = "predictions.nc"
METADATA_NAME = "metadata.json"


@dataclass
class InferenceOutcome:
    """Files written by ``run_inference`` and, where the truth is in the data, the scores in mm.

    Parameters
    ----------
    predictions : xarray.Dataset
        The forecasts, as written to ``predictions.nc``.
    files : list of pathlib.Path
        ``predictions.nc``, ``metadata.json`` and the maps.
    scores : dict of str to float
        ``rmse_mm``, ``mae_mm``, ``bias_mm`` and ``n_forecasts``.
    """

    predictions: xr.Dataset
    files: list[Path]
    scores: dict[str, float]


def run_inference(
    forecast: ForecastModel,
    data: xr.Dataset | str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    split: str = "all",
    batch_size: int = 8,
    visualize: bool = False,
    max_maps: int = 12,
    extra_metadata: dict[str, Any] | None = None,
    nan_policy: NanPolicy = "raise",
    member: int | None = None,
) -> InferenceOutcome:
    """Forecast every window of ``data`` (or one split) and write predictions.nc, metadata.json and maps.

    Parameters
    ----------
    forecast : ForecastModel
        The trained model.
    data : xarray.Dataset or path-like
        The data to forecast from, with the observed precipitation the forecasts are scored against.
    output_dir : path-like
        Where the files go (created).
    split : {"all", "train", "val", "test"}
        The whole data, or one split of it cut as in training.
    batch_size : int
        Windows per forward pass.
    visualize : bool
        Also write ``prediction_map_<time>.png`` files.
    max_maps : int
        At most this many maps, evenly spread in time.
    extra_metadata : dict, optional
        More entries for ``metadata.json`` (e.g. the model reference).
    nan_policy : {"raise", "drop", "fill"}
        Missing values in the model's regions: refuse them, forecast only the windows that read none, or
        interpolate them in time.
    member : int, optional
        The ensemble member, for raw input holding several. Raw input is brought to the model's time step.

    Returns
    -------
    InferenceOutcome
        The forecasts, the files and the scores.
    """
    from convlstm.atomic import atomic_write_bytes
    from convlstm.netcdf import write_netcdf
    from convlstm.plotting import plot_prediction_map, save_figure

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    opened = open_dataset(data, nan_policy=nan_policy, member=member, time_step=forecast.config.time_step)
    selected = select_split(opened, split, forecast.config)
    try:
        predictions = forecast.predict_dataset(selected, batch_size, nan_policy)
    except DataError as exc:
        if split == "all":
            raise
        too_short = selected.sizes["time"] < forecast.config.window_size + forecast.config.target_offset
        hint = " Or forecast every window of the file (--split all)." if too_short else ""
        raise DataError(f"Cannot forecast {describe_split(opened, selected, split)}: {exc}{hint}") from exc
    predictions.attrs["split"] = split
    observed = downstream_precipitation(opened, forecast.regions, predictions["time"].values)
    computed = ContinuousScores().accumulate(predictions[PRECIPITATION].values, observed.values).compute()
    scores = {**{key: computed[key] for key in ("rmse_mm", "mae_mm", "bias_mm")}, "n_forecasts": int(predictions.sizes["time"])}
    files = []
    files.append(write_netcdf(predictions, output_dir / PREDICTIONS_NAME))
    metadata = {**forecast.describe(), "input_file": describe_source(opened), "split": split,
                "prediction_times": [str(np.datetime_as_string(t, unit="m")) for t in predictions["time"].values],
                "scores": scores, **(extra_metadata or {})}
    files.append(atomic_write_bytes(output_dir / METADATA_NAME, json.dumps(metadata, indent=2, default=str).encode()))
    if visualize:
        times = predictions["time"].values
        lead_hours = float((times[0] - predictions["forecast_reference_time"].values[0]) / np.timedelta64(1, "h"))
        for index in np.unique(np.linspace(0, len(times) - 1, min(max_maps, len(times))).round().astype(int)):
            label = str(np.datetime_as_string(times[index], unit="h")).replace(":", "")
            fig = plot_prediction_map(predictions[PRECIPITATION].isel(time=index), observed=observed.isel(time=index),
                                      downstream_box=forecast.regions.downstream_box, title=f"{forecast.experiment_type} forecast, lead {lead_hours:g} h")
            files.append(save_figure(fig, output_dir / f"prediction_map_{label}.png"))
    logger.info("Wrote %d forecasts to %s (RMSE %.3f mm against the observed precipitation in the file).",
                scores["n_forecasts"], output_dir, scores["rmse_mm"])
    return InferenceOutcome(predictions, files, scores)

"""Forecasts from a trained model: raw fields in, precipitation in mm out.

``forward_downstream`` is the one forward path (training, validation, inference, the served model):
run the model over windows and keep the downstream columns. ``ForecastModel`` bundles the network
with everything a checkpoint records (configs, normalizer, the grid it was trained on), so that the
``infer`` entry point (netCDF in, netCDF out) and the pyfunc model (stacked arrays in, arrays out) run
the same steps: normalize → model → crop → denormalize. This module reads files only; MLflow URIs are
resolved to files in ``convlstm.tracking``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

import convlstm
from convlstm.checkpoint import BEST_NAME, load_checkpoint
from convlstm.checks import require_finite
from convlstm.config import ConvLSTMConfig, RegionConfig
from convlstm.data.dataset import ConvLSTMDataset, WindowBatch, WindowDataset
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.regions import crop_regions
from convlstm.data.schema import CF_ATTRS, PRECIPITATION, NanPolicy, describe_source, open_dataset
from convlstm.data.stacking import channel_names
from convlstm.device import select_device
from convlstm.errors import DataError, ModelError
from convlstm.evaluation.alignment import describe_coordinate, same_coordinate
from convlstm.model import ConvLSTMUNet

logger = logging.getLogger(__name__)


def forward_downstream(
    model: torch.nn.Module, inputs: torch.Tensor | WindowBatch, downstream_columns: slice,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Model output cropped to the downstream columns, in float32 (the one forward path).

    Parameters
    ----------
    model : torch.nn.Module
        A ``ConvLSTMUNet``.
    inputs : torch.Tensor or WindowBatch
        Normalized windows ``[B, T, C, H, W]``, or consecutive windows as a ``WindowBatch``, on the
        model's device.
    downstream_columns : slice
        The target region's columns of the model's output.
    amp_dtype : torch.dtype, optional
        Autocast dtype; None runs in full precision.

    Returns
    -------
    torch.Tensor
        ``[B, H_down, W_down]``, normalized.
    """
    with torch.autocast(inputs.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        output = model.forward_windows(*inputs) if isinstance(inputs, WindowBatch) else model(inputs)
    return output[:, 0, :, downstream_columns].float()


@torch.no_grad()
def predict_windows(
    model: torch.nn.Module,
    dataset: WindowDataset,
    downstream_columns: slice,
    device: torch.device,
    batch_size: int = 8,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Normalized predictions for every window of ``dataset``, in order, on the CPU.

    Parameters
    ----------
    model : torch.nn.Module
        The network, already on ``device`` (set to eval mode here).
    dataset : WindowDataset
        The windows.
    downstream_columns : slice
        The target region's columns of the model's output.
    device : torch.device
        Where the model runs.
    batch_size : int
        Windows per forward pass.
    amp_dtype : torch.dtype, optional
        Autocast dtype; None runs in full precision.

    Returns
    -------
    torch.Tensor
        ``[N, H_down, W_down]``.
    """
    model.eval()
    outputs = [
        forward_downstream(model, batch.to(device), downstream_columns, amp_dtype).cpu()
        for batch, _ in dataset.window_batches(batch_size)
    ]
    return torch.cat(outputs)


@dataclass
class ForecastModel:
    """A trained network plus the configs, normalizer and grid needed to use it on raw data.

    Parameters
    ----------
    model : ConvLSTMUNet
        The network on ``device``, frozen for forecasting (``ConvLSTMUNet.frozen``).
    config : ConvLSTMConfig
        Its config (window size, target offset, channels).
    regions : RegionConfig
        The regions it was trained on.
    include_upstream : bool
        Whether it takes the upstream region too.
    normalizer : ConvLSTMNormalizer
        The training statistics.
    grid : dict
        The training grid, as ``input_grid`` recorded it: ``lat``, ``lon``, ``levels``, ``downstream_columns``.
    device : torch.device
        Where it runs.
    source : str
        The checkpoint file it was loaded from.
    run_id : str, optional
        The training run, if it was tracked.
    """

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
        """The downstream region's columns of the input grid (and of the model's output)."""
        start, stop = self.grid["downstream_columns"]
        return slice(start, stop)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """``(T, C, H, W)`` of one input window."""
        return (self.config.window_size, self.config.input_channels, len(self.grid["lat"]), len(self.grid["lon"]))

    @property
    def experiment_type(self) -> str:
        """``upstream`` or ``baseline``."""
        return "upstream" if self.include_upstream else "baseline"

    def describe(self) -> dict[str, Any]:
        """What a client needs to build a request, and what produced the forecasts (JSON-ready).

        Returns
        -------
        dict
            Shapes, levels, channel order, grid, configs, training run, checkpoint and version: the served
            model's metadata and the start of inference's ``metadata.json``.
        """
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
        """Refuse a request that is not ``[N, T, C, H, W]`` finite numbers on the model's grid.

        Parameters
        ----------
        raw : numpy.ndarray
            The request's windows.

        Raises
        ------
        DataError
            Saying the expected shape and what each axis means (the served model answers HTTP 400 with it).
        """
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
        """Raw fields in physical units → downstream precipitation in mm (the served model's path).

        Parameters
        ----------
        raw : numpy.ndarray
            ``[N, T, C, H, W]``, channels in ``stack_channels`` order, on the training grid.
        batch_size : int
            Windows per forward pass.

        Returns
        -------
        numpy.ndarray
            ``[N, H, W_down]`` float32, never negative.
        """
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
    def windows(self, data: xr.Dataset, drop_missing: bool = False) -> ConvLSTMDataset:
        """Normalized windows of ``data``, checked against the model's grid and levels.

        Parameters
        ----------
        data : xarray.Dataset
            Physical units, opened with ``open_dataset``.
        drop_missing : bool
            Leave out the windows that read a missing value in the model's regions (else refuse them).

        Returns
        -------
        ConvLSTMDataset
            Every window of ``data`` (that reads no missing value, with ``drop_missing``).
        """
        self.check_grid(data)
        return ConvLSTMDataset(data, self.config.window_size, self.regions, self.config.target_offset,
                               self.include_upstream, self.normalizer, drop_missing=drop_missing)

    def check_grid(self, data: xr.Dataset) -> None:
        """Refuse data whose region cut-out differs from the grid the model was trained on.

        Parameters
        ----------
        data : xarray.Dataset
            Data in the library's layout; only its coordinates are read.
        """
        # coordinates only: the cut-out of the fields themselves is built once, by the dataset
        crop = crop_regions(data.drop_vars(list(data.data_vars)), self.regions, self.include_upstream).data
        for dim in ("lat", "lon"):
            got, want = crop[dim].values, np.asarray(self.grid[dim])
            if not same_coordinate(dim, got, want):
                raise DataError(
                    f"{describe_source(data)}: the {self.experiment_type} region has {dim} {describe_coordinate(got)} but the "
                    f"model was trained on {describe_coordinate(want)}. Regrid the data to the training grid."
                )

    def predict_dataset(self, data: xr.Dataset | str | os.PathLike[str], batch_size: int = 8,
                        nan_policy: NanPolicy = "raise") -> xr.Dataset:
        """Forecast every window of ``data``: precipitation (mm) on the downstream grid at the target times.

        Parameters
        ----------
        data : xarray.Dataset or path-like
            A netCDF file or dataset in any naming ``open_dataset`` accepts, physical units.
        batch_size : int
            Windows per forward pass.
        nan_policy : {"raise", "drop", "fill"}
            Missing values in the model's regions: refuse them, forecast only the windows that read none,
            or interpolate them in time (a dataset already opened keeps what its opening did).

        Returns
        -------
        xarray.Dataset
            ``precipitation (time, lat, lon)`` with ``forecast_reference_time`` (the last input's time)
            and CF attributes: what ``predictions.nc`` holds.
        """
        data = open_dataset(data, nan_policy=nan_policy)
        windows = self.windows(data, drop_missing=nan_policy == "drop")
        if nan_policy == "drop":
            logger.info("%s: forecasting %s.", describe_source(data), windows.describe_kept())
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

    Parameters
    ----------
    path : path-like
        A checkpoint, or a directory holding ``best_model.pt``.
    device : str or torch.device
        Where the model runs (``auto`` picks the best available).
    normalizer_path : path-like, optional
        A ``normalizer.pkl`` whose statistics replace those stored in the checkpoint.

    Returns
    -------
    ForecastModel
        The network, frozen for forecasting (``ConvLSTMUNet.frozen``: the same forecasts, sooner on a CPU), with its
        configs, normalizer and training grid.
    """
    path = Path(path)
    if path.is_dir():
        path = path / BEST_NAME
    device = device if isinstance(device, torch.device) else select_device(device)
    state = load_checkpoint(path, map_location=device)
    if "input_grid" not in state:
        raise ModelError(f"{path} has no input grid record; it was written by an older convlstm. Retrain to use it for inference.")
    config = ConvLSTMConfig.from_dict(state["config"])
    model = ConvLSTMUNet(config.input_channels, config.hidden_channels, config.output_channels, config.kernel_size)
    model.load_state_dict(state["model_state_dict"])
    model = model.to(device).frozen()
    normalizer = (ConvLSTMNormalizer().load(normalizer_path) if normalizer_path
                  else ConvLSTMNormalizer.from_dict(state["normalizer"]))
    return ForecastModel(model, config, RegionConfig.from_dict(state["region_config"]), bool(state["include_upstream"]),
                         normalizer, state["input_grid"], device, str(path), state.get("run_id"))

"""What many tests share: small datasets in the library's layout built in memory, and a PNG check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

from convlstm.config import ConvLSTMConfig, RegionConfig
from convlstm.data.prepare import PreparedData, prepare_data
from convlstm.data.schema import CF_ATTRS, DIMS, LEVEL_VARIABLES, PRECIPITATION, VARIABLES
from convlstm.model import ConvLSTMUNet
from convlstm.training.trainer import Trainer, TrainingCallback

REPO = Path(__file__).resolve().parents[1]
#: A model small enough to train in a second on the 5° demo grid.
TINY = {"hidden_channels": [4, 8], "batch_size": 8}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _era5_sample() -> Path:
    """The real ERA5 sample (shared/data/era5-sample): $CONVLSTM_ERA5_SAMPLE, beside the checkout, or /work/shared."""
    candidates = [os.environ.get("CONVLSTM_ERA5_SAMPLE"), REPO.parent / "shared" / "data" / "era5-sample", "/work/shared/data/era5-sample"]
    found = [Path(c) for c in candidates if c and Path(c).is_dir()]
    return found[0] if found else Path(candidates[-1])


#: Ten real ERA5 files in the older CDS netCDF layout (see its README.md); tests skip when it is absent.
ERA5_SAMPLE = _era5_sample()


def assert_png(path: Path) -> None:
    """A real, non-trivial PNG, written atomically (no temporary file left beside it)."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def assert_library_layout(ds: xr.Dataset) -> None:
    """The layout open_dataset promises: names, dimensions, float32, CF units, axis orientation."""
    assert set(ds.data_vars) == set(VARIABLES)
    for var in LEVEL_VARIABLES:
        assert ds[var].dims == DIMS
    assert ds[PRECIPITATION].dims == ("time", "lat", "lon")
    for var in VARIABLES:
        assert ds[var].dtype == np.float32, var
        assert ds[var].attrs["units"] == CF_ATTRS[var]["units"], var
        assert ds[var].attrs["standard_name"] == CF_ATTRS[var]["standard_name"], var
    assert np.all(np.diff(ds["lat"].values) > 0), "latitude must be ascending"
    assert np.all(np.diff(ds["lon"].values) > 0), "longitude must be ascending"
    assert np.all(np.diff(ds["level"].values) < 0), "levels must be descending (surface first)"
    assert np.all(np.diff(ds["time"].values) > np.timedelta64(0)), "time must increase"
    assert ds["level"].attrs["units"] == "hPa"
    assert ds["lat"].attrs["units"] == "degrees_north" and ds["lon"].attrs["units"] == "degrees_east"


def make_dataset(
    n_time: int = 20,
    lat: np.ndarray | None = None,
    lon: np.ndarray | None = None,
    levels: tuple[float, ...] = (1000.0, 850.0, 500.0),
    seed: int = 0,
    start: str = "2000-01-01",
) -> xr.Dataset:
    """Random but physically ordered fields (TEM > DPT, GPH rising with height), precipitation >= 0."""
    rng = np.random.default_rng(seed)
    lat = np.arange(25.0, 41.0, 3.0) if lat is None else lat
    lon = np.arange(70.0, 126.0, 5.0) if lon is None else lon
    shape = (n_time, len(levels), len(lat), len(lon))
    height = np.array([110.0 + 7.0 * (1000.0 - p) * 2.2 for p in levels])[None, :, None, None]
    tem = 290.0 - 0.0065 * height + rng.normal(0, 2, shape)
    fields = {
        "TEM": tem,
        "DPT": tem - 2.0 - rng.gamma(2.0, 2.0, shape),
        "GPH": height + rng.normal(0, 30, shape),
        "U": 10.0 + rng.normal(0, 5, shape),
        "V": rng.normal(0, 3, shape),
    }
    precip = np.where(rng.random(shape[:1] + shape[2:]) < 0.5, 0.0, rng.gamma(1.0, 5.0, shape[:1] + shape[2:]))
    data_vars = {var: (("time", "level", "lat", "lon"), fields[var].astype(np.float32), CF_ATTRS[var]) for var in LEVEL_VARIABLES}
    data_vars[PRECIPITATION] = (("time", "lat", "lon"), precip.astype(np.float32), CF_ATTRS[PRECIPITATION])
    coords = {
        "time": pd.date_range(start, periods=n_time, freq="12h"),
        "level": np.asarray(levels, dtype=np.float64),
        "lat": lat,
        "lon": lon,
    }
    return xr.Dataset(data_vars, coords=coords)


def prepare(data: Path | xr.Dataset, include_upstream: bool = False) -> PreparedData:
    return prepare_data(data, RegionConfig(), include_upstream, window_size=6)


def make_trainer(prepared: PreparedData, output_dir: Path, callbacks: list[TrainingCallback] | None = None,
                 device: torch.device = torch.device("cpu"), **config: object) -> Trainer:
    """The TINY model's trainer, its weights drawn from the config's seed (on the CPU, then moved to ``device``)."""
    values = {**TINY, "num_epochs": 2, "input_channels": prepared.train.input_shape[1], **config}
    cfg = ConvLSTMConfig(**values)  # type: ignore[arg-type]
    torch.manual_seed(cfg.seed)
    model = ConvLSTMUNet(cfg.input_channels, cfg.hidden_channels, 1, cfg.kernel_size)
    return Trainer(model, cfg, prepared.normalizer, prepared.train.downstream_columns, device, output_dir,
                   metadata={"normalizer": prepared.normalizer.to_dict()}, callbacks=callbacks or [],
                   pin_memory=True)  # pinned on CUDA only

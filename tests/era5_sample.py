"""The real ERA5 sample (shared/data/era5-sample: q, u, v, tp in the older CDS layout) made whole: the
t and z it lacks, written the way the CDS writes files, for tests that run the whole path on real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests.helpers import ERA5_SAMPLE

#: Skip (saying where the sample was looked for) when it is absent.
requires_sample = pytest.mark.skipif(not (ERA5_SAMPLE / "ERA5_2020-01-01_pl_q.nc").exists(),
                                     reason=f"the real ERA5 sample is not at {ERA5_SAMPLE} (set CONVLSTM_ERA5_SAMPLE)")

G = 9.80665
REAL = ("pl_q", "pl_u", "pl_v", "tp")  # what the sample has of what the library reads
PACKED = {"dtype": "int16", "_FillValue": np.int16(-32767)}


def sample(name: str) -> Path:
    return ERA5_SAMPLE / f"ERA5_2020-01-01_{name}.nc"


def height(level: xr.DataArray) -> xr.DataArray:
    """Standard-atmosphere height (m) of a pressure level (hPa)."""
    return 44330.8 * (1.0 - (level / 1013.25) ** 0.190263)


def synthetic_t_z() -> dict[str, xr.DataArray]:
    """Plausible t (K) and z (m2 s-2) on the sample's coordinates, which the sample lacks."""
    with xr.open_dataset(sample("pl_q")) as q:
        template = q["q"].load()
    h = height(template["level"].astype(np.float64))
    wave = np.sin(np.deg2rad(template["longitude"] * 20.0)) * np.cos(np.deg2rad(template["latitude"] * 10.0))
    hours = template["time"].dt.hour
    t = (288.15 - 6.5e-3 * h + 3.0 * wave + 0.1 * hours).transpose(*template.dims)
    z = (G * (h + 20.0 * wave + hours)).transpose(*template.dims)
    return {
        "t": t.assign_attrs(units="K", long_name="Temperature", standard_name="air_temperature"),
        "z": z.assign_attrs(units="m**2 s**-2", long_name="Geopotential", standard_name="geopotential"),
    }


def write_packed(da: xr.DataArray, path: Path) -> Path:
    """The older CDS layout: int16 packed with scale_factor / add_offset, hours since 1900 on a gregorian calendar."""
    low, high = float(da.min()), float(da.max())
    scale = (high - low) / (2**16 - 4) or 1.0
    encoding = {da.name: {**PACKED, "scale_factor": scale, "add_offset": (high + low) / 2},
                "time": {"units": "hours since 1900-01-01", "calendar": "gregorian", "dtype": "int32"}}
    da.to_dataset().to_netcdf(path, encoding=encoding)
    return path


def era5_folder(folder: Path, skip: tuple[str, ...] = ()) -> Path:
    """The real q/u/v/tp files (linked) plus written t and z files, as one CDS download folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in REAL:
        if name not in skip:
            (folder / sample(name).name).symlink_to(sample(name))
    for var, da in synthetic_t_z().items():
        if f"pl_{var}" not in skip:
            write_packed(da.rename(var), folder / f"ERA5_2020-01-01_pl_{var}.nc")
    return folder

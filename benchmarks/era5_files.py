"""ERA5-like input as the Climate Data Store delivers it, for the memory benchmarks: many gigabytes in many files.

Run from the repository root::

    python benchmarks/era5_files.py DIR --years 4      # about 22 GB at the defaults (0.25°, 12-hourly, 11 levels)
    python benchmarks/era5_files.py DIR --years 1 --resolution 2.0

One netCDF file per month and per kind, named as below, in the CDS's naming:

- ``era5_pressure-levels_YYYY-MM.nc``: ``t`` (K), ``z`` (m2 s-2), ``q`` (kg kg-1), ``u``, ``v`` (m s-1) on
  ``valid_time, pressure_level, latitude, longitude``;
- ``era5_single-levels_YYYY-MM.nc``: ``tp`` (m, accumulated over the spacing ending at the time stamp) on
  ``valid_time, latitude, longitude``;

latitude descending, float32, uncompressed: the point is bytes on disk (zlib level 1 makes these noisy
fields a third smaller but writing ten times slower: a month at the defaults took 14 s for 0.31 GB
against 1.3 s for 0.47 GB). The fields are cheap, not physics: a few moving
waves on plausible vertical profiles, with small noise drawn from a fixed pool, and rain where the
waves are strong. Files are written a few time steps at a time, so memory stays bounded (tens of
MB) whatever the grid or the number of years; each file appears complete or not at all.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import netCDF4
import numpy as np
import pandas as pd
from harness import REPO  # noqa: F401  (puts the library on sys.path)
from tqdm.auto import tqdm

from convlstm.atomic import atomic_path

LEVELS = (1000, 925, 850, 700, 600, 500, 400, 300, 250, 200, 150)
#: (south, north), (west, east): the North Atlantic and Europe, sized so that 4 years at 0.25° are about 22 GB.
LAT, LON = (30.0, 65.0), (-30.0, 30.0)
GRAVITY = 9.80665
BLOCK_BYTES = 32 << 20  # time steps written at once: bounded memory, few write calls
_NOISE_POOL = 16
_EPOCH = pd.Timestamp("1970-01-01")

#: name: (long_name, units, standard_name)
PRESSURE_LEVEL_VARIABLES: dict[str, tuple[str, str, str]] = {
    "t": ("Temperature", "K", "air_temperature"),
    "z": ("Geopotential", "m2 s-2", "geopotential"),
    "q": ("Specific humidity", "kg kg-1", "specific_humidity"),
    "u": ("U component of wind", "m s-1", "eastward_wind"),
    "v": ("V component of wind", "m s-1", "northward_wind"),
}
SINGLE_LEVEL_VARIABLES = {"tp": ("Total precipitation", "m", "lwe_thickness_of_precipitation_amount")}
KINDS = {"pressure-levels": PRESSURE_LEVEL_VARIABLES, "single-levels": SINGLE_LEVEL_VARIABLES}


@dataclass(frozen=True)
class Grid:
    """Where the fields are given: latitude descending, as in ERA5 files."""

    lat: np.ndarray
    lon: np.ndarray
    levels: np.ndarray  # hPa

    @classmethod
    def make(cls, resolution: float, lat: tuple[float, float], lon: tuple[float, float], levels: tuple[int, ...]) -> Grid:
        """The points of the box every ``resolution`` degrees from its north-west corner (edges included when on them)."""
        (south, north), (west, east) = lat, lon
        points = lambda extent: np.arange(int(np.floor(extent / resolution + 1e-9)) + 1)  # noqa: E731
        return cls(lat=north - resolution * points(north - south), lon=west + resolution * points(east - west),
                   levels=np.asarray(levels, dtype=np.float64))

    def bytes_per_step(self) -> int:
        """float32 bytes one time step takes in both files."""
        cells = len(self.lat) * len(self.lon)
        return 4 * cells * (len(PRESSURE_LEVEL_VARIABLES) * len(self.levels) + len(SINGLE_LEVEL_VARIABLES))


def month_file(directory: Path, kind: str, month: pd.Period) -> Path:
    """A month's file of one kind, named so that a sorted listing is in time order."""
    return directory / f"era5_{kind}_{month.strftime('%Y-%m')}.nc"


def write_era5_like_files(
    directory: Path,
    years: int,
    *,
    start_year: int = 2001,
    resolution: float = 0.25,
    lat: tuple[float, float] = LAT,
    lon: tuple[float, float] = LON,
    levels: tuple[int, ...] = LEVELS,
    spacing_hours: int = 12,
    months: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[Path]:
    """Write ``years`` of ERA5-like files into ``directory``, one month at a time (see the module docstring).

    Parameters
    ----------
    directory : Path
        Created if missing; files of the same names are replaced.
    years : int
        Whole years from 1 January ``start_year`` 00 UTC.
    resolution : float
        Grid spacing in degrees; ``lat`` and ``lon`` are the box's (south, north) and (west, east) edges.
    levels : tuple of int
        Pressure levels in hPa, in the files' order.
    spacing_hours : int
        Hours between time stamps; ``tp`` is accumulated over them.
    months : int, optional
        Only the first ``months`` months (quick checks and tests).
    seed : int
        Same seed, same files.
    progress : bool
        Show a tqdm bar over the files.

    Returns
    -------
    list of Path
        The files, month by month (pressure levels, then single levels).
    """
    grid = Grid.make(resolution, lat, lon, levels)
    start = pd.Timestamp(f"{start_year}-01-01")
    end = start + pd.DateOffset(years=years) if months is None else start + pd.DateOffset(months=months)
    times = pd.date_range(start, end, freq=f"{spacing_hours}h", inclusive="left")
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((_NOISE_POOL, len(grid.lat), len(grid.lon)), dtype=np.float32)
    waves = Waves(grid, rng)
    month_of = times.to_period("M")
    paths: list[Path] = []
    with tqdm(total=len(KINDS) * len(month_of.unique()), unit="file", disable=not progress, dynamic_ncols=True) as bar:
        for month in month_of.unique():
            for kind, variables in KINDS.items():
                paths.append(month_file(directory, kind, month))
                _write_month(paths[-1], kind, variables, times[month_of == month], grid, waves, noise, spacing_hours, rng)
                bar.update()
    return paths


class Waves:
    """A few sinusoids moving eastward over the box: the weather the fields share."""

    def __init__(self, grid: Grid, rng: np.random.Generator, n_waves: int = 3) -> None:
        self.lat = np.deg2rad(grid.lat)[:, None].astype(np.float32)
        self.lon = np.deg2rad(grid.lon)[None, :].astype(np.float32)
        self.zonal = rng.integers(4, 10, n_waves).astype(np.float32)  # wavenumbers around the globe
        self.meridional = rng.uniform(3.0, 8.0, n_waves).astype(np.float32)
        self.speed = rng.uniform(0.3, 0.8, n_waves).astype(np.float32)  # radians of phase per day
        self.phase = rng.uniform(0.0, 2 * np.pi, n_waves).astype(np.float32)

    def at(self, days: float) -> np.ndarray:
        """``[lat, lon]`` in about -1..1 at ``days`` since the epoch: separable, so cheap per step."""
        out = np.zeros((self.lat.shape[0], self.lon.shape[1]), dtype=np.float32)
        for k, m, c, p in zip(self.zonal, self.meridional, self.speed, self.phase, strict=True):
            x = k * self.lon - np.float32((c * days) % (2 * np.pi)) + p
            out += (np.sin(x) * np.cos(m * self.lat)) / len(self.zonal) * 1.6
        return out


def _profiles(grid: Grid) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(base, wave amplitude) per variable, ``[level, lat, 1]``: a standard-atmosphere-like column."""
    p = grid.levels[:, None, None]
    height = 7400.0 * np.log(1013.25 / p)  # m
    colder_north = -0.5 * (grid.lat[None, :, None] - 30.0)  # K at the surface, less aloft
    t_gradient = colder_north * (0.3 + 0.7 * p / 1000.0)
    t = np.maximum(288.0 - 0.0065 * height, 216.65) + t_gradient
    q = 1.2e-2 * (p / 1000.0) ** 3 * np.exp(colder_north / 15.0)
    up = 1.0 - p / 1000.0
    zero = np.zeros_like(colder_north)
    as32 = lambda a: np.broadcast_to(a, (len(grid.levels), len(grid.lat), 1)).astype(np.float32)  # noqa: E731
    return {
        "t": (as32(t), as32(np.full_like(p, 5.0))),
        "z": (as32(GRAVITY * height + zero), as32(GRAVITY * (40.0 + 150.0 * up))),
        "q": (as32(q), as32(0.4 * q)),
        "u": (as32(5.0 + 15.0 * up + zero), as32(np.full_like(p, 10.0))),
        "v": (as32(zero), as32(np.full_like(p, 10.0))),
    }


def _fields(times: pd.DatetimeIndex, grid: Grid, waves: Waves, noise: np.ndarray, spacing_hours: int,
            rng: np.random.Generator, profiles: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every variable at ``times``: ``[time, level, lat, lon]`` (``tp``: ``[time, lat, lon]``), float32."""
    days = (times - _EPOCH) / pd.Timedelta(days=1)
    wave = np.stack([waves.at(d) for d in days])[:, None]  # [time, 1, lat, lon]
    out: dict[str, np.ndarray] = {}
    for i, (name, (base, amplitude)) in enumerate(profiles.items()):
        shifted = np.roll(wave, 3 * i, axis=-1)  # each variable a little out of phase with the others
        picked = noise[rng.integers(0, _NOISE_POOL, (len(times), len(grid.levels)))]
        field = base + amplitude * (shifted + np.float32(0.05) * picked)
        out[name] = np.clip(field, 1e-5, 1.5e-2, out=field) if name == "q" else field
    rain_mm = 20.0 * np.maximum(wave[:, 0] - 0.5, 0.0) * spacing_hours / 12.0
    out["tp"] = (rain_mm / 1000.0).astype(np.float32)
    return out


def _write_month(path: Path, kind: str, variables: dict[str, tuple[str, str, str]], times: pd.DatetimeIndex,
                 grid: Grid, waves: Waves, noise: np.ndarray, spacing_hours: int, rng: np.random.Generator) -> None:
    """One month's file of one kind, ``BLOCK_BYTES`` of time steps at a time."""
    levels = kind == "pressure-levels"
    dims = ("valid_time", "pressure_level", "latitude", "longitude") if levels else ("valid_time", "latitude", "longitude")
    profiles = _profiles(grid) if levels else {}
    step_bytes = 4 * len(grid.lat) * len(grid.lon) * (len(grid.levels) if levels else 1) * len(variables)
    block = max(1, BLOCK_BYTES // step_bytes)
    with atomic_path(path) as tmp, netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.setncatts({"Conventions": "CF-1.7", "institution": "synthetic, ERA5-like (convlstm benchmarks)",
                      "history": f"written by benchmarks/era5_files.py, {spacing_hours}-hourly"})
        _coordinates(nc, times, grid, levels)
        for name, (long_name, units, standard_name) in variables.items():
            var = nc.createVariable(name, "f4", dims, fill_value=np.float32(np.nan))
            var.setncatts({"long_name": long_name, "units": units, "standard_name": standard_name})
        if not levels:
            nc["tp"].setncattr("comment", f"accumulated over the {spacing_hours} h ending at valid_time")
        for start in range(0, len(times), block):
            chunk = times[start:start + block]
            fields = _fields(chunk, grid, waves, noise, spacing_hours, rng, profiles)
            for name in variables:
                nc[name][start:start + len(chunk)] = fields[name]


def _coordinates(nc: netCDF4.Dataset, times: pd.DatetimeIndex, grid: Grid, levels: bool) -> None:
    nc.createDimension("valid_time", len(times))
    time_var = nc.createVariable("valid_time", "i8", ("valid_time",))
    time_var.setncatts({"long_name": "time", "standard_name": "time", "units": "seconds since 1970-01-01",
                        "calendar": "proleptic_gregorian"})
    time_var[:] = ((times - _EPOCH) // pd.Timedelta(seconds=1)).to_numpy()
    if levels:
        nc.createDimension("pressure_level", len(grid.levels))
        level = nc.createVariable("pressure_level", "f8", ("pressure_level",))
        level.setncatts({"long_name": "pressure", "units": "hPa", "standard_name": "air_pressure", "positive": "down"})
        level[:] = grid.levels
    for name, values, units in (("latitude", grid.lat, "degrees_north"), ("longitude", grid.lon, "degrees_east")):
        nc.createDimension(name, len(values))
        coord = nc.createVariable(name, "f8", (name,))
        coord.setncatts({"long_name": name, "units": units, "standard_name": name})
        coord[:] = values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where the files go (created if missing)")
    parser.add_argument("--years", type=int, default=1)
    parser.add_argument("--months", type=int, help="only the first N months (a quick check)")
    parser.add_argument("--start-year", type=int, default=2001)
    parser.add_argument("--resolution", type=float, default=0.25, help="grid spacing in degrees")
    parser.add_argument("--spacing-hours", type=int, default=12)
    args = parser.parse_args(argv)
    grid = Grid.make(args.resolution, LAT, LON, LEVELS)
    per_year = grid.bytes_per_step() * 365.25 * 24 / args.spacing_hours
    print(f"{len(grid.lat)} x {len(grid.lon)} cells, {len(grid.levels)} levels, {args.spacing_hours}-hourly: "
          f"{per_year / 1e9:.2f} GB per year, about {per_year * (args.months / 12 if args.months else args.years) / 1e9:.1f} GB in all")
    began = time.perf_counter()
    paths = write_era5_like_files(args.directory, args.years, start_year=args.start_year, resolution=args.resolution,
                                  spacing_hours=args.spacing_hours, months=args.months, progress=True)
    seconds = time.perf_counter() - began
    size = sum(path.stat().st_size for path in paths)
    print(f"{len(paths)} files, {size / 1e9:.2f} GB in {seconds:.1f} s ({size / 1e6 / seconds:.0f} MB/s) in {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

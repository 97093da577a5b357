"""The physics of the demo atmosphere (what it holds is described in ``convlstm.data.demo``): background
state, weather systems, convection, smooth noise, and the time loop that combines them. Everything is in
degrees and 12-hour steps, and drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from convlstm.config import DemoAtmosphere
from convlstm.data.schema import LEVEL_VARIABLES, PRECIPITATION

_R_DRY = 287.05  # J kg-1 K-1
_GRAVITY = 9.80665  # m s-2
_OMEGA = 7.292e-5  # s-1, Earth's rotation
_METRES_PER_DEGREE = 111_195.0
_LAPSE_EXPONENT = _R_DRY * 0.0065 / _GRAVITY  # T ∝ p**0.19 is a 6.5 K/km lapse rate
_HYPSOMETRIC = _R_DRY / _GRAVITY  # m K-1

# Weather systems (degrees, 12-hour steps).
_BIRTH_RATE = 0.55  # cyclones born per step (for a 15°-tall domain; scaled by latitude span)
_SPIN_UP_STEPS = 40  # systems born before the start are already on their way at step 0
_RAIN_SUBSTEPS = (5.0 / 6.0, 0.5, 1.0 / 6.0)  # fractions of a step before t at which rain is sampled
_SYSTEM_RAIN_THRESHOLD = 1.0  # mm per step subtracted from smooth rain: makes dry cells exactly dry
_CONVECTIVE_RAIN_THRESHOLD = 1.0
_RAIN_SATURATION = 250.0  # mm: rain r becomes r / (1 + r / 250), taming the product of random factors
# Smooth noise: random values on a coarse node grid, spread with Gaussian kernels, AR(1) in time.
_NOISE_SPACING = 3.0  # degrees between nodes
_NOISE_PADDING = 6.0
_NOISE_KERNEL = 3.0
_NOISE_PERSISTENCE = 0.75  # correlation from one step to the next


def _coordinates(atmosphere: DemoAtmosphere) -> dict[str, Any]:
    """The grid: 12-hourly times, pressure levels (hPa), latitudes and longitudes (degrees)."""
    def axis(lo: float, hi: float) -> np.ndarray:
        n = int(round((hi - lo) / atmosphere.resolution))
        return np.round(lo + atmosphere.resolution * np.arange(n + 1), 9)

    return {"time": pd.date_range(atmosphere.start, periods=atmosphere.n_steps, freq="12h"),
            "level": np.asarray(atmosphere.levels, dtype=np.float64),
            "lat": axis(*atmosphere.lat_range), "lon": axis(*atmosphere.lon_range)}


# ----------------------------------------------------------------------------------------- background


def _season(times: pd.DatetimeIndex) -> np.ndarray:
    """+1 in mid-July, -1 in mid-January."""
    day = times.day_of_year.to_numpy() - 1 + times.hour.to_numpy() / 24.0
    return np.cos(2.0 * np.pi * (day - 196.0) / 365.25)


def _background(s: float, lat: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Zonal-mean state for season ``s``: arrays (level, lat), plus the 1000-hPa height (lat,)."""
    dlat = np.clip(lat - 25.0, -20.0, 55.0)
    t_surface = 297.0 - 0.7 * dlat + np.clip(4.5 + 0.45 * dlat, 1.0, 20.0) * s
    t_tropopause = 200.0 + np.clip(dlat, -10.0, 20.0)
    t_free = t_surface[None, :] * (p[:, None] / 1000.0) ** _LAPSE_EXPONENT
    width = 2.0  # smooth maximum: the lapse rate fades into an isothermal stratosphere
    tem = t_tropopause[None, :] + width * np.logaddexp(0.0, (t_free - t_tropopause[None, :]) / width)
    z1000 = 110.0 - (25.0 + 2.5 * np.clip(dlat, -10.0, 30.0)) * s  # high pressure over the winter continent
    jet_lat, jet_speed = 35.0 + 6.0 * s, 38.0 - 17.0 * s
    jet = np.exp(-(((lat - jet_lat) / 9.0) ** 2))[None, :] * np.exp(-((np.log(p / 230.0) / 0.8) ** 2))[:, None]
    u = 2.0 + jet_speed * jet
    v = np.broadcast_to(2.0 * s * (p[:, None] / 1000.0) ** 3, tem.shape)  # monsoon: southerly summer, northerly winter
    depression_surface = np.clip(4.0 + 0.3 * dlat - 2.5 * s, 1.0, 20.0)
    depression = depression_surface[None, :] + 22.0 * np.clip(1.0 - p[:, None] / 1000.0, 0.0, 1.0) ** 1.3
    return {"TEM": tem, "z1000": z1000, "t_surface": t_surface, "U": u, "V": v, "depression": depression}


def _hypsometric(tem: np.ndarray, p: np.ndarray, z_bottom: np.ndarray) -> np.ndarray:
    """Heights of the levels ``p`` from temperatures (level, ...) and the height of the first level."""
    log_p = np.log(p)
    shape = (-1,) + (1,) * (tem.ndim - 1)
    layers = _HYPSOMETRIC * 0.5 * (tem[1:] + tem[:-1]) * (log_p[:-1] - log_p[1:]).reshape(shape)
    return np.concatenate([z_bottom[None] * np.ones_like(tem[:1]), z_bottom[None] + np.cumsum(layers, axis=0)], axis=0)


# ----------------------------------------------------------------------------------------- weather systems


@dataclass
class _Systems:
    """All cyclones of the run, one array entry each (positions in degrees, times in steps)."""

    birth: np.ndarray
    life: np.ndarray
    lon0: np.ndarray
    lat0: np.ndarray
    speed: np.ndarray
    drift: np.ndarray
    strength: np.ndarray
    rain_factor: np.ndarray
    radius: np.ndarray
    band_angle: np.ndarray
    band_length: np.ndarray
    band_width: np.ndarray

    def select(self, index: np.ndarray) -> "_Systems":
        return _Systems(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})


def _draw_systems(rng: np.random.Generator, n_steps: int, times_season: np.ndarray, atmosphere: DemoAtmosphere) -> _Systems:
    """Poisson births over the run (and a spin-up before it) with random tracks and properties."""
    lat_lo, lat_hi = atmosphere.lat_range
    lon_lo, lon_hi = atmosphere.lon_range
    span = n_steps + _SPIN_UP_STEPS
    rate = _BIRTH_RATE * (lat_hi - lat_lo + 6.0) / 21.0
    n = int(rng.poisson(rate * span))
    birth = np.sort(rng.uniform(-_SPIN_UP_STEPS, n_steps, n))
    season = np.interp(birth, np.arange(n_steps), times_season)
    return _Systems(
        birth=birth,
        life=2.0 + rng.gamma(4.0, 1.6, n),  # steps: mean ~4.2 days
        lon0=rng.uniform(lon_lo - 15.0, lon_lo + 0.45 * (lon_hi - lon_lo), n),
        lat0=rng.uniform(lat_lo - 3.0, lat_hi + 3.0, n),
        speed=np.clip(rng.normal(7.0 - 1.2 * season, 1.0), 4.5, 10.5),  # faster under the winter jet
        drift=np.clip(rng.normal(0.3, 0.7, n), -2.0, 2.0),
        strength=np.clip(rng.lognormal(0.0, 0.3, n), 0.4, 2.0),
        rain_factor=np.minimum(rng.lognormal(0.0, 0.45, n), 2.5),
        radius=rng.uniform(3.5, 5.5, n),
        band_angle=np.deg2rad(rng.uniform(15.0, 45.0, n)),
        band_length=rng.uniform(6.0, 12.0, n),
        band_width=rng.uniform(0.8, 1.4, n),
    )


def _envelope(age: np.ndarray, life: np.ndarray) -> np.ndarray:
    """Intensity over a system's life: quick growth to a peak at 35 % of its life, slow decay; 0 outside."""
    frac = np.clip(age / life, 0.0, 1.0)
    grow = np.sin(0.5 * np.pi * np.minimum(frac / 0.35, 1.0))
    decay = np.cos(0.5 * np.pi * np.clip((frac - 0.35) / 0.65, 0.0, 1.0))
    return np.where((age > 0.0) & (age < life), grow * decay, 0.0)


def _moisture_factor(dew_point: np.ndarray) -> np.ndarray:
    """How much rain the low-level moisture supports: ~7 %/K (Clausius-Clapeyron), 1 at 288 K, bounded."""
    return np.clip(np.exp(0.065 * (dew_point - 288.0)), 0.15, 2.5)


def _gauss(offset: np.ndarray, radius: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * (offset / radius) ** 2)


@dataclass(frozen=True)
class _VerticalProfiles:
    """How a system's anomalies vary with pressure (one value per level)."""

    height: np.ndarray  # m: depth of a unit-strength low, ~40 m at 1000 hPa, deepest (~110 m) near 300 hPa
    temperature: np.ndarray  # K: amplitude of the warm/cold dipole, largest in the lower troposphere
    tilt: np.ndarray  # degrees: the upper trough lags west of the surface low
    widening: np.ndarray  # factor: upper troughs are broader

    @classmethod
    def of(cls, p: np.ndarray) -> "_VerticalProfiles":
        height = 30.0 + 80.0 * np.exp(-((np.log(p / 300.0) / 0.8) ** 2))
        temperature = 4.0 * (0.25 + 0.75 * np.exp(-((np.log(p / 800.0) / 0.6) ** 2)))
        height_fraction = np.clip(1.0 - p / 1000.0, 0.0, 1.0)
        return cls(height, temperature, 3.0 * height_fraction, 1.0 + 0.5 * height_fraction)


def _system_anomalies(
    sy: _Systems, t: int, lat: np.ndarray, lon: np.ndarray, profiles: _VerticalProfiles
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The active systems' fields at step t, summed over systems (separable Gaussians, no grid loop).

    Returns the height anomaly (level, lat, lon) in m, the unit warm-ahead/cold-behind dipole (lat, lon)
    and the moisture anomaly ahead of the lows (lat, lon, 0..1).
    """
    age = t - sy.birth
    x = sy.lon0 + sy.speed * age
    y = sy.lat0 + sy.drift * age
    amp = sy.strength * _envelope(age, sy.life)
    cos_sys = np.cos(np.deg2rad(y))
    r = sy.radius
    r_aloft = r[:, None] * profiles.widening[None, :]  # (k, level)
    dx = (lon[None, None, :] - x[:, None, None] + profiles.tilt[None, :, None]) * cos_sys[:, None, None]  # (k, level, lon)
    gy_aloft = _gauss(lat[None, None, :] - y[:, None, None], r_aloft[:, :, None])  # (k, level, lat)
    trough = np.einsum("k,l,kly,klx->lyx", -amp, profiles.height, gy_aloft, _gauss(dx, r_aloft[:, :, None]))
    gy = _gauss(lat[None, :] - y[:, None], r[:, None])  # (k, lat)
    dx0 = (lon[None, :] - x[:, None]) * cos_sys[:, None]  # (k, lon)
    dipole = np.einsum("k,ky,kx->yx", amp, gy, dx0 / r[:, None] * _gauss(dx0, r[:, None]))
    moist = np.einsum(
        "k,ky,kx->yx",
        np.minimum(amp, 1.5),
        _gauss(lat[None, :] - (y[:, None] - 1.5), 1.2 * r[:, None]),  # south-east of the centre
        _gauss(dx0 - 2.5 * cos_sys[:, None], 1.2 * r[:, None]),
    )
    return trough, dipole, np.clip(moist, 0.0, 1.0)


# ----------------------------------------------------------------------------------------- smooth noise


class _SmoothNoise:
    """Spatially smooth, temporally AR(1) Gaussian noise with unit variance, defined in degrees.

    Node values on a coarse grid are spread to the output grid with separable Gaussian kernels
    (rows normalised so the variance is 1 everywhere) and mixed between nearby pressure levels.
    """

    def __init__(
        self, lat: np.ndarray, lon: np.ndarray, lat_range: tuple[float, float], lon_range: tuple[float, float], p: np.ndarray
    ) -> None:
        def weights(axis: np.ndarray, lo: float, hi: float) -> np.ndarray:
            nodes = np.arange(lo - _NOISE_PADDING, hi + _NOISE_PADDING + 1e-9, _NOISE_SPACING)
            w = _gauss(axis[:, None] - nodes[None, :], np.float64(_NOISE_KERNEL))
            return w / np.sqrt((w**2).sum(axis=1, keepdims=True))

        self.wy = weights(lat, *lat_range)
        self.wx_t = weights(lon, *lon_range).T.copy()
        log_p = np.log(p)
        mix = np.exp(-(((log_p[:, None] - log_p[None, :]) / 0.35) ** 2))
        self.vertical = mix / np.sqrt((mix**2).sum(axis=1, keepdims=True))
        self.node_shape = (self.wy.shape[1], self.wx_t.shape[0])

    def step(self, rng: np.random.Generator, state: np.ndarray) -> np.ndarray:
        return _NOISE_PERSISTENCE * state + math.sqrt(1.0 - _NOISE_PERSISTENCE**2) * rng.standard_normal(state.shape)

    def levels(self, nodes: np.ndarray) -> np.ndarray:
        """(level, node_y, node_x) → vertically mixed (level, lat, lon) field."""
        mixed = np.tensordot(self.vertical, nodes, axes=1)
        return self.wy @ mixed @ self.wx_t

    def surface(self, nodes: np.ndarray) -> np.ndarray:
        return self.wy @ nodes @ self.wx_t


def simulate(atmosphere: DemoAtmosphere) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Make the demo's weather (see ``convlstm.data.demo``): rain upstream foretells, and rain nothing foretells.

    Parameters
    ----------
    atmosphere : DemoAtmosphere
        The settings; the same settings give bit-identical arrays.

    Returns
    -------
    coordinates : dict
        ``time`` (a 12-hourly ``DatetimeIndex``), ``level`` (hPa), ``lat`` and ``lon`` (degrees), float64.
    fields : dict
        float32 arrays: ``DPT, GPH, TEM, U, V`` (time, level, lat, lon) and ``precipitation`` (time, lat, lon).
    """
    grid = _coordinates(atmosphere)
    times, p, lat, lon = grid["time"], grid["level"], grid["lat"], grid["lon"]
    nt, nl, ny, nx = len(times), len(p), len(lat), len(lon)
    lat_lo, lat_hi = atmosphere.lat_range
    lon_lo, lon_hi = atmosphere.lon_range

    root = np.random.default_rng(atmosphere.seed)
    system_rng, convection_rng, noise_rng = root.spawn(3)
    seasons = _season(times)
    systems = _draw_systems(system_rng, nt, seasons, atmosphere)
    noise = _SmoothNoise(lat, lon, atmosphere.lat_range, atmosphere.lon_range, p)
    noise_state = noise_rng.standard_normal((5 * nl + 1, *noise.node_shape))  # TEM, depression, GPH, U, V; rain texture

    out = {var: np.empty((nt, nl, ny, nx), dtype=np.float32) for var in LEVEL_VARIABLES}
    out[PRECIPITATION] = np.empty((nt, ny, nx), dtype=np.float32)

    profiles = _VerticalProfiles.of(p)
    temperature_profile = profiles.temperature
    # Thickness the warm/cold dipole adds between the first level and each level (m per K of dipole).
    dipole_thickness = _hypsometric(temperature_profile, p, np.zeros(()))
    moist_profile = 0.75 * (0.6 + 0.4 * np.clip(p / 1000.0, 0.0, 1.0) ** 2)
    noise_t_amp = 0.8
    noise_z_amp = (5.0 + 12.0 * np.clip(1.0 - p / 1000.0, 0.0, 1.0))[:, None, None]
    coriolis = 2.0 * _OMEGA * np.sin(np.deg2rad(np.maximum(lat, 20.0)))[None, :, None]
    coslat = np.cos(np.deg2rad(lat))[None, :, None]
    y_metres, x_metres = lat * _METRES_PER_DEGREE, lon * _METRES_PER_DEGREE
    area = (lat_hi - lat_lo + 2.0) * (lon_hi - lon_lo + 2.0)
    sys_end = systems.birth + systems.life
    diurnal = np.where(times.hour.to_numpy() == 12, 1.35, 0.65)  # the 00-12 UTC step is Asian daytime

    for t in range(nt):
        s = float(seasons[t])
        bg = _background(s, lat, p)
        if t:
            noise_state = noise.step(noise_rng, noise_state)
        noise_t, noise_dep, noise_z, noise_u, noise_v = (noise.levels(noise_state[i * nl : (i + 1) * nl]) for i in range(5))
        texture = noise.surface(noise_state[5 * nl])

        # Systems alive at some moment of the step (t-1, t]; their state is taken at t.
        sy = systems.select(np.flatnonzero((systems.birth < t) & (sys_end > t - 1)))
        trough, dipole, moist = _system_anomalies(sy, t, lat, lon, profiles)

        tem = bg["TEM"][:, :, None] + temperature_profile[:, None, None] * dipole[None] + noise_t_amp * noise_t
        z_anomaly = trough + dipole_thickness[:, None, None] * dipole[None] + noise_z_amp * noise_z
        z_bottom = bg["z1000"] + _HYPSOMETRIC * bg["t_surface"] * math.log(1000.0 / p[0])
        gph = _hypsometric(bg["TEM"], p, z_bottom)[:, :, None] + z_anomaly
        # Geostrophic winds of the height anomaly: cyclonic around lows in the northern hemisphere.
        dz_dy = np.gradient(z_anomaly, y_metres, axis=1)
        dz_dx = np.gradient(z_anomaly, x_metres, axis=2) / coslat
        u = bg["U"][:, :, None] - _GRAVITY / coriolis * dz_dy + 1.5 * noise_u
        v = bg["V"][:, :, None] + _GRAVITY / coriolis * dz_dx + 1.5 * noise_v
        depression = (bg["depression"][:, :, None] * (1.0 - moist_profile[:, None, None] * moist[None])
                      * np.exp(0.2 * noise_dep - 0.02))
        tem32 = tem.astype(np.float32)
        out["TEM"][t] = tem32
        out["DPT"][t] = tem32 - np.clip(depression, 0.3, 40.0).astype(np.float32)
        out["GPH"][t], out["U"][t], out["V"][t] = gph, u, v

        # Rain: moisture (Clausius-Clapeyron-like in the lowest level's dew point) times system rain.
        moisture = _moisture_factor(out["DPT"][t, 0].astype(np.float64))
        system_rain = _system_rain(sy, t, lat, lon) * moisture * np.exp(0.35 * texture - 0.06)
        rain = np.maximum(system_rain - _SYSTEM_RAIN_THRESHOLD, 0.0)
        rain += _convective_rain(convection_rng, s, diurnal[t], area, lat, lon, atmosphere)
        out[PRECIPITATION][t] = rain / (1.0 + rain / _RAIN_SATURATION)
    return grid, out


def _system_rain(sy: _Systems, t: int, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Rain (mm per step, before moisture) of the systems over the step ending at t: core + cold-front band."""
    frac = np.asarray(_RAIN_SUBSTEPS)
    age = (t - sy.birth)[:, None] - frac[None, :]  # (k, substep)
    weight = (sy.rain_factor * sy.strength)[:, None] * _envelope(age, sy.life[:, None]) / len(frac)
    keep = weight > 0.0
    k_index = np.nonzero(keep)[0]
    if len(k_index) == 0:
        return np.zeros((len(lat), len(lon)))
    age, weight = age[keep], weight[keep]
    x = sy.lon0[k_index] + sy.speed[k_index] * age
    y = sy.lat0[k_index] + sy.drift[k_index] * age
    cos_sys = np.cos(np.deg2rad(y))
    r_core = 0.45 * sy.radius[k_index]
    ax, ay = x + 1.5, y + 0.5
    px = (lon[None, None, :] - ax[:, None, None]) * cos_sys[:, None, None]  # (K, 1, lon), degrees east of the anchor
    py = lat[None, :, None] - ay[:, None, None]  # (K, lat, 1)
    core = np.einsum("k,ky,kx->yx", 13.0 * weight, _gauss(py[:, :, 0], r_core[:, None]), _gauss(px[:, 0, :], r_core[:, None]))
    # The cold front trails south-south-west of the low: distance of each cell from that segment.
    angle, length, width = sy.band_angle[k_index], sy.band_length[k_index], sy.band_width[k_index]
    ux, uy = -np.sin(angle)[:, None, None], -np.cos(angle)[:, None, None]
    along = np.clip(px * ux + py * uy, 0.0, length[:, None, None])
    dist2 = (px - along * ux) ** 2 + (py - along * uy) ** 2
    band = np.exp(-0.5 * dist2 / width[:, None, None] ** 2) * (1.0 - 0.5 * along / length[:, None, None])
    return core + np.einsum("k,kyx->yx", 9.0 * weight, band)


def _convective_rain(
    rng: np.random.Generator, s: float, diurnal: float, area: float, lat: np.ndarray, lon: np.ndarray, atmosphere: DemoAtmosphere
) -> np.ndarray:
    """One-step convective cells: random places and gamma intensities, mostly in summer afternoons."""
    density = (0.4 + 3.0 * max(s, 0.0) ** 1.5) * diurnal  # cells per 100 square degrees per step
    n = int(rng.poisson(density * area / 100.0))
    cy = rng.uniform(atmosphere.lat_range[0] - 1.0, atmosphere.lat_range[1] + 1.0, n)
    cx = rng.uniform(atmosphere.lon_range[0] - 1.0, atmosphere.lon_range[1] + 1.0, n)
    radius = rng.uniform(0.5, 0.9, n)
    peak = rng.gamma(2.0, 4.0, n)
    dlat = np.clip(cy - 25.0, -20.0, 55.0)
    dew_surface = 297.0 - 0.7 * dlat + np.clip(4.5 + 0.45 * dlat, 1.0, 20.0) * s - np.clip(4.0 + 0.3 * dlat - 2.5 * s, 1.0, 20.0)
    peak = peak * _moisture_factor(dew_surface)
    gy = _gauss(lat[None, :] - cy[:, None], radius[:, None])
    gx = _gauss((lon[None, :] - cx[:, None]) * np.cos(np.deg2rad(cy))[:, None], radius[:, None])
    return np.maximum(np.einsum("k,ky,kx->yx", peak, gy, gx) - _CONVECTIVE_RAIN_THRESHOLD, 0.0)



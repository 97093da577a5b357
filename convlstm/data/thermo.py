"""Dew point from the humidity variables reanalyses ship (ERA5 has `r` or `q`, not dew point).

The Magnus formula with Bolton's (1980) constants is what MetPy and most reanalysis tools use; it is
three lines on xarray/dask objects, so lazily opened data stays lazy (MetPy would pull in pint and
compute eagerly for the same two formulas).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

_MAGNUS_A = 17.67
_MAGNUS_B_C = 243.5  # °C
_E0_HPA = 6.112  # saturation vapour pressure at 0 °C
_EPSILON = 0.622  # molar mass ratio water / dry air
_KELVIN = 273.15
_MIN_VAPOUR_PRESSURE_HPA = 1e-6  # dry air (RH = 0) would give log(0)


def _dew_point_from_vapour_pressure(e_hpa: xr.DataArray) -> xr.DataArray:
    """Invert the Magnus formula: vapour pressure (hPa) → dew point (K)."""
    ratio = np.log(e_hpa.clip(min=_MIN_VAPOUR_PRESSURE_HPA) / _E0_HPA)
    return _MAGNUS_B_C * ratio / (_MAGNUS_A - ratio) + _KELVIN


def saturation_vapour_pressure(temperature_k: xr.DataArray) -> xr.DataArray:
    """Saturation vapour pressure over water (Magnus formula): what relative humidity is a percentage of.

    Parameters
    ----------
    temperature_k : xarray.DataArray
        Temperature (K).

    Returns
    -------
    xarray.DataArray
        Saturation vapour pressure (hPa).
    """
    t_c = temperature_k - _KELVIN
    return _E0_HPA * np.exp(_MAGNUS_A * t_c / (t_c + _MAGNUS_B_C))


def dew_point_from_relative_humidity(temperature_k: xr.DataArray, rh_percent: xr.DataArray) -> xr.DataArray:
    """Dew point from relative humidity, for files that ship ``r`` (ERA5) rather than dew point.

    Parameters
    ----------
    temperature_k : xarray.DataArray
        Temperature (K).
    rh_percent : xarray.DataArray
        Relative humidity (%); 0 is treated as a tiny vapour pressure, not log(0).

    Returns
    -------
    xarray.DataArray
        Dew point (K).
    """
    return _dew_point_from_vapour_pressure(saturation_vapour_pressure(temperature_k) * rh_percent / 100.0)


def dew_point_from_specific_humidity(pressure_hpa: xr.DataArray, q_kg_per_kg: xr.DataArray) -> xr.DataArray:
    """Dew point from specific humidity, for files that ship ``q`` (ERA5): e = p q / (ε + (1 − ε) q).

    Parameters
    ----------
    pressure_hpa : xarray.DataArray
        Pressure (hPa), e.g. the ``level`` coordinate.
    q_kg_per_kg : xarray.DataArray
        Specific humidity (kg/kg).

    Returns
    -------
    xarray.DataArray
        Dew point (K).
    """
    e_hpa = pressure_hpa * q_kg_per_kg / (_EPSILON + (1.0 - _EPSILON) * q_kg_per_kg)
    return _dew_point_from_vapour_pressure(e_hpa)

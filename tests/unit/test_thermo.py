"""Dew point from relative / specific humidity (Magnus formula, Bolton constants)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm.data.thermo import (
    dew_point_from_relative_humidity,
    dew_point_from_specific_humidity,
    saturation_vapour_pressure,
)

K = 273.15


def _da(values) -> xr.DataArray:
    return xr.DataArray(np.asarray(values, dtype=np.float64), dims="x")


def test_saturation_vapour_pressure_known_values():
    # 6.112 hPa at 0 °C by construction; ~23.37 hPa at 20 °C; ~42.4 hPa at 30 °C (Bolton 1980).
    es = saturation_vapour_pressure(_da([K, K + 20.0, K + 30.0])).values
    np.testing.assert_allclose(es, [6.112, 23.37, 42.43], atol=0.05)


def test_dew_point_from_relative_humidity_known_values():
    td = dew_point_from_relative_humidity(_da([K + 20.0, K + 20.0, K + 0.0]), _da([50.0, 100.0, 100.0])).values
    assert abs((td[0] - K) - 9.26) < 0.05  # T = 20 °C, RH = 50 % → Td ≈ 9.26 °C
    np.testing.assert_allclose(td[1:], [K + 20.0, K], atol=1e-9)  # saturated air: Td = T


def test_dry_air_is_finite_and_very_cold():
    td = dew_point_from_relative_humidity(_da([K + 20.0]), _da([0.0])).values
    assert np.all(np.isfinite(td))
    assert td[0] < K - 80.0


def test_lazy_input_stays_lazy():
    t = _da(np.full(10, K + 15.0)).chunk({"x": 5})
    rh = _da(np.full(10, 70.0)).chunk({"x": 5})
    td = dew_point_from_relative_humidity(t, rh)
    assert td.chunks is not None
    assert np.all(td.values < K + 15.0)


@settings(max_examples=30, deadline=None)
@given(
    t_c=st.floats(-40.0, 40.0),
    rh=st.floats(1.0, 100.0),
)
def test_relative_humidity_round_trip(t_c, rh):
    """RH computed back from (T, Td) equals the input RH, and Td <= T."""
    t = _da([K + t_c])
    td = dew_point_from_relative_humidity(t, _da([rh]))
    assert td.values[0] <= t.values[0] + 1e-9
    rh_back = 100.0 * saturation_vapour_pressure(td) / saturation_vapour_pressure(t)
    np.testing.assert_allclose(rh_back.values, [rh], rtol=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    td_c=st.floats(-40.0, 30.0),
    p=st.sampled_from([1000.0, 850.0, 700.0, 500.0, 300.0]),
)
def test_specific_humidity_round_trip(td_c, p):
    """q from a known dew point (q = ε e / (p − (1 − ε) e)) gives that dew point back."""
    e = saturation_vapour_pressure(_da([K + td_c])).values[0]
    q = 0.622 * e / (p - (1.0 - 0.622) * e)
    td = dew_point_from_specific_humidity(_da([p]), _da([q])).values[0]
    assert abs(td - (K + td_c)) < 1e-6


def test_specific_humidity_more_moisture_higher_dew_point():
    td = dew_point_from_specific_humidity(_da([850.0, 850.0, 500.0]), _da([0.002, 0.010, 0.002])).values
    assert td[0] < td[1]
    assert td[2] < td[0]  # same q at lower pressure: lower vapour pressure, lower dew point

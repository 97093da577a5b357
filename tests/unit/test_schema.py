"""open_dataset: name / unit / orientation mapping (library, descriptive and ERA5 files) and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from tests.helpers import assert_library_layout, make_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.schema import DIMS, PRECIPITATION, VARIABLES, open_dataset
from convlstm.data.stacking import stack_channels
from convlstm.data.thermo import saturation_vapour_pressure
from convlstm.errors import ConfigError, DataError

G = 9.80665


def assert_same_fields(out: xr.Dataset, ref: xr.Dataset, dpt_atol: float = 1e-4) -> None:
    np.testing.assert_array_equal(out["lat"].values, ref["lat"].values)
    np.testing.assert_array_equal(out["lon"].values, ref["lon"].values)
    np.testing.assert_array_equal(out["level"].values, ref["level"].values)
    np.testing.assert_array_equal(out["time"].values, ref["time"].values)
    np.testing.assert_allclose(out["TEM"].values, ref["TEM"].values, rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["DPT"].values, ref["DPT"].values, rtol=0, atol=dpt_atol)
    np.testing.assert_allclose(out["GPH"].values, ref["GPH"].values, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(out["U"].values, ref["U"].values, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["V"].values, ref["V"].values, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out[PRECIPITATION].values, ref[PRECIPITATION].values, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------- names


def test_standard_names_from_file(tmp_path):
    ref = make_dataset(n_time=6)
    path = tmp_path / "standard.nc"
    ref.to_netcdf(path)
    out = open_dataset(path)
    assert_library_layout(out)
    assert_same_fields(out, ref, dpt_atol=0)
    assert out.attrs["convlstm_source"] == str(path)


def test_opening_an_opened_dataset_checks_nothing_twice(tmp_path):
    path = tmp_path / "standard.nc"
    make_dataset(n_time=6).to_netcdf(path)
    opened = open_dataset(path)
    assert open_dataset(opened) is opened
    part = opened.isel(time=slice(2, 5))  # a selection is still in the layout
    assert open_dataset(part) is part
    renamed = opened.rename(DPT="dew_point").drop_attrs()  # anything else is opened and checked as usual
    assert_library_layout(open_dataset(renamed))


def test_descriptive_names(tmp_path):
    ref = make_dataset(n_time=5)
    renamed = ref.rename(DPT="dew_point", GPH="geopotential_height", TEM="temperature", U="u_wind", V="v_wind")
    for var in renamed.data_vars:
        renamed[var].attrs = {}  # names alone must be enough
    path = tmp_path / "descriptive.nc"
    renamed.to_netcdf(path)
    out = open_dataset(path)
    assert_library_layout(out)
    assert_same_fields(out, ref, dpt_atol=0)


def test_variable_found_by_cf_standard_name():
    ref = make_dataset(n_time=4)
    ds = ref.rename(TEM="foo", precipitation="bar")
    ds["foo"].attrs = {"standard_name": "air_temperature", "units": "K"}
    ds["bar"].attrs = {"standard_name": "lwe_thickness_of_precipitation_amount", "units": "mm"}
    out = open_dataset(ds)
    np.testing.assert_array_equal(out["TEM"].values, ref["TEM"].values)
    np.testing.assert_array_equal(out[PRECIPITATION].values, ref[PRECIPITATION].values)


# ----------------------------------------------------------------------------------------- ERA5


def make_era5(ref: xr.Dataset, humidity: str = "r", reverse_levels: bool = False) -> xr.Dataset:
    """The reference fields as the Copernicus Climate Data Store ships ERA5 (netCDF, 2024+ layout)."""
    ref = ref.isel(lat=slice(None, None, -1))  # ERA5 latitude runs north to south
    if reverse_levels:
        ref = ref.isel(level=slice(None, None, -1))
    t, td = ref["TEM"].astype(np.float64), ref["DPT"].astype(np.float64)
    level_dims = ("valid_time", "pressure_level", "latitude", "longitude")
    data_vars = {
        "t": (level_dims, t.values.astype(np.float32),
              {"units": "K", "long_name": "Temperature", "standard_name": "air_temperature", "GRIB_paramId": 130}),
        "z": (level_dims, (ref["GPH"].astype(np.float64) * G).values.astype(np.float32),
              {"units": "m**2 s**-2", "long_name": "Geopotential", "standard_name": "geopotential", "GRIB_paramId": 129}),
        "u": (level_dims, ref["U"].values,
              {"units": "m s**-1", "long_name": "U component of wind", "standard_name": "eastward_wind"}),
        "v": (level_dims, ref["V"].values,
              {"units": "m s**-1", "long_name": "V component of wind", "standard_name": "northward_wind"}),
        "tp": (("valid_time", "latitude", "longitude"), (ref[PRECIPITATION].astype(np.float64) / 1000.0).values.astype(np.float32),
               {"units": "m", "long_name": "Total precipitation", "GRIB_paramId": 228}),
    }
    e = saturation_vapour_pressure(td)  # vapour pressure (hPa) = saturation pressure at the dew point
    if humidity == "r":
        rh = 100.0 * e / saturation_vapour_pressure(t)
        data_vars["r"] = (level_dims, rh.values.astype(np.float32),
                          {"units": "%", "long_name": "Relative humidity", "standard_name": "relative_humidity"})
    else:
        p = ref["level"].astype(np.float64)
        q = 0.622 * e / (p - (1.0 - 0.622) * e)
        data_vars["q"] = (level_dims, q.transpose(*t.dims).values.astype(np.float32),
                          {"units": "kg kg**-1", "long_name": "Specific humidity", "standard_name": "specific_humidity"})
    n_time = ref.sizes["time"]
    coords = {
        "number": ((), np.int64(0), {"long_name": "ensemble member numerical id", "units": "1"}),
        "valid_time": ("valid_time", ref["time"].values, {"long_name": "time", "standard_name": "time"}),
        "pressure_level": ("pressure_level", ref["level"].values, {"units": "hPa", "long_name": "pressure", "positive": "down"}),
        "latitude": ("latitude", ref["lat"].values, {"units": "degrees_north", "standard_name": "latitude"}),
        "longitude": ("longitude", ref["lon"].values, {"units": "degrees_east", "standard_name": "longitude"}),
        "expver": ("valid_time", np.array(["0001"] * n_time, dtype=object), {"long_name": "Experiment version"}),
    }
    return xr.Dataset(data_vars, coords=coords, attrs={"GRIB_centre": "ecmf", "Conventions": "CF-1.7",
                                                       "institution": "European Centre for Medium-Range Weather Forecasts"})


def _write_era5(ds: xr.Dataset, path: Path) -> Path:
    ds.to_netcdf(path, encoding={"valid_time": {"units": "seconds since 1970-01-01", "dtype": "int64"}})
    return path


@pytest.mark.parametrize("humidity,reverse_levels", [("r", False), ("q", True)])
def test_era5_file_from_the_copernicus_store(tmp_path, humidity, reverse_levels):
    ref = make_dataset(n_time=6, seed=3)
    path = _write_era5(make_era5(ref, humidity, reverse_levels), tmp_path / f"era5_{humidity}.nc")
    raw = xr.open_dataset(path)
    assert raw["latitude"].values[0] > raw["latitude"].values[-1]  # the file really is north-to-south
    assert "number" in raw.coords and raw["expver"].dims == ("valid_time",)
    raw.close()

    out = open_dataset(path)
    assert_library_layout(out)
    assert set(out.coords) == set(DIMS)  # number / expver bookkeeping dropped
    assert_same_fields(out, ref, dpt_atol=0.05)
    assert out["GPH"].attrs["units"] == "m" and out[PRECIPITATION].attrs["units"] == "mm"


def test_era5_relative_humidity_as_fraction():
    ref = make_dataset(n_time=3)
    era5 = make_era5(ref, "r")
    era5["r"] = era5["r"] / 100.0
    era5["r"].attrs["units"] = "1"
    out = open_dataset(era5)
    np.testing.assert_allclose(out["DPT"].values, ref["DPT"].values, atol=0.05)


def test_specific_humidity_in_g_per_kg():
    ref = make_dataset(n_time=3)
    era5 = make_era5(ref, "q")
    era5["q"] = era5["q"] * 1000.0
    era5["q"].attrs["units"] = "g kg-1"
    out = open_dataset(era5)
    np.testing.assert_allclose(out["DPT"].values, ref["DPT"].values, atol=0.05)


@pytest.mark.parametrize("units,factor", [("m", 1.0), ("gpm", 1.0), ("m**2 s**-2", G), ("", G)])
def test_z_is_divided_by_gravity_only_when_it_is_geopotential(units, factor):
    ref = make_dataset(n_time=3)
    ds = ref.rename(GPH="z")
    ds["z"] = ds["z"].astype(np.float64) * factor
    ds["z"].attrs = {"units": units} if units else {}
    out = open_dataset(ds)
    np.testing.assert_allclose(out["GPH"].values, ref["GPH"].values, rtol=1e-6)


# ----------------------------------------------------------------------------------------- units


@pytest.mark.parametrize("units", ["degC", "degree_Celsius", "°C", "Celsius"])
def test_temperatures_in_celsius_become_kelvin(tmp_path, units):
    ref = make_dataset(n_time=4)
    ds = ref.copy()
    for var in ("TEM", "DPT"):
        ds[var] = ref[var] - 273.15
        ds[var].attrs = {"units": units}
    path = tmp_path / "celsius.nc"
    ds.to_netcdf(path)
    out = open_dataset(path)
    np.testing.assert_allclose(out["TEM"].values, ref["TEM"].values, atol=1e-3)
    np.testing.assert_allclose(out["DPT"].values, ref["DPT"].values, atol=1e-3)
    assert out["TEM"].attrs["units"] == "K"


def test_precipitation_in_metres_becomes_mm():
    ref = make_dataset(n_time=4)
    ds = ref.copy()
    ds[PRECIPITATION] = ref[PRECIPITATION] / 1000.0
    ds[PRECIPITATION].attrs = {"units": "m"}
    out = open_dataset(ds)
    np.testing.assert_allclose(out[PRECIPITATION].values, ref[PRECIPITATION].values, rtol=1e-5, atol=1e-6)


def test_levels_in_pa_become_hpa(tmp_path):
    ref = make_dataset(n_time=4, levels=(500.0, 850.0, 1000.0))  # ascending in the file
    ds = ref.rename(level="plev").assign_coords(plev=ref["level"].values * 100.0)
    ds["plev"].attrs = {"units": "Pa"}
    path = tmp_path / "plev.nc"
    ds.to_netcdf(path)
    out = open_dataset(path)
    np.testing.assert_array_equal(out["level"].values, [1000.0, 850.0, 500.0])
    # fields follow their levels when reordered
    np.testing.assert_array_equal(out["GPH"].sel(level=500.0).values, ref["GPH"].sel(level=500.0).values)
    assert out["level"].attrs["units"] == "hPa"


def test_longitude_conventions_are_kept_and_sorted():
    lon_360 = np.array([0.0, 90.0, 180.0, 270.0])
    ref = make_dataset(n_time=3, lon=lon_360)
    out_360 = open_dataset(ref)
    np.testing.assert_array_equal(out_360["lon"].values, lon_360)

    # the same grid written in -180..180 the naive way (not sorted): sorted, data moved with it
    wrapped = ref.assign_coords(lon=((lon_360 + 180.0) % 360.0) - 180.0)
    out_180 = open_dataset(wrapped)
    np.testing.assert_array_equal(out_180["lon"].values, [-180.0, -90.0, 0.0, 90.0])
    np.testing.assert_array_equal(out_180["TEM"].sel(lon=-90.0).values, ref["TEM"].sel(lon=270.0).values)
    np.testing.assert_array_equal(out_180[PRECIPITATION].sel(lon=90.0).values, ref[PRECIPITATION].sel(lon=90.0).values)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_axis_order_gives_the_same_layout(data):
    ref = make_dataset(n_time=4, lat=np.array([25.0, 30.0, 35.0, 40.0]), lon=np.array([100.0, 105.0, 110.0]))
    perm = {dim: data.draw(st.permutations(range(ref.sizes[dim])), label=dim) for dim in ("lat", "lon", "level")}
    shuffled = ref.isel(perm)
    if data.draw(st.booleans(), label="transpose"):
        shuffled = shuffled.transpose("lon", "lat", "level", "time")
    out = open_dataset(shuffled)
    assert_library_layout(out)
    assert_same_fields(out, ref, dpt_atol=0)


def test_singleton_extra_dimension_is_dropped():
    ref = make_dataset(n_time=3)
    out = open_dataset(ref.expand_dims(number=[0]))
    assert_same_fields(out, ref, dpt_atol=0)
    assert "number" not in out.dims and "number" not in out.coords


def test_precipitation_with_a_singleton_level_is_squeezed():
    ref = make_dataset(n_time=3, levels=(850.0,))
    ds = ref.copy()
    ds[PRECIPITATION] = ref[PRECIPITATION].expand_dims(level=ref["level"].values, axis=1)
    out = open_dataset(ds)
    assert out[PRECIPITATION].dims == ("time", "lat", "lon")


# ----------------------------------------------------------------------------------------- lazy


def test_lazy_open_normalize_and_stack(tmp_path):
    ref = make_dataset(n_time=12)
    path = tmp_path / "lazy.nc"
    ref.to_netcdf(path)
    lazy = open_dataset(path, chunks={"time": 5})
    for var in VARIABLES:
        assert lazy[var].chunks is not None, var
    assert lazy["TEM"].chunks[0] == (5, 5, 2)
    eager = open_dataset(path)
    assert eager["TEM"].chunks is None

    normalizer = ConvLSTMNormalizer().fit(eager)
    normalized = normalizer.normalize(lazy)
    for var in VARIABLES:
        assert normalized[var].chunks is not None, var
    np.testing.assert_array_equal(stack_channels(lazy), stack_channels(eager))
    np.testing.assert_allclose(stack_channels(normalized), stack_channels(normalizer.normalize(eager)), rtol=1e-6, atol=1e-6)

    lazy_fit = ConvLSTMNormalizer().fit(lazy)
    for var in VARIABLES:
        np.testing.assert_allclose(lazy_fit.means[var], normalizer.means[var], rtol=1e-9)
        np.testing.assert_allclose(lazy_fit.stds[var], normalizer.stds[var], rtol=1e-9)


def test_lazy_chunks_use_library_names_on_an_era5_file(tmp_path):
    ref = make_dataset(n_time=12)
    path = _write_era5(make_era5(ref), tmp_path / "era5_lazy.nc")
    out = open_dataset(path, chunks={"time": 5})
    assert out["TEM"].chunks is not None and out["TEM"].chunks[0] == (5, 5, 2)
    assert out[PRECIPITATION].chunks[0] == (5, 5, 2)
    np.testing.assert_allclose(out["DPT"].values, ref["DPT"].values, atol=0.05)


# ----------------------------------------------------------------------------------------- missing values


def _with_nans(n_time: int = 10) -> xr.Dataset:
    ds = make_dataset(n_time=n_time)
    ds["TEM"][3, 0, 0, 0] = np.nan
    ds["TEM"][3, 1, 2, 2] = np.nan
    ds[PRECIPITATION][6, 1, 1] = np.nan
    return ds


@pytest.mark.parametrize("policy", ["raise", "drop"])
def test_missing_values_are_left_for_the_regions_to_judge(policy):
    # only missing values inside the regions a model reads count: ConvLSTMDataset refuses or drops them there
    ds = _with_nans()
    out = open_dataset(ds, nan_policy=policy)
    assert out.sizes["time"] == 10
    assert {v: int(out[v].isnull().sum()) for v in ("TEM", PRECIPITATION)} == {"TEM": 2, PRECIPITATION: 1}


def test_nan_policy_fill_interpolates_in_time():
    ds = make_dataset(n_time=10)
    gappy = ds.copy(deep=True)
    gappy["TEM"][3, 0, 0, 0] = np.nan
    gappy["TEM"][4, 0, 0, 0] = np.nan
    gappy["U"][0, 1, 1, 1] = np.nan  # leading gap: nearest value
    gappy[PRECIPITATION][9, 2, 2] = np.nan  # trailing gap: nearest value
    out = open_dataset(gappy, nan_policy="fill")
    assert out.sizes["time"] == 10
    assert not any(bool(out[v].isnull().any()) for v in VARIABLES)
    t2, t5 = float(ds["TEM"][2, 0, 0, 0]), float(ds["TEM"][5, 0, 0, 0])
    np.testing.assert_allclose(out["TEM"][3:5, 0, 0, 0].values, [t2 + (t5 - t2) / 3, t2 + 2 * (t5 - t2) / 3], rtol=1e-6)
    assert float(out["U"][0, 1, 1, 1]) == float(ds["U"][1, 1, 1, 1])
    assert float(out[PRECIPITATION][9, 2, 2]) == float(ds[PRECIPITATION][8, 2, 2])
    # untouched values stay as they were
    np.testing.assert_array_equal(out["V"].values, ds["V"].values)


def test_nan_policy_fill_on_lazy_data(tmp_path):
    ds = make_dataset(n_time=10)
    gappy = ds.copy(deep=True)
    gappy["TEM"][4, 0, 0, 0] = np.nan
    path = tmp_path / "gappy_lazy.nc"
    gappy.to_netcdf(path)
    out = open_dataset(path, chunks={"time": 3}, nan_policy="fill")
    assert out["TEM"].chunks is not None and out["TEM"].chunks[0] == (3, 3, 3, 1)
    expected = (float(ds["TEM"][3, 0, 0, 0]) + float(ds["TEM"][5, 0, 0, 0])) / 2
    np.testing.assert_allclose(float(out["TEM"][4, 0, 0, 0]), expected, rtol=1e-6)


def test_unknown_nan_policy_is_refused():
    with pytest.raises(ConfigError, match="nan_policy must be"):
        open_dataset(make_dataset(n_time=3), nan_policy="ignore")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- refusals


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.nc"
    with pytest.raises(DataError, match=r"nowhere\.nc does not exist"):
        open_dataset(path)


def test_not_a_netcdf(tmp_path):
    path = tmp_path / "notes.nc"
    path.write_text("this is not a netCDF file\n")
    with pytest.raises(DataError, match=r"Cannot open .*notes\.nc as a netCDF dataset"):
        open_dataset(path)


def test_missing_variable_lists_present_and_accepted(tmp_path):
    path = tmp_path / "no_v.nc"
    make_dataset(n_time=3).drop_vars("V").to_netcdf(path)
    with pytest.raises(DataError, match=r"no_v\.nc is missing variable\(s\) V\. It has: DPT, GPH, TEM, U, precipitation") as info:
        open_dataset(path)
    assert "V: V, v_wind, northward_wind, v, va" in str(info.value)


def test_missing_dew_point_without_humidity_mentions_humidity():
    with pytest.raises(DataError, match=r"missing variable\(s\) DPT.*relative humidity r"):
        open_dataset(make_dataset(n_time=3).drop_vars("DPT"))


def test_missing_dimension(tmp_path):
    path = tmp_path / "surface.nc"
    make_dataset(n_time=3).isel(level=0, drop=True).to_netcdf(path)
    with pytest.raises(DataError, match=r"surface\.nc has no 'level' dimension \(accepted names: level, pressure_level"):
        open_dataset(path)


def test_extra_non_singleton_dimension(tmp_path):
    path = tmp_path / "ensemble.nc"
    make_dataset(n_time=3).expand_dims(member=[0, 1]).to_netcdf(path)
    with pytest.raises(DataError, match=r"ensemble\.nc has an extra dimension 'member' of size 2"):
        open_dataset(path)


@pytest.mark.parametrize("name,var,change,match", [
    ("flat_tem", "TEM", lambda da: da.isel(level=0, drop=True), r"variable TEM has dimensions \('time', 'lat', 'lon'\)"),
    ("precip_levels", PRECIPITATION, lambda da: da.expand_dims(level=[1000.0, 850.0, 500.0], axis=1),
     r"variable precipitation has dimensions.*surface field"),
], ids=["level variable without level", "precipitation on levels"])
def test_variable_with_the_wrong_dimensions_is_refused(tmp_path, name, var, change, match):
    ds = make_dataset(n_time=3)
    ds[var] = change(ds[var])
    path = tmp_path / f"{name}.nc"
    ds.to_netcdf(path)
    with pytest.raises(DataError, match=rf"{name}\.nc: {match}"):
        open_dataset(path)


def test_duplicate_times(tmp_path):
    ds = make_dataset(n_time=5)
    times = ds["time"].values.copy()
    times[3] = times[2]
    path = tmp_path / "dup.nc"
    ds.assign_coords(time=times).to_netcdf(path)
    with pytest.raises(DataError, match=r"dup\.nc: duplicate time 2000-01-02T00:00"):
        open_dataset(path)


def test_non_monotonic_times(tmp_path):
    ds = make_dataset(n_time=5)
    path = tmp_path / "shuffled.nc"
    ds.isel(time=[0, 1, 3, 2, 4]).to_netcdf(path)
    with pytest.raises(DataError, match=r"shuffled\.nc: times are not increasing \(at 2000-01-02T00:00\)"):
        open_dataset(path)


def test_duplicate_latitudes():
    ds = make_dataset(n_time=3, lat=np.array([25.0, 30.0, 30.0]))
    with pytest.raises(DataError, match="coordinate 'lat' has duplicate values"):
        open_dataset(ds)


def test_in_memory_dataset_is_named_neutrally():
    with pytest.raises(DataError, match=r"^the dataset is missing variable\(s\) U"):
        open_dataset(make_dataset(n_time=3).drop_vars("U"))


def test_time_starts_kept_as_given():
    """The calendar is not shifted by opening (regression guard for the time handling)."""
    ds = make_dataset(n_time=3, start="2019-07-01 06:00")
    out = open_dataset(ds)
    assert pd.Timestamp(out["time"].values[0]) == pd.Timestamp("2019-07-01 06:00")

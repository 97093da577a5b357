"""Regions: downstream / upstream cut-outs, longitude conventions, the seam, and refusals."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from tests.helpers import make_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm.config import RegionConfig
from convlstm.data.regions import check_regions, crop_regions
from convlstm.data.schema import LEVEL_VARIABLES, PRECIPITATION, open_dataset
from convlstm.errors import ConfigError, DataError

LAT = np.arange(25.0, 41.0, 3.0)  # 25 .. 40, 6 rows
LON = np.arange(70.0, 126.0, 5.0)  # 70 .. 125, 12 columns


def _assert_values_equal(a: xr.Dataset, b: xr.Dataset) -> None:
    for var in (*LEVEL_VARIABLES, PRECIPITATION):
        np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)


def test_downstream_only():
    data = make_dataset(n_time=3)
    crop = crop_regions(data, RegionConfig(), include_upstream=False)
    np.testing.assert_array_equal(crop.data["lon"].values, [110.0, 115.0, 120.0, 125.0])
    np.testing.assert_array_equal(crop.data["lat"].values, LAT)
    assert crop.downstream_columns == slice(0, 4)
    _assert_values_equal(crop.data, data.sel(lon=[110.0, 115.0, 120.0, 125.0]))


def test_touching_regions_share_the_column_in_downstream_only():
    data = make_dataset(n_time=3)
    regions = RegionConfig()  # upstream 70..110, downstream 110..125: they touch at 110
    assert regions.upstream_lon_max == regions.downstream_lon_min
    down = crop_regions(data, regions, include_upstream=False).data
    crop = crop_regions(data, regions, include_upstream=True)
    lon = crop.data["lon"].values
    assert len(lon) == 8 + down.sizes["lon"]  # W_up (70..105) + W_down (110..125)
    assert np.all(np.diff(lon) > 0), "upstream must lie west of downstream, longitude increasing"
    assert list(lon).count(110.0) == 1
    np.testing.assert_array_equal(lon[crop.downstream_columns], [110.0, 115.0, 120.0, 125.0])
    np.testing.assert_array_equal(lon[: crop.downstream_columns.start], np.arange(70.0, 110.0, 5.0))
    _assert_values_equal(crop.data.isel(lon=crop.downstream_columns), down)
    _assert_values_equal(crop.data, data)  # this grid is exactly upstream ⊕ downstream


def test_separate_regions_width_is_sum():
    data = make_dataset(n_time=3)
    regions = RegionConfig(upstream_lon_min=75.0, upstream_lon_max=100.0)
    crop = crop_regions(data, regions, include_upstream=True)
    up_lon = np.arange(75.0, 101.0, 5.0)
    assert crop.data.sizes["lon"] == len(up_lon) + 4
    assert crop.downstream_columns == slice(len(up_lon), len(up_lon) + 4)
    np.testing.assert_array_equal(crop.data["lon"].values, np.concatenate([up_lon, [110.0, 115.0, 120.0, 125.0]]))
    _assert_values_equal(crop.data.isel(lon=slice(0, len(up_lon))), data.sel(lon=up_lon))


def test_bounds_between_grid_points_select_the_cells_inside():
    data = make_dataset(n_time=2)
    regions = RegionConfig(downstream_lat_min=26.0, downstream_lat_max=39.0, downstream_lon_min=111.0, downstream_lon_max=124.0)
    crop = crop_regions(data, regions, include_upstream=False)
    np.testing.assert_array_equal(crop.data["lat"].values, [28.0, 31.0, 34.0, 37.0])
    np.testing.assert_array_equal(crop.data["lon"].values, [115.0, 120.0])


# ------------------------------------------------------------------------------ lon conventions

LON_360 = np.arange(200.0, 301.0, 5.0)  # a Pacific-to-Americas strip, in 0..360
REG_360 = dict(downstream_lon_min=240.0, downstream_lon_max=255.0, upstream_lon_min=210.0, upstream_lon_max=240.0)
REG_180 = {k: v - 360.0 for k, v in REG_360.items()}


@pytest.mark.parametrize("file_convention", ["0..360", "-180..180"])
@pytest.mark.parametrize("include_upstream", [False, True])
def test_region_in_either_convention_selects_the_same_cells(file_convention, include_upstream):
    data_360 = make_dataset(n_time=3, lon=LON_360)
    data = data_360 if file_convention == "0..360" else data_360.assign_coords(lon=LON_360 - 360.0)
    crop_360 = crop_regions(data, RegionConfig(**REG_360), include_upstream)
    crop_180 = crop_regions(data, RegionConfig(**REG_180), include_upstream)
    _assert_values_equal(crop_360.data, crop_180.data)
    assert crop_360.downstream_columns == crop_180.downstream_columns
    # longitudes come back in the region's own convention
    np.testing.assert_allclose(crop_360.data["lon"].values, crop_180.data["lon"].values + 360.0)
    expected = np.arange(210.0 if include_upstream else 240.0, 256.0, 5.0)
    np.testing.assert_allclose(crop_360.data["lon"].values, expected)
    _assert_values_equal(crop_360.data, data_360.sel(lon=expected))


def test_region_crossing_the_seam_of_a_global_grid():
    lon = np.arange(0.0, 360.0, 10.0)
    data = make_dataset(n_time=2, lon=lon)
    regions = RegionConfig(downstream_lon_min=-20.0, downstream_lon_max=20.0, upstream_lon_min=-60.0, upstream_lon_max=-20.0)
    down = crop_regions(data, regions, include_upstream=False)
    np.testing.assert_array_equal(down.data["lon"].values, [-20.0, -10.0, 0.0, 10.0, 20.0])
    _assert_values_equal(down.data, data.sel(lon=[340.0, 350.0, 0.0, 10.0, 20.0]))

    both = crop_regions(data, regions, include_upstream=True)
    np.testing.assert_array_equal(both.data["lon"].values, np.arange(-60.0, 21.0, 10.0))
    _assert_values_equal(both.data, data.sel(lon=[300.0, 310.0, 320.0, 330.0, 340.0, 350.0, 0.0, 10.0, 20.0]))
    assert both.downstream_columns == slice(4, 9)

    # the same region written in 0..360 across 360
    same = crop_regions(data, RegionConfig(downstream_lon_min=340.0, downstream_lon_max=380.0,
                                           upstream_lon_min=300.0, upstream_lon_max=340.0), include_upstream=True)
    _assert_values_equal(same.data, both.data)


def test_dateline_crossing_on_a_minus180_grid():
    lon = np.arange(-180.0, 180.0, 10.0)
    data = make_dataset(n_time=2, lon=lon)
    regions = RegionConfig(downstream_lon_min=170.0, downstream_lon_max=200.0, upstream_lon_min=140.0, upstream_lon_max=170.0)
    crop = crop_regions(data, regions, include_upstream=True)
    np.testing.assert_array_equal(crop.data["lon"].values, np.arange(140.0, 201.0, 10.0))
    _assert_values_equal(crop.data, data.sel(lon=[140.0, 150.0, 160.0, 170.0, -180.0, -170.0, -160.0]))


@settings(max_examples=25, deadline=None)
@given(
    start=st.integers(0, 71),
    width=st.integers(1, 12),
    up_width=st.integers(1, 12),
    region_shift=st.sampled_from([-360.0, 0.0, 360.0]),
    file_180=st.booleans(),
)
def test_global_grid_crop_does_not_depend_on_conventions(start, width, up_width, region_shift, file_180):
    """Any region of a global 5° grid, shifted by 360° or read from a -180..180 copy, selects the same cells."""
    lon = np.arange(0.0, 360.0, 5.0)
    data = make_dataset(n_time=2, lat=np.array([30.0, 35.0]), lon=lon, levels=(850.0,))
    d_min = 5.0 * start
    regions = RegionConfig(downstream_lat_min=30.0, downstream_lat_max=35.0, upstream_lat_min=30.0, upstream_lat_max=35.0,
                           downstream_lon_min=d_min, downstream_lon_max=d_min + 5.0 * width,
                           upstream_lon_min=d_min - 5.0 * up_width, upstream_lon_max=d_min)
    ref = crop_regions(data, regions, include_upstream=True)
    expected_cols = [(start + k) % 72 for k in range(-up_width, width + 1)]
    _assert_values_equal(ref.data, data.isel(lon=expected_cols))
    assert ref.downstream_columns == slice(up_width, up_width + width + 1)

    other = data
    if file_180:
        other = open_dataset(data.assign_coords(lon=((lon + 180.0) % 360.0) - 180.0))  # sorted -180..180 copy
    shifted = RegionConfig.from_dict({k: v + region_shift if "lon" in k else v for k, v in regions.to_dict().items()})
    out = crop_regions(other, shifted, include_upstream=True)
    _assert_values_equal(out.data, ref.data)
    np.testing.assert_allclose(out.data["lon"].values, ref.data["lon"].values + region_shift)


# ------------------------------------------------------------------------------ RegionConfig


def test_region_config_round_trip():
    regions = RegionConfig(downstream_lon_min=100, downstream_lon_max=120.5, upstream_lon_min=60, upstream_lon_max=100)
    values = regions.to_dict()
    assert values["downstream_lon_max"] == 120.5 and isinstance(values["upstream_lon_min"], float)
    assert RegionConfig.from_dict(values) == regions
    assert RegionConfig.from_dict(values).to_dict() == values


def test_region_config_unknown_key():
    with pytest.raises(ConfigError, match="Unknown RegionConfig setting"):
        RegionConfig.from_dict({"downstream_lat_min": 25.0, "upstream_height": 3.0})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"downstream_lat_min": 40.0, "downstream_lat_max": 25.0}, "downstream latitudes"),
        ({"downstream_lat_min": 30.0, "downstream_lat_max": 30.0}, "downstream latitudes"),
        ({"upstream_lat_max": 95.0}, r"upstream_lat_max \(--upstream-lat-max\) must be a number >= -90 and <= 90"),
        ({"downstream_lat_min": -91.0}, "downstream_lat_min"),
        ({"downstream_lon_min": 125.0, "downstream_lon_max": 110.0}, "downstream longitudes"),
        ({"upstream_lon_min": 0.0, "upstream_lon_max": 360.0}, "upstream longitudes"),
        ({"upstream_lon_min": float("nan")}, "must be a number"),
        ({"downstream_lat_min": "25"}, "must be a number"),
        ({"downstream_lon_max": float("inf")}, "must be a number"),
    ],
)
def test_invalid_bounds_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RegionConfig(**kwargs)


def test_region_outside_data_prints_data_bounds(tmp_path):
    path = tmp_path / "asia.nc"
    make_dataset(n_time=2).to_netcdf(path)
    data = open_dataset(path)
    regions = RegionConfig(downstream_lon_min=110.0, downstream_lon_max=140.0)
    with pytest.raises(DataError, match=r"downstream region .* lies outside .*asia\.nc, which covers lat 25\.\.40 °N, lon 70\.\.125 °E"):
        crop_regions(data, regions, include_upstream=False)
    with pytest.raises(DataError, match="lies outside"):
        check_regions(data, RegionConfig(downstream_lat_max=45.0, upstream_lat_max=45.0), include_upstream=True)
    with pytest.raises(DataError, match=r"upstream region .* lies outside"):
        crop_regions(data, RegionConfig(upstream_lon_min=50.0), include_upstream=True)


def test_region_between_grid_points_is_refused():
    data = make_dataset(n_time=2)
    with pytest.raises(DataError, match="contains no grid cell"):
        crop_regions(data, RegionConfig(downstream_lon_min=111.0, downstream_lon_max=114.0), include_upstream=False)


def test_upstream_overlapping_downstream():
    data = make_dataset(n_time=2)
    with pytest.raises(ConfigError, match=r"overlaps the downstream region"):
        crop_regions(data, RegionConfig(upstream_lon_max=115.0), include_upstream=True)
    # overlap does not matter when upstream is not used
    crop_regions(data, RegionConfig(upstream_lon_max=115.0), include_upstream=False)


def test_upstream_with_different_latitudes():
    data = make_dataset(n_time=2)
    regions = RegionConfig(upstream_lat_min=25.0, upstream_lat_max=37.0)
    with pytest.raises(ConfigError, match=r"must span the same latitudes as the downstream region"):
        crop_regions(data, regions, include_upstream=True)
    with pytest.raises(ConfigError, match="same latitudes"):
        regions.check_upstream()


def test_check_regions_accepts_defaults():
    check_regions(make_dataset(n_time=2), RegionConfig(), include_upstream=True)
    check_regions(make_dataset(n_time=2), RegionConfig(), include_upstream=False)

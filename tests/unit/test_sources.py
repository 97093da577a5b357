"""open_dataset on real ERA5 input as users have it: several files, both CDS netCDF layouts, GRIB, Zarr.

Most tests start from the real sample (shared/data/era5-sample: q, u, v, tp in the older CDS layout,
no t and z) and add the two missing fields as files written the same way.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import eccodes
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from convlstm.data.dataset import window_starts
from convlstm.data.schema import PRECIPITATION, open_dataset
from convlstm.data.sources import is_zarr_source
from convlstm.data.thermo import dew_point_from_specific_humidity
from convlstm.errors import DataError
from tests.era5_sample import G, era5_folder, requires_sample, sample, synthetic_t_z, write_packed
from tests.helpers import ERA5_SAMPLE, assert_library_layout

pytestmark = requires_sample

def raw_sample(name: str) -> xr.DataArray:
    with xr.open_dataset(sample(name)) as ds:
        return ds[name.removeprefix("pl_")].load()


def assert_matches_sample(out: xr.Dataset) -> None:
    """The library layout, lazy, with DPT derived from the real q and precipitation = tp in mm."""
    assert_library_layout(out)
    for var in out.data_vars:
        assert out[var].chunks is not None, f"{var} was loaded"
    assert out.sizes == {"time": 24, "level": 20, "lat": 41, "lon": 41}
    assert np.all(np.diff(out["time"].values) == np.timedelta64(1, "h"))
    q = raw_sample("pl_q").rename(latitude="lat", longitude="lon").sortby("lat").sortby("level", ascending=False)
    expected_dpt = dew_point_from_specific_humidity(q["level"].astype(np.float64), q)
    np.testing.assert_allclose(out["DPT"].values, expected_dpt.transpose(*q.dims).values, rtol=0, atol=1e-3)
    tp = raw_sample("tp").rename(latitude="lat", longitude="lon").sortby("lat")
    np.testing.assert_allclose(out[PRECIPITATION].values, tp.values * 1000.0, rtol=1e-5, atol=1e-5)
    u = raw_sample("pl_u").rename(latitude="lat", longitude="lon").sortby("lat").sortby("level", ascending=False)
    np.testing.assert_allclose(out["U"].values, u.values, rtol=0, atol=1e-5)
    t = synthetic_t_z()["t"].rename(latitude="lat", longitude="lon").sortby("lat").sortby("level", ascending=False)
    np.testing.assert_allclose(out["TEM"].values, t.values, rtol=0, atol=0.01)  # int16 packing resolution
    assert 100 < float(out["GPH"].sel(level=1000).mean()) < 200 < 15000 < float(out["GPH"].sel(level=100).mean()) < 17000


# ----------------------------------------------------------------------------------------- the sample as it is


@pytest.mark.parametrize("form", ["directory", "glob", "list", "comma"])
def test_the_sample_lacks_exactly_t_and_z(form):
    files = sorted(ERA5_SAMPLE.glob("*.nc"))
    source = {"directory": str(ERA5_SAMPLE), "glob": str(ERA5_SAMPLE / "*.nc"), "list": files,
              "comma": ",".join(map(str, files))}[form]
    with pytest.raises(DataError) as info:
        open_dataset(source)
    message = str(info.value)
    assert message.startswith("the 10 files ")
    if form == "glob":
        assert f"the 10 files matching {ERA5_SAMPLE}/*.nc ({files[0]} … {files[-1]})" in message
    assert "lack variable(s) GPH, TEM. They have: q, u, v, tp." in message
    assert "GPH: GPH, geopotential_height, gh, hgt, z, geopotential" in message
    assert "TEM: TEM, temperature, air_temperature, t, ta" in message
    assert "DPT will be derived from q once TEM (t) is added" in message
    for present in ("DPT:", "U:", "V:", "precipitation:"):
        assert present not in message


def test_the_sample_with_t_and_z_gives_the_library_layout(tmp_path):
    folder = era5_folder(tmp_path / "era5")
    for name in ("d2m", "sp"):  # single-level fields the library does not read are skipped
        (folder / sample(name).name).symlink_to(sample(name))
    raw = xr.open_dataset(folder / "ERA5_2020-01-01_pl_t.nc", mask_and_scale=False)
    assert raw["t"].dtype == np.int16  # written packed, as the CDS delivers
    raw.close()
    out = open_dataset(folder)
    assert_matches_sample(out)
    assert out.attrs["convlstm_source"].startswith(f"8 files in {folder} (")
    assert_matches_sample(open_dataset(str(folder / "*.nc")))


def test_chunks_in_library_names_apply_to_every_file(tmp_path):
    out = open_dataset(era5_folder(tmp_path / "era5"), chunks={"time": 10, "lat": 20})
    assert out["TEM"].chunks[0] == (10, 10, 4) and max(out["TEM"].chunks[2]) <= 20
    assert out[PRECIPITATION].chunks[0] == (10, 10, 4)


def test_the_newer_cds_layout_gives_the_same_result(tmp_path):
    old = open_dataset(era5_folder(tmp_path / "old"))
    new = tmp_path / "new"
    new.mkdir()
    for path in sorted((tmp_path / "old").iterdir()):
        ds = xr.open_dataset(path).load()
        ds = ds.rename({"time": "valid_time", **({"level": "pressure_level"} if "level" in ds.dims else {})})
        ds = ds.assign_coords(number=((), np.int64(0)), expver=("valid_time", np.array(["0001"] * 24, dtype=object)))
        ds = ds.astype(np.float32)
        ds.to_netcdf(new / path.name, encoding={"valid_time": {"units": "seconds since 1970-01-01", "dtype": "int64"}})
    assert "number" in xr.open_dataset(new / path.name).coords
    out = open_dataset(str(new / "*.nc"))
    assert set(out.coords) == {"time", "level", "lat", "lon"}
    xr.testing.assert_allclose(out, old, rtol=1e-6, atol=1e-5)


def test_expver_dimension_is_merged_into_one(tmp_path):
    """ERA5 delivered with recent months: expver 1 (final) and 5 (preliminary), each time in one of them."""
    folder = era5_folder(tmp_path / "era5", skip=("tp",))
    tp = raw_sample("tp")
    final = tp.where(tp["time"] < np.datetime64("2020-01-01T20:00"))
    preliminary = tp.where(tp["time"] >= np.datetime64("2020-01-01T20:00"))
    both = xr.concat([final, preliminary], dim=pd.Index(np.int32([1, 5]), name="expver")).transpose("time", "expver", ...)
    write_packed(both.rename("tp"), folder / "ERA5_2020-01-01_tp.nc")
    assert xr.open_dataset(folder / "ERA5_2020-01-01_tp.nc").sizes["expver"] == 2
    assert_matches_sample(open_dataset(folder))


# ----------------------------------------------------------------------------------------- time


def split_tp(folder: Path, first: slice, second: slice, change: float = 0.0) -> None:
    """tp in two files, the second's values shifted by ``change`` (m)."""
    tp = raw_sample("tp")
    write_packed(tp.isel(time=first).rename("tp"), folder / "ERA5_2020-01-01_tp_a.nc")
    write_packed((tp.isel(time=second) + change).rename("tp"), folder / "ERA5_2020-01-01_tp_b.nc")


def test_overlapping_times_with_the_same_values_are_kept_once(tmp_path):
    """Packed apart (each file its own scale), as two CDS downloads of one field are."""
    folder = era5_folder(tmp_path / "era5", skip=("tp",))
    split_tp(folder, slice(0, 16), slice(12, 24))
    assert_matches_sample(open_dataset(folder))


def test_overlapping_times_with_different_values_are_refused(tmp_path):
    folder = era5_folder(tmp_path / "era5", skip=("tp",))
    split_tp(folder, slice(0, 16), slice(12, 24), change=1e-3)
    with pytest.raises(DataError, match=r"tp_a\.nc and \S*tp_b\.nc both hold tp at 4 time\(s\) from 2020-01-01T12:00 with different values"):
        open_dataset(folder)


def test_variables_are_merged_on_the_times_they_share(tmp_path, caplog):
    folder = era5_folder(tmp_path / "era5", skip=("tp",))
    write_packed(raw_sample("tp").isel(time=slice(0, 20)).rename("tp"), folder / "tp.nc")
    with caplog.at_level(logging.WARNING, logger="convlstm.data.sources"):
        out = open_dataset(folder)
    assert out.sizes["time"] == 20
    assert "4 time step(s) not held by all of them dropped" in caplog.text


def test_a_missing_month_is_a_gap_no_window_spans(tmp_path):
    january = era5_folder(tmp_path / "january")
    february = tmp_path / "february"
    february.mkdir()
    for path in january.iterdir():
        ds = xr.open_dataset(path).load()
        var = next(iter(ds.data_vars))
        shifted = ds[var].assign_coords(time=ds["time"] + np.timedelta64(31, "D"))
        write_packed(shifted, february / path.name.replace("2020-01-01", "2020-02-01"))
    out = open_dataset([january, february])
    assert out.sizes["time"] == 48
    times = out["time"].values
    assert times[24] - times[23] == np.timedelta64(31 * 24 - 23, "h")
    starts = window_starts(times, window_size=6, target_offset=1)
    assert len(starts) == 2 * (24 - 7 + 1)
    assert np.all(times[starts + 6] - times[starts] == np.timedelta64(6, "h"))


# ----------------------------------------------------------------------------------------- refusals


def test_files_on_different_grids_are_refused(tmp_path):
    folder = era5_folder(tmp_path / "era5", skip=("pl_z",))
    write_packed(synthetic_t_z()["z"].isel(latitude=slice(0, 40)).rename("z"), folder / "ERA5_2020-01-01_pl_z.nc")
    with pytest.raises(DataError, match=r"\S*pl_q\.nc and \S*pl_z\.nc are on different grids: latitude 55 … 45 \(41 values.*"
                                        r"vs 55 … 45\.25 \(40 values.*Regrid"):
        open_dataset(folder)


def test_files_with_different_levels_are_refused(tmp_path):
    folder = era5_folder(tmp_path / "era5", skip=("pl_z",))
    write_packed(synthetic_t_z()["z"].isel(level=slice(0, 19)).rename("z"), folder / "ERA5_2020-01-01_pl_z.nc")
    with pytest.raises(DataError, match=r"\S*pl_q\.nc and \S*pl_z\.nc have different pressure levels.*same levels"):
        open_dataset(folder)


def test_files_with_different_calendars_are_refused(tmp_path):
    folder = era5_folder(tmp_path / "era5", skip=("pl_t",))
    t = synthetic_t_z()["t"].rename("t").to_dataset()
    t.to_netcdf(folder / "ERA5_2020-01-01_pl_t.nc", encoding={"time": {"units": "hours since 1900-01-01", "calendar": "noleap"}})
    with pytest.raises(DataError, match=r"\S*pl_q\.nc and \S*pl_t\.nc use different calendars \(standard and noleap\)"):
        open_dataset(folder)


def test_a_glob_matching_nothing_and_an_empty_directory_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"No files match .*nothing_\*\.nc"):
        open_dataset(str(tmp_path / "nothing_*.nc"))
    with pytest.raises(DataError, match=r"holds no data files"):
        open_dataset(tmp_path)


# ----------------------------------------------------------------------------------------- GRIB


LAT, LON = np.array([50.0, 49.0, 48.0, 47.0]), np.array([0.0, 1.0, 2.0, 3.0, 4.0])
LEVELS = (1000, 850, 500)
HOURS = pd.date_range("2020-01-01T07:00", periods=14, freq="h")


def grib_message(short_name: str, when: pd.Timestamp, values: np.ndarray, level: int | None = None,
                 number: int | None = None, step: int = 0) -> bytes:
    """One GRIB 2 message from eccodes' samples: an analysis, an ensemble member, or an accumulation over ``step`` hours."""
    handle = eccodes.codes_grib_new_from_samples("regular_ll_pl_grib2" if level is not None else "regular_ll_sfc_grib2")
    try:
        keys: dict[str, object] = {"centre": "ecmf"}
        if number is not None:
            keys.update(productDefinitionTemplateNumber=1, typeOfProcessedData=4, numberOfForecastsInEnsemble=10, perturbationNumber=number)
        if step:
            keys.update(productDefinitionTemplateNumber=8, typeOfStatisticalProcessing=1)
        keys.update(Ni=len(LON), Nj=len(LAT), latitudeOfFirstGridPointInDegrees=LAT[0], latitudeOfLastGridPointInDegrees=LAT[-1],
                    longitudeOfFirstGridPointInDegrees=LON[0], longitudeOfLastGridPointInDegrees=LON[-1],
                    iDirectionIncrementInDegrees=1.0, jDirectionIncrementInDegrees=1.0,
                    dataDate=int(when.strftime("%Y%m%d")), dataTime=int(when.strftime("%H%M")))
        keys.update({"stepRange": f"{step - 1}-{step}"} if step else {"step": 0})
        if level is not None:
            keys.update(typeOfLevel="isobaricInhPa", level=level)
        keys["shortName"] = short_name
        for key, value in keys.items():
            eccodes.codes_set(handle, key, value)
        eccodes.codes_set_values(handle, np.asarray(values, dtype=np.float64).ravel())
        return eccodes.codes_get_message(handle)
    finally:
        eccodes.codes_release(handle)


def field(base: float, level: int = 1000, hour: int = 0, number: int = 0) -> np.ndarray:
    return base + 0.01 * (1000 - level) + 0.1 * hour + number + 0.01 * np.arange(LAT.size * LON.size).reshape(LAT.size, LON.size)


def pressure_level_messages(members: tuple[int | None, ...] = (None,), hours: pd.DatetimeIndex = HOURS) -> list[bytes]:
    """gh (gpm), t, u, v, q on isobaricInhPa, hourly; one set per ensemble member."""
    bases = {"gh": 100.0, "t": 280.0, "u": 5.0, "v": -2.0, "q": 0.004}
    return [grib_message(name, when, field(base if name != "gh" else base * (1 + (1000 - level) / 50), level, i, number or 0)
                         if name != "q" else np.full((LAT.size, LON.size), base), level=level, number=number)
            for number in members for i, when in enumerate(hours) for level in LEVELS for name, base in bases.items()]


def precipitation_messages() -> list[bytes]:
    """tp (m) accumulated hourly by forecasts from 06 and 18 UTC (steps 1-12; the 18 UTC one has only 2 steps)."""
    runs = [(pd.Timestamp("2020-01-01T06:00"), range(1, 13)), (pd.Timestamp("2020-01-01T18:00"), range(1, 3))]
    return [grib_message("tp", start, np.full((LAT.size, LON.size), 1e-4 * (start.hour + step)), step=step)
            for start, steps in runs for step in steps]


def write_grib(path: Path, messages: list[bytes]) -> Path:
    path.write_bytes(b"".join(messages))
    return path


def test_grib_pressure_levels_and_accumulated_precipitation(tmp_path):
    levels = write_grib(tmp_path / "pl.grib2", pressure_level_messages())
    rain = write_grib(tmp_path / "tp.grb", precipitation_messages())
    raw = xr.open_dataset(rain, engine="cfgrib", backend_kwargs={"indexpath": ""})
    assert raw["tp"].dims == ("time", "step", "latitude", "longitude")  # forecast start × step, as CDS delivers it
    raw.close()
    out = open_dataset([levels, rain])
    assert_library_layout(out)
    np.testing.assert_array_equal(out["time"].values, HOURS.values)  # 07..18 from 06 UTC, 19..20 from 18 UTC
    expected = [1e-4 * (6 + h) * 1000 for h in range(1, 13)] + [1e-4 * (18 + h) * 1000 for h in (1, 2)]
    np.testing.assert_allclose(out[PRECIPITATION].isel(lat=0, lon=0).values, expected, rtol=1e-4)
    np.testing.assert_allclose(out["GPH"].sel(level=500).isel(time=0, lat=-1, lon=0).values, 100.0 * (1 + 500 / 50) + 0.01 * 500, rtol=1e-5)
    assert out["TEM"].chunks is not None
    assert not list(tmp_path.glob("*.idx"))  # no index files beside the user's data


def test_a_grib_file_mixing_level_types_is_read_whole(tmp_path):
    """cfgrib splits such a file into hypercubes (pressure levels, surface); they are merged."""
    path = write_grib(tmp_path / "all.grib", pressure_level_messages() + precipitation_messages())
    out = open_dataset(path)
    assert_library_layout(out)
    assert out.sizes == {"time": 14, "level": 3, "lat": 4, "lon": 5}


def test_a_grib_ensemble_needs_a_member(tmp_path):
    levels = write_grib(tmp_path / "ens.grib2", pressure_level_messages(members=(0, 1), hours=HOURS[:2]))
    rain = write_grib(tmp_path / "tp.grib2", precipitation_messages())
    with pytest.raises(DataError, match=r"ens\.grib2 holds 2 ensemble members \(number 0, 1\)\. Choose one with member= \(command line: --member\)"):
        open_dataset([levels, rain])
    with pytest.raises(DataError, match=r"ens\.grib2 has no ensemble member 7; it holds number 0, 1"):
        open_dataset([levels, rain], member=7)
    out = open_dataset([levels, rain], member=1)
    assert_library_layout(out)
    np.testing.assert_allclose(out["TEM"].isel(time=0, level=0, lat=-1, lon=0).values, 281.0, rtol=1e-6)  # member 1 = base + 1


# ----------------------------------------------------------------------------------------- Zarr


def arco_store(tmp_path: Path) -> xr.Dataset:
    """The sample (plus t, z) as the analysis-ready ERA5 stores hold it, with fields the library does not read."""
    folder = era5_folder(tmp_path / "era5")
    names = {"t": "temperature", "z": "geopotential", "u": "u_component_of_wind", "v": "v_component_of_wind",
             "q": "specific_humidity", "tp": "total_precipitation"}
    merged = xr.merge([xr.open_dataset(path).load() for path in sorted(folder.iterdir())]).rename(names)
    merged = merged.drop_encoding().astype(np.float32)
    merged = merged.assign_coords(longitude=(merged["longitude"] - 5.0) % 360.0)  # 355 … 359.75, 0 … 5: 0-360 convention
    merged["temperature"].attrs["standard_name"] = "air_temperature"
    merged["2m_temperature"] = merged["temperature"].isel(level=0, drop=True)  # same standard_name, not read
    merged["ensemble_spread"] = merged["temperature"].expand_dims(member=3)  # would be refused if it were read
    merged["land_sea_mask"] = merged["total_precipitation"].isel(time=0, drop=True).assign_attrs(units="1")
    return merged.chunk({"time": 12})


def assert_arco_result(out: xr.Dataset, store: xr.Dataset) -> None:
    assert_library_layout(out)
    for var in out.data_vars:
        assert out[var].chunks is not None, f"{var} was loaded"
    assert out["lon"].values[0] == 0.0 and out["lon"].values[-1] == 359.75  # the store's convention, sorted
    ref = store.rename(latitude="lat", longitude="lon").sortby("lat").sortby("lon").sortby("level", ascending=False)
    np.testing.assert_allclose(out["GPH"].values, ref["geopotential"].values / G, rtol=1e-6)
    np.testing.assert_allclose(out[PRECIPITATION].values, ref["total_precipitation"].values * 1000.0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["TEM"].values, ref["temperature"].values, rtol=0, atol=1e-4)


def test_a_local_zarr_store_in_arco_naming(tmp_path):
    store = arco_store(tmp_path)
    path = tmp_path / "arco.zarr"
    store.to_zarr(path)
    assert is_zarr_source(path) and is_zarr_source(str(path))
    out = open_dataset(path)
    assert_arco_result(out, store)
    assert out.attrs["convlstm_source"] == str(path)
    renamed = tmp_path / "store"  # recognised by its metadata too, whatever the folder is called
    shutil.move(path, renamed)
    assert is_zarr_source(renamed)
    assert_arco_result(open_dataset(renamed), store)


def test_a_zarr_store_at_an_fsspec_url(tmp_path):
    store = arco_store(tmp_path)
    url = f"memory://convlstm-test-{uuid.uuid4().hex}/arco.zarr"
    store.to_zarr(url)
    try:
        assert is_zarr_source(url)
        assert_arco_result(open_dataset(url, chunks={"time": 6}), store)
        assert open_dataset(url, chunks={"time": 6})["TEM"].chunks[0] == (6, 6, 6, 6)
    finally:
        import fsspec

        fsspec.filesystem("memory").rm(url.removeprefix("memory://").rsplit("/", 1)[0], recursive=True)


def test_not_a_zarr_store(tmp_path):
    assert not is_zarr_source(tmp_path)
    with pytest.raises(DataError, match=r"Cannot open memory://nowhere\.zarr as a Zarr store"):
        open_dataset("memory://nowhere.zarr")

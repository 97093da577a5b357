"""ConvLSTMNormalizer: statistics from the training split, transforms, persistence, refusals."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import xarray as xr
from tests.helpers import make_dataset
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convlstm.data.dataset import ConvLSTMDataset
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.regions import RegionConfig
from convlstm.data.schema import LEVEL_VARIABLES, PRECIPITATION, VARIABLES
from convlstm.data.split import create_train_val_test_split
from convlstm.data.stacking import stack_channels
from convlstm.errors import DataError


@pytest.fixture(scope="module")
def data() -> xr.Dataset:
    return make_dataset(n_time=40, seed=1)


@pytest.fixture(scope="module")
def fitted(data) -> ConvLSTMNormalizer:
    return ConvLSTMNormalizer().fit(data)


def test_level_variables_are_standardized_per_level(data, fitted):
    normalized = fitted.normalize(data)
    for var in LEVEL_VARIABLES:
        values = normalized[var].values.astype(np.float64)
        assert normalized[var].dtype == np.float32
        mean = values.mean(axis=(0, 2, 3))
        std = values.std(axis=(0, 2, 3))
        assert mean.shape == (data.sizes["level"],)
        np.testing.assert_allclose(mean, 0.0, atol=1e-4, err_msg=var)
        np.testing.assert_allclose(std, 1.0, atol=1e-4, err_msg=var)
        # statistics really are per level: GPH differs by kilometres between levels
    assert np.all(np.diff(fitted.means["GPH"]) > 1000.0)


def test_precipitation_scaled_not_centred(data, fitted):
    assert float(fitted.means[PRECIPITATION]) == 0.0
    normalized = fitted.normalize(data)
    raw = data[PRECIPITATION].values
    out = normalized[PRECIPITATION].values
    assert np.all(out[raw == 0.0] == 0.0), "0 mm must normalize to exactly 0"
    assert np.all(out[raw > 0.0] > 0.0)
    np.testing.assert_allclose(out.astype(np.float64).std(), 1.0, atol=1e-4)  # log1p values divided by their std
    np.testing.assert_allclose(out, np.log1p(raw) / fitted.stds[PRECIPITATION], rtol=1e-5)
    assert fitted.normalize_precipitation(0.0) == 0.0
    np.testing.assert_allclose(fitted.normalize_precipitation(10.0), np.log1p(10.0) / fitted.stds[PRECIPITATION])


@settings(max_examples=25, deadline=None)
@given(values=hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(-1e3, 1e3, width=32)))
def test_denormalize_precipitation_never_negative(fitted, values):
    with np.errstate(over="ignore"):  # exp of a huge normalized value is inf mm: still not negative
        out = fitted.denormalize_precipitation(values)
    assert np.all(out >= 0.0)
    assert np.all(np.isfinite(out[values < 30.0]))
    tensor_out = fitted.denormalize_precipitation(torch.from_numpy(values))
    assert isinstance(tensor_out, torch.Tensor) and bool((tensor_out >= 0).all())
    np.testing.assert_allclose(tensor_out.numpy()[values < 10], out[values < 10], rtol=1e-5)
    assert np.all(out[values <= 0.0] == 0.0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 100.0), offset=st.floats(-500.0, 500.0))
def test_round_trip(seed, scale, offset):
    data = make_dataset(n_time=6, seed=seed, lat=np.array([30.0, 35.0]), lon=np.array([100.0, 105.0, 110.0]))
    for var in LEVEL_VARIABLES:
        data[var] = (data[var] * np.float32(scale) + np.float32(offset)).assign_attrs(data[var].attrs)
    data[PRECIPITATION] = (data[PRECIPITATION] * np.float32(scale)).assign_attrs(data[PRECIPITATION].attrs)
    normalizer = ConvLSTMNormalizer().fit(data)
    back = normalizer.denormalize(normalizer.normalize(data))
    for var in VARIABLES:
        assert back[var].dtype == np.float32
        magnitude = float(np.abs(data[var]).max()) + 1.0
        np.testing.assert_allclose(back[var].values, data[var].values, rtol=1e-5, atol=1e-5 * magnitude, err_msg=var)
        assert back[var].attrs == data[var].attrs


def test_constant_field_normalizes_to_zero():
    data = make_dataset(n_time=8)
    data["GPH"][:, 1] = np.float32(1457.3)
    data[PRECIPITATION][:] = 0.0
    normalizer = ConvLSTMNormalizer().fit(data)
    assert normalizer.stds["GPH"][1] == 1.0 and normalizer.stds[PRECIPITATION] == 1.0
    out = normalizer.normalize(data)
    assert np.all(np.isfinite(out["GPH"].values)) and np.all(np.isfinite(out[PRECIPITATION].values))
    assert np.all(out["GPH"].values[:, 1] == 0.0)
    assert np.all(out[PRECIPITATION].values == 0.0)
    np.testing.assert_allclose(out["GPH"].values[:, 0].std(), 1.0, atol=1e-4)  # the other levels are unaffected


def test_fit_uses_only_the_data_given():
    data = make_dataset(n_time=60, seed=5)
    data["TEM"] = (data["TEM"] + xr.DataArray(np.linspace(0.0, 30.0, 60, dtype=np.float32), dims="time")).assign_attrs(data["TEM"].attrs)
    train, val, _ = create_train_val_test_split(data)
    on_train = ConvLSTMNormalizer().fit(train)
    on_val = ConvLSTMNormalizer().fit(val)
    expected = train["TEM"].astype(np.float64).mean(("time", "lat", "lon")).values
    np.testing.assert_allclose(on_train.means["TEM"], expected, rtol=1e-10)
    assert np.all(on_val.means["TEM"] > on_train.means["TEM"] + 10.0)
    # validation data normalized with training statistics is not re-centred
    assert float(on_train.normalize(val)["TEM"].mean()) > 1.0


def test_normalize_stacked_matches_stacking_normalized(data, fitted):
    raw = stack_channels(data)
    via_stack = fitted.normalize_stacked(raw)
    via_dataset = stack_channels(fitted.normalize(data))
    assert via_stack.dtype == np.float32 and via_stack.shape == raw.shape
    np.testing.assert_allclose(via_stack, via_dataset, rtol=1e-6, atol=1e-6)
    one = fitted.normalize_stacked(raw[3])  # [C, H, W]
    np.testing.assert_allclose(one, via_dataset[3], rtol=1e-6, atol=1e-6)
    assert np.shares_memory(raw, via_stack) is False


def test_normalize_stacked_in_place_overwrites_and_equals_the_copy(data, fitted):
    raw = stack_channels(data)
    copied = fitted.normalize_stacked(raw)
    assert fitted.normalize_stacked(raw, in_place=True) is raw
    np.testing.assert_array_equal(raw, copied)
    with pytest.raises(DataError, match="float32"):
        fitted.normalize_stacked(raw.astype(np.float64), in_place=True)


def test_dataset_given_the_normalizer_equals_the_dataset_of_normalized_data(data, fitted):
    regions = RegionConfig(upstream_lon_min=100.0, upstream_lon_max=110.0)
    from_raw = ConvLSTMDataset(data, 3, regions, include_upstream=True, normalizer=fitted)
    from_normalized = ConvLSTMDataset(fitted.normalize(data), 3, regions, include_upstream=True)
    np.testing.assert_array_equal(from_raw.inputs, from_normalized.inputs)
    with pytest.raises(DataError, match="pressure levels"):
        ConvLSTMDataset(data.isel(level=[0, 1]), 3, regions, include_upstream=True, normalizer=fitted)


def test_normalize_stacked_wrong_channel_count(fitted, data):
    raw = stack_channels(data)
    with pytest.raises(DataError, match=r"Expected 16 channels \(5 variables × 3 levels \+ precipitation\), got 15"):
        fitted.normalize_stacked(raw[:, 1:])


def test_channel_statistics_order(fitted):
    means, stds, is_log = fitted.channel_statistics()
    assert means.shape == (16,) and stds.shape == (16,)
    np.testing.assert_array_equal(means[3:6], fitted.means["GPH"])
    np.testing.assert_array_equal(stds[6:9], fitted.stds["TEM"])
    assert is_log.tolist() == [False] * 15 + [True]


def test_wrong_levels_refused(fitted):
    other = make_dataset(n_time=4, levels=(1000.0, 850.0, 700.0))
    other.attrs["convlstm_source"] = "other_levels.nc"
    with pytest.raises(DataError, match=r"other_levels\.nc has pressure levels \[1000\.0, 850\.0, 700\.0\] hPa but .* fitted on \[1000\.0, 850\.0, 500\.0\]"):
        fitted.normalize(other)
    with pytest.raises(DataError, match="pressure levels"):
        fitted.denormalize(make_dataset(n_time=4, levels=(1000.0, 850.0)))


def test_missing_variable_refused(fitted, data):
    with pytest.raises(DataError, match="lacks U; open it with convlstm.data.open_dataset first"):
        fitted.normalize(data.drop_vars("U"))


def test_unfitted_refused(data):
    normalizer = ConvLSTMNormalizer()
    assert not normalizer.is_fitted
    for call in (lambda: normalizer.normalize(data), normalizer.to_dict, lambda: normalizer.denormalize_precipitation(np.zeros(2))):
        with pytest.raises(DataError, match="has not been fitted"):
            call()


def test_missing_training_values_are_skipped():
    # --nan-policy drop leaves them in the training split (its windows skip them): the statistics skip them too
    data = make_dataset(n_time=4)
    data["U"][0, 0, 0, 0] = np.nan
    fitted = ConvLSTMNormalizer().fit(data)
    u = data["U"].values[:, 0].astype(np.float64)
    np.testing.assert_allclose(fitted.means["U"][0], np.nanmean(u), rtol=1e-9)
    np.testing.assert_allclose(fitted.stds["U"][0], np.nanstd(u), rtol=1e-9)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_training_data_refused():
    data = make_dataset(n_time=4)
    data["U"][:, 0] = np.nan  # no value left at that level
    normalizer = ConvLSTMNormalizer()
    with pytest.raises(DataError, match="U has non-finite values"):
        normalizer.fit(data)
    assert not normalizer.is_fitted and normalizer.means == {}  # a failed fit leaves nothing half-set
    data = make_dataset(n_time=4)
    data[PRECIPITATION][1, 1, 1] = np.inf
    with pytest.raises(DataError, match="precipitation has non-finite values"):
        ConvLSTMNormalizer().fit(data)


def _assert_same_stats(a: ConvLSTMNormalizer, b: ConvLSTMNormalizer) -> None:
    np.testing.assert_array_equal(a.levels, b.levels)
    assert set(a.means) == set(b.means) == set(VARIABLES)
    for var in VARIABLES:
        np.testing.assert_array_equal(a.means[var], b.means[var])
        np.testing.assert_array_equal(a.stds[var], b.stds[var])


def test_save_load_round_trip(tmp_path, data, fitted):
    path = tmp_path / "normalizer.pkl"
    fitted.save(path)
    state = pickle.loads(path.read_bytes())
    assert isinstance(state, dict) and state["levels"] == [1000.0, 850.0, 500.0]
    loaded = ConvLSTMNormalizer().load(path)
    _assert_same_stats(loaded, fitted)
    xr.testing.assert_identical(loaded.normalize(data), fitted.normalize(data))


def test_to_dict_from_dict_round_trip(fitted):
    state = fitted.to_dict()
    assert all(isinstance(v, (list, float)) for v in state["means"].values())
    _assert_same_stats(ConvLSTMNormalizer.from_dict(state), fitted)
    _assert_same_stats(ConvLSTMNormalizer.from_dict(pickle.loads(pickle.dumps(state))), fitted)


def test_load_refuses_missing_and_foreign_files(tmp_path, fitted):
    with pytest.raises(DataError, match=r"absent\.pkl does not exist"):
        ConvLSTMNormalizer().load(tmp_path / "absent.pkl")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match=r"junk\.pkl is not a normalizer file"):
        ConvLSTMNormalizer().load(junk)
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"format_version": 99}))
    with pytest.raises(DataError, match="not in the format"):
        ConvLSTMNormalizer().load(foreign)
    state = fitted.to_dict()
    del state["means"]["V"]
    with pytest.raises(DataError, match="not in the format"):
        ConvLSTMNormalizer.from_dict(state)


@pytest.mark.parametrize("shape", [(2, 1, 3, 4), (2, 3, 4), (3, 4)])
def test_denormalize_tensor_shapes(fitted, shape):
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 1.0, shape).astype(np.float32)
    lat, lon = np.array([30.0, 31.0, 32.0]), np.array([110.0, 111.0, 112.0, 113.0])
    times = np.array(["2020-01-01T00", "2020-01-01T12"], dtype="datetime64[ns]") if len(shape) > 2 else None
    out = fitted.denormalize_tensor(torch.from_numpy(values), lat, lon, times)
    n = shape[0] if len(shape) > 2 else 1
    assert out[PRECIPITATION].dims == ("time", "lat", "lon")
    assert out[PRECIPITATION].shape == (n, 3, 4)
    assert out[PRECIPITATION].attrs["units"] == "mm"
    assert out["lat"].attrs["units"] == "degrees_north"
    expected = fitted.denormalize_precipitation(values.reshape(n, 3, 4))
    np.testing.assert_allclose(out[PRECIPITATION].values, expected, rtol=1e-6)
    assert np.all(out[PRECIPITATION].values >= 0.0)
    np.testing.assert_array_equal(out["lon"].values, lon)
    if times is not None:
        np.testing.assert_array_equal(out["time"].values, times)
    # numpy input gives the same answer as a tensor
    np.testing.assert_array_equal(fitted.denormalize_tensor(values, lat, lon, times)[PRECIPITATION].values,
                                  out[PRECIPITATION].values)


def test_denormalize_tensor_refuses_mismatches(fitted):
    lat, lon = np.arange(3.0), np.arange(4.0)
    with pytest.raises(DataError, match=r"Expected predictions shaped \[B, 1, 3, 4\]"):
        fitted.denormalize_tensor(torch.zeros(2, 1, 4, 3), lat, lon)
    with pytest.raises(DataError, match="Got 3 time coordinates for 2 predictions"):
        fitted.denormalize_tensor(torch.zeros(2, 3, 4), lat, lon, np.arange(3))

"""ConvLSTMConfig: round trip and refusals."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convlstm.config import ConvLSTMConfig
from convlstm.data.split import DEFAULT_TRAIN_RATIO, DEFAULT_VAL_RATIO
from convlstm.errors import DataError


def test_defaults():
    config = ConvLSTMConfig()
    assert config.input_channels == 56  # 5 variables × 11 levels + precipitation
    assert config.kernel_size % 2 == 1
    assert (config.train_ratio, config.val_ratio) == (DEFAULT_TRAIN_RATIO, DEFAULT_VAL_RATIO)
    assert ConvLSTMConfig().hidden_channels is not config.hidden_channels  # no shared mutable default


def test_round_trip_through_dict_and_json():
    config = ConvLSTMConfig(input_channels=16, hidden_channels=[8, 16, 32], kernel_size=5, batch_size=2,
                            learning_rate=3e-4, weight_decay=0.0, use_amp=False, seed=7)
    values = config.to_dict()
    assert values["hidden_channels"] == [8, 16, 32] and values["kernel_size"] == 5 and values["use_amp"] is False
    assert ConvLSTMConfig.from_dict(values) == config
    assert ConvLSTMConfig.from_dict(json.loads(json.dumps(values))) == config
    values["hidden_channels"].append(64)  # the dict is a copy, not a view of the config
    assert config.hidden_channels == [8, 16, 32]


@settings(max_examples=25, deadline=None)
@given(
    input_channels=st.integers(1, 200),
    hidden=st.lists(st.integers(1, 128), min_size=1, max_size=4),
    kernel_half=st.integers(0, 3),
    batch_size=st.integers(1, 64),
    learning_rate=st.floats(1e-6, 1.0),
    weight_decay=st.floats(0.0, 1.0),
    window_size=st.integers(1, 24),
    target_offset=st.integers(1, 8),
)
def test_round_trip_property(input_channels, hidden, kernel_half, batch_size, learning_rate, weight_decay, window_size, target_offset):
    config = ConvLSTMConfig(input_channels=input_channels, hidden_channels=hidden, kernel_size=2 * kernel_half + 1,
                            batch_size=batch_size, learning_rate=learning_rate, weight_decay=weight_decay,
                            window_size=window_size, target_offset=target_offset)
    back = ConvLSTMConfig.from_dict(config.to_dict())
    assert back == config
    assert back.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"kernel_size": 0}, "kernel_size must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"batch_size": True}, "batch_size must be a positive integer"),
        ({"window_size": -1}, "window_size must be a positive integer"),
        ({"target_offset": 0}, "target_offset must be a positive integer"),
        ({"num_epochs": 0}, "num_epochs must be a positive integer"),
        ({"weight_decay": -1e-4}, "weight_decay, high_precip_threshold and early_stopping_patience must not be negative"),
        ({"high_precip_threshold": -1.0}, "must not be negative"),
        ({"early_stopping_patience": -1}, "must not be negative"),
        ({"learning_rate": 0.0}, "learning_rate must be positive"),
        ({"learning_rate": float("nan")}, "learning_rate must be positive"),
        ({"gradient_clip_norm": -1.0}, "gradient_clip_norm must be positive"),
        ({"hidden_channels": []}, "hidden_channels must list one or more positive integers"),
        ({"hidden_channels": [32, 0]}, "hidden_channels must list one or more positive integers"),
    ],
)
def test_bad_values_refused(kwargs, match):
    with pytest.raises(DataError, match=match):
        ConvLSTMConfig(**kwargs)
    with pytest.raises(DataError, match=match):
        ConvLSTMConfig.from_dict({**ConvLSTMConfig().to_dict(), **kwargs})


def test_unknown_key_refused():
    values = ConvLSTMConfig().to_dict()
    values["dropout"] = 0.1
    values["hidden_size"] = 3
    with pytest.raises(DataError, match="Unknown ConvLSTMConfig setting\\(s\\): dropout, hidden_size"):
        ConvLSTMConfig.from_dict(values)


def test_missing_keys_take_defaults():
    assert ConvLSTMConfig.from_dict({"batch_size": 8}) == ConvLSTMConfig(batch_size=8)

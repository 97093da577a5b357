"""The sweep's search space: the default file loads and holds the defaults; a bad file is refused in one line
naming the file, the entry and the fix; suggestions give the settings' own types."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from convlstm.config import ConvLSTMConfig
from convlstm.errors import ConfigError
from convlstm.tuning.space import DEFAULT_SPACE, apply, base_params, load_space


def test_the_default_space_starts_from_the_defaults() -> None:
    space = load_space()
    assert {d.name for d in space} == {"hidden_channels", "learning_rate", "weight_decay", "window_size", "kernel_size",
                                       "high_precip_weight", "batch_size"}
    # every default is in its range, so the first trial of a new study is the default configuration
    assert base_params(space, ConvLSTMConfig()) == {"hidden_channels": "16,32,64", "learning_rate": 1e-3,
                                                    "weight_decay": 1e-2, "window_size": 6, "kernel_size": 3,
                                                    "high_precip_weight": 3.0, "batch_size": 4}
    assert [32, 64] in next(d for d in space if d.name == "hidden_channels").choices  # the module spec's widths


def test_suggestions_have_the_settings_types() -> None:
    space = load_space(DEFAULT_SPACE)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    config = apply(ConvLSTMConfig(), {d.name: d.suggest(trial) for d in space})
    assert isinstance(config.hidden_channels, list) and all(isinstance(c, int) for c in config.hidden_channels)
    assert isinstance(config.window_size, int) and 2 <= config.window_size <= 10
    assert 1e-4 <= config.learning_rate <= 1e-2 and config.kernel_size in (3, 5)
    # numbers stay numbers in the study (and in the MLflow params), lists travel as text
    assert isinstance(trial.params["learning_rate"], float) and isinstance(trial.params["batch_size"], int)
    assert trial.params["hidden_channels"] == ",".join(map(str, config.hidden_channels))


@pytest.mark.parametrize(("text", "message"), [
    ("learning_rate: [1, 2", "not valid YAML"),
    ("- 1\n- 2", "expected a mapping of settings to ranges"),
    ("seed: {low: 0, high: 3}", "'seed' is not a setting a sweep can vary"),
    ("learning_rate: 0.01", "learning_rate needs {choices: [...]} or {low: ..., high: ...}"),
    ("learning_rate: {low: 0.1, high: 0.01}", "learning_rate needs numbers low < high"),
    ("learning_rate: {low: 0, high: 0.01, log: true}", "log needs low > 0"),
    ("window_size: {low: 2.5, high: 8}", "window_size is an integer setting"),
    ("kernel_size: {choices: [3, 4]}", "kernel_size value 4 is not accepted"),
    ("batch_size: {choices: []}", "choices must be a non-empty list"),
    ("hidden_channels: {choices: [[16, 32], [16, 32]]}", "choices must differ"),
    ("weight_decay: {low: 0.001, high: 0.1, lo: 1}", "weight_decay needs"),
])
def test_a_bad_space_is_refused_naming_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="--space .*space.yaml") as caught:
        load_space(path)
    assert message in str(caught.value) and caught.value.setting == "space"
    assert "\n" not in str(caught.value)


def test_a_missing_space_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the file does not exist"):
        load_space(tmp_path / "nope.yaml")

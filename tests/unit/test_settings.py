"""Settings are defined once: the click options, the MLproject file and the validation all follow them."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from convlstm.cli import run_cli, settings_command
from convlstm.config import ConvLSTMConfig, MakeDataSettings, RegionConfig, TrainSettings
from convlstm.errors import ConfigError
from convlstm.mlproject import ENTRY_POINTS, parameter, render
from convlstm.settings import fields_of
from convlstm.tracking.runs import settings_params

REPO = Path(__file__).resolve().parents[2]


def test_committed_mlproject_is_the_one_the_settings_render() -> None:
    assert (REPO / "MLproject").read_text() == render(), "regenerate it: python -m convlstm.mlproject > MLproject"


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_each_entry_point_has_a_flag_per_setting_with_its_help(name: str) -> None:
    module = __import__(f"convlstm.commands.{name}", fromlist=["x"])
    command = next(v for v in vars(module).values() if isinstance(v, click.Command))
    options = {p.name: p for p in command.params if isinstance(p, click.Option) and not p.hidden}
    fields = {f.name: f for f in fields_of(ENTRY_POINTS[name]) if f.spec.cli}
    assert set(options) == set(fields)
    for field in fields.values():
        assert field.flag in options[field.name].opts and options[field.name].help.startswith(field.spec.help)


@pytest.mark.parametrize("name,args", [("train", []), ("infer", ["--checkpoint", "x.pt"]), ("compare", []),
                                       ("make_data", [])])
def test_no_flags_give_the_settings_class_defaults(name: str, args: list[str]) -> None:
    seen = {}
    cls = ENTRY_POINTS[name]

    @settings_command(cls)
    def command(settings: object) -> None:
        seen["settings"] = settings

    result = CliRunner().invoke(command, args)
    assert result.exit_code == 0, result.output
    expected = cls(checkpoint="x.pt") if name == "infer" else cls()
    assert seen["settings"] == expected


@pytest.mark.parametrize("name,args", [("train", []), ("infer", ["--checkpoint", "x.pt"]), ("compare", []),
                                       ("make_data", [])])
def test_mlproject_defaults_need_no_shell_quotes_and_give_the_class_defaults(name: str, args: list[str]) -> None:
    # `mlflow run` logs every parameter as shlex.quote writes it; a default such as "" or "16 32 64" would
    # show as '' or '16 32 64' in the MLflow UI (and MLflow refuses to correct a param afterwards)
    seen = {}
    cls = ENTRY_POINTS[name]

    @settings_command(cls)
    def command(settings: object) -> None:
        seen["settings"] = settings

    passed = []
    for field in fields_of(cls):
        if field.spec.cli and field.spec.mlproject and field.flag not in args:
            text = parameter(field)[1].strip('"')
            assert shlex.quote(text) == text, (field.name, text)
            passed += [field.flag, text]
    result = CliRunner().invoke(command, [*args, *passed])
    assert result.exit_code == 0, result.output
    assert seen["settings"] == (cls(checkpoint="x.pt") if name == "infer" else cls())
    assert all(shlex.quote(text) == text for text in settings_params(seen["settings"]).values())


def test_mlproject_passes_every_parameter_as_its_flag() -> None:
    text = render()
    for name, cls in ENTRY_POINTS.items():
        block = text.split(f"  {name}:\n", 1)[1].split("\n\n", 1)[0]
        for field in fields_of(cls):
            if field.spec.cli and field.spec.mlproject:
                assert f"      {field.name}: {{type: " in block
                assert f"{field.flag} {{{field.name}}}" in block


def test_flags_build_nested_settings() -> None:
    seen = {}

    @settings_command(TrainSettings)
    def train(settings: TrainSettings) -> None:
        seen["settings"] = settings

    result = CliRunner().invoke(train, ["--hidden-channels", "8", "16", "--include-upstream", "--downstream-lat-max", "39",
                                        "--upstream-lat-max", "39", "--data", "", "--use-amp", "false"])
    assert result.exit_code == 0, result.output
    settings = seen["settings"]
    assert settings.model.hidden_channels == [8, 16] and settings.model.use_amp is False
    assert settings.include_upstream is True and settings.regions.downstream_lat_max == 39.0
    assert settings.data is None  # '' (as well as none, the MLproject default) means not given


@pytest.mark.parametrize("args,message", [
    (["--num-epochs", "0"], "num_epochs (--num-epochs) must be an integer >= 1, got 0"),
    (["--kernel-size", "4"], "kernel_size (--kernel-size) must be odd so the grid keeps its size, got 4; use 3 or 5."),
    (["--learning-rate", "-1"], "learning_rate (--learning-rate) must be a number > 0"),
    (["--train-ratio", "0.9", "--val-ratio", "0.2"], "sum to less than 1"),
    (["--include-upstream", "--upstream-lon-max", "115"], "overlaps the downstream region"),
    (["--data", "no/such.nc"], "--data no/such.nc: the file does not exist"),
])
def test_bad_flags_are_one_line_and_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from convlstm.commands.train import train

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train, args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("values,setting", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"), ({"batch_size": True}, "batch_size"),
    ({"hidden_channels": []}, "hidden_channels"), ({"hidden_channels": [32, 0]}, "hidden_channels"),
    ({"learning_rate": float("nan")}, "learning_rate"), ({"weight_decay": -1e-4}, "weight_decay"),
    ({"early_stopping_patience": -1}, "early_stopping_patience"), ({"kernel_size": 2}, "kernel_size"),
])
def test_python_api_refuses_what_the_flags_refuse(values: dict, setting: str) -> None:
    with pytest.raises(ConfigError) as error:
        ConvLSTMConfig(**values)
    assert error.value.setting == setting
    with pytest.raises(ConfigError):
        ConvLSTMConfig.from_dict({**ConvLSTMConfig().to_dict(), **values})


def test_regions_and_demo_cross_checks() -> None:
    with pytest.raises(ConfigError, match="lat_min < lat_max"):
        RegionConfig(downstream_lat_min=40.0, downstream_lat_max=25.0)
    with pytest.raises(ConfigError, match="same latitudes"):
        RegionConfig(upstream_lat_max=50.0).check_upstream()
    with pytest.raises(ConfigError, match="00 or 12 UTC"):
        MakeDataSettings.from_dict({"atmosphere": {"start": "2000-01-01T06"}})
    with pytest.raises(ConfigError, match="whole number"):
        MakeDataSettings.from_dict({"atmosphere": {"resolution": 0.7}})


@hypothesis_settings(max_examples=25, deadline=None)
@given(hidden=st.lists(st.integers(1, 128), min_size=1, max_size=4), kernel_half=st.integers(0, 3),
       learning_rate=st.floats(1e-6, 1.0), lat=st.floats(-80.0, 39.0), upstream=st.booleans())
def test_settings_round_trip_through_json(hidden: list[int], kernel_half: int, learning_rate: float, lat: float,
                                          upstream: bool) -> None:
    settings = TrainSettings(include_upstream=upstream, regions=RegionConfig(downstream_lat_min=lat, upstream_lat_min=lat),
                             model=ConvLSTMConfig(hidden_channels=hidden, kernel_size=2 * kernel_half + 1,
                                                  learning_rate=learning_rate))
    back = TrainSettings.from_dict(json.loads(json.dumps(settings.to_dict())))
    assert back == settings
    values = back.to_dict()
    values["model"]["hidden_channels"].append(7)  # a copy, not a view
    assert back.model.hidden_channels == hidden


def test_unknown_keys_are_refused_not_ignored() -> None:
    with pytest.raises(ConfigError, match=r"Unknown ConvLSTMConfig setting\(s\): dropout"):
        ConvLSTMConfig.from_dict({**ConvLSTMConfig().to_dict(), "dropout": 0.1})


def test_list_defaults_are_not_shared() -> None:
    assert ConvLSTMConfig().hidden_channels is not ConvLSTMConfig().hidden_channels
    first = TrainSettings()
    dataclasses.replace(first).model.hidden_channels.append(1)
    assert TrainSettings().model.hidden_channels == [16, 32, 64]

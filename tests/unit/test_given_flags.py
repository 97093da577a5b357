"""``given_on_command_line``: how ``train --resume`` tells an asked-for ``--num-epochs`` from the default,
from the command line and under ``mlflow run`` (which passes every parameter, defaults included)."""

from __future__ import annotations

import pytest

from convlstm.cli import given_on_command_line, settings_command
from convlstm.config import TrainSettings


def num_epochs_given(args: list[str]) -> bool:
    seen: list[bool] = []

    @settings_command(TrainSettings)
    def command(settings: TrainSettings) -> None:
        seen.append(given_on_command_line("num_epochs"))

    command.main(args=args, standalone_mode=False)
    return seen[0]


@pytest.mark.parametrize(("args", "under_mlflow_run", "expected"), [
    ([], False, False),
    (["--resume", "run"], False, False),
    (["--resume", "run", "--num-epochs", "12"], False, True),  # the default's value, but typed by the user
    (["--resume", "run", "--num-epochs", "30"], False, True),
    (["--resume", "run", "--num-epochs", "12"], True, False),  # what `mlflow run` passes when -P num_epochs is left out
    (["--resume", "run", "--num-epochs", "30"], True, True),
])
def test_num_epochs_counts_as_given_only_when_the_user_chose_it(monkeypatch: pytest.MonkeyPatch, args: list[str],
                                                                under_mlflow_run: bool, expected: bool) -> None:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    if under_mlflow_run:
        monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef")
    assert num_epochs_given(args) is expected


def test_the_given_flags_rebuild_the_same_settings_in_another_process() -> None:
    """``given_args`` (what the training processes of ``--nproc-per-node`` get): only the flags given, each as the
    flag takes it, so that they build the same settings, and a default left out stays left out."""
    from convlstm.cli import given_args
    from convlstm.settings import build

    seen: list[tuple[TrainSettings, list[str]]] = []

    @settings_command(TrainSettings)
    def command(settings: TrainSettings) -> None:
        seen.append((settings, given_args()))

    args = ["--hidden-channels", "8", "16", "--include-upstream", "--learning-rate", "1e-05", "--member", "none",
            "--registered-model-name", "", "--nproc-per-node", "2"]
    command.main(args=args, standalone_mode=False)
    settings, given = seen[0]
    pairs = dict(zip(given[::2], given[1::2]))
    assert pairs == {"--include-upstream": "true", "--hidden-channels": "8,16", "--learning-rate": "1e-05",
                     "--member": "none", "--nproc-per-node": "2", "--registered-model-name": ""}
    command.main(args=given, standalone_mode=False)
    assert seen[1][0] == settings and seen[1][1] == given
    assert "--num-epochs" not in given  # left out: a resumed run keeps its own
    assert build(TrainSettings, command.make_context("train", given).params) == settings

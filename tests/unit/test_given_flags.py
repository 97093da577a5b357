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

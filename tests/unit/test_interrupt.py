"""SIGTERM / SIGINT: a command stops with an :class:`Interrupted` error (exit status 128 + signal), and the
trainer first finishes its optimizer step and writes ``last.pt``, from which training resumes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click
import pytest
import torch
from torch.utils.data import Dataset

from convlstm.checkpoint import LAST_NAME, load_checkpoint
from convlstm.cli import run_cli
from convlstm.data.demo import write_demo_dataset
from convlstm.data.epoch_order import run_shuffled
from convlstm.errors import Interrupted
from convlstm.interrupt import catching_signals
from convlstm.training.trainer import TrainingCallback
from tests.helpers import make_trainer, prepare


@pytest.fixture(scope="module")
def tiny_nc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_dataset(tmp_path_factory.mktemp("data") / "tiny.nc", years=0.1, resolution=5.0)


class SignalOnItem(Dataset):
    """The training windows; fetching window ``at`` sends ``signum`` to this process (as ``kill`` would)."""

    def __init__(self, data: Dataset, at: int, signum: int) -> None:
        self.data, self.at, self.signum = data, at, signum
        self.sent = 0

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        if self.sent < 1 and index == self.at:
            self.sent += 1
            os.kill(os.getpid(), self.signum)
        return self.data[index]


class SignalAfterEpoch(TrainingCallback):
    def __init__(self, epoch: int, signum: int) -> None:
        self.epoch, self.signum, self.checkpoints = epoch, signum, []

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == self.epoch:
            os.kill(os.getpid(), self.signum)

    def on_checkpoint(self, path: Path) -> None:
        self.checkpoints.append(path.name)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_raises_interrupted_and_the_handlers_are_restored(signum: int, code: int) -> None:
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as caught, catching_signals():
        os.kill(os.getpid(), signum)
    assert caught.value.exit_code == code and caught.value.signal_name == signal.Signals(signum).name
    assert signal.getsignal(signum) is before


def test_deferring_records_the_first_signal_and_the_second_stops_at_once() -> None:
    with pytest.raises(Interrupted) as caught, catching_signals(defer=True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == signal.SIGTERM  # recorded, nothing raised
        os.kill(os.getpid(), signal.SIGINT)
    assert caught.value.signum == signal.SIGINT


def test_sigterm_mid_epoch_finishes_the_step_writes_last_pt_and_training_resumes(tiny_nc: Path, tmp_path: Path) -> None:
    prepared = prepare(tiny_nc)
    trainer = make_trainer(prepared, tmp_path / "run", num_epochs=2)
    n_batches = -(-len(prepared.train) // trainer.config.batch_size)
    assert n_batches >= 3
    before = signal.getsignal(signal.SIGTERM)
    # window fetched for the second batch of epoch 1 (shuffled: pick by position in the first epoch's order)
    data = SignalOnItem(prepared.train, at=-1, signum=signal.SIGTERM)
    order = run_shuffled(len(data), torch.Generator().manual_seed(trainer.config.seed))
    data.at = order[trainer.config.batch_size]
    with pytest.raises(Interrupted) as caught:
        trainer.fit(data, prepared.val)
    assert signal.getsignal(signal.SIGTERM) is before
    error = caught.value
    assert error.exit_code == 143
    last = tmp_path / "run" / LAST_NAME
    message = str(error)
    assert "SIGTERM" in message and str(last) in message and f"--resume {last}" in message
    assert "epoch 1, batch 2/" in message  # the step with the signal's batch was finished, then it stopped
    state = load_checkpoint(last)
    assert state["training_state"]["epoch"] == 0 and state["training_state"]["global_step"] == 2
    for key, value in trainer.model.state_dict().items():  # the weights after that step
        torch.testing.assert_close(state["model_state_dict"][key], value)

    resumed = make_trainer(prepared, tmp_path / "run", num_epochs=2)
    resumed.restore(last)
    final = resumed.fit(prepared.train, prepared.val)
    assert final.epoch == 2 and final.global_step == 2 + 2 * n_batches


def test_sigint_during_an_epoch_stops_after_its_checkpoints(tiny_nc: Path, tmp_path: Path) -> None:
    prepared = prepare(tiny_nc)
    callback = SignalAfterEpoch(1, signal.SIGINT)
    trainer = make_trainer(prepared, tmp_path, [callback], num_epochs=3)
    with pytest.raises(Interrupted) as caught:
        trainer.fit(prepared.train, prepared.val)
    assert caught.value.exit_code == 130 and "after epoch 1/3" in str(caught.value)
    assert callback.checkpoints == ["best_model.pt", LAST_NAME]  # the epoch's own; nothing written again
    assert load_checkpoint(tmp_path / LAST_NAME)["training_state"]["epoch"] == 1


def test_run_cli_exits_with_128_plus_the_signal_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)

    @click.command()
    def stopped() -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(SystemExit) as exited:
        run_cli(stopped, [])
    assert exited.value.code == 143
    err = capsys.readouterr().err
    assert err.strip() == "SIGTERM received: stopped."

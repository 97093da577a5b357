"""Progress lines within an epoch when no progress bar is shown (output to a file)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from convlstm.data.demo import write_demo_dataset
from convlstm.training.progress import ProgressLog, format_duration
from tests.helpers import make_trainer, prepare


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (12, "12s"), (245, "4m05s"), (3720, "1h02m")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_line_per_interval_with_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    progress = ProgressLog("epoch 3/10", total=40, interval_s=30.0, clock=clock)
    caplog.set_level(logging.INFO, "convlstm.training.progress")
    clock.now += 10
    progress.update(4, 32, 0.5)  # before the interval: silent
    assert caplog.messages == []
    clock.now += 20  # 30 s in, 10 of 40 batches, 80 windows
    progress.update(10, 80, 0.25)
    clock.now += 29
    progress.update(19, 152, 0.2)  # 29 s after the last line: silent
    clock.now += 1
    progress.update(20, 160, 0.125)
    assert caplog.messages == [
        "epoch 3/10  batch 10/40  loss 0.2500  2.7 samples/s  ETA 1m30s",
        "epoch 3/10  batch 20/40  loss 0.1250  2.7 samples/s  ETA 1m00s",
    ]


def test_trainer_logs_progress_when_output_is_not_a_terminal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prepared = prepare(write_demo_dataset(tmp_path / "tiny.nc", years=0.1, resolution=5.0))
    trainer = make_trainer(prepared, tmp_path / "run", num_epochs=1)
    trainer.progress_interval_s = 0.0  # a line after every batch
    caplog.set_level(logging.INFO, "convlstm.training.progress")
    trainer.fit(prepared.train, prepared.val)  # pytest captures stderr: not a terminal, so no bar
    n_batches = -(-len(prepared.train) // trainer.config.batch_size)
    lines = caplog.messages
    assert [line.split("  ")[1] for line in lines] == [f"batch {i}/{n_batches}" for i in range(1, n_batches + 1)]
    assert all(line.startswith("epoch 1/1  ") and "samples/s" in line and "ETA" in line for line in lines)
    assert lines[-1].endswith("ETA 0s")

"""``--compile-gates`` end to end at library level: a trainer compiles every cell's gate arithmetic and trains as the
eager one does. In a file of its own: compiling takes most of a minute on 2 cores without Inductor's cache (as in
CI), and the test workers take whole files, so alone it shares that minute with no other slow test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convlstm.data.demo import write_demo_dataset
from tests.helpers import make_trainer, prepare


def test_compiled_gates_train_as_the_eager_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--compile-gates``: the trainer compiles every cell's gate arithmetic (the eager backward, ``_Gates``, never
    runs), and an epoch ends at the weights and validation loss of the eager arithmetic, to float rounding."""
    prepared = prepare(write_demo_dataset(tmp_path / "tiny.nc", years=0.1, resolution=5.0))
    trainers = {name: make_trainer(prepared, tmp_path / name, num_epochs=1, compile_gates=name == "compiled")
                for name in ("eager", "compiled")}
    cells = {name: t.model.cells for name, t in trainers.items()}
    assert len(cells["compiled"]) == 3 and all(cell.gates_compiled for cell in cells["compiled"])
    assert not any(cell.gates_compiled for cell in cells["eager"])
    states = {"eager": trainers["eager"].fit(prepared.train, prepared.val)}
    monkeypatch.setattr("convlstm.model._Gates.apply", lambda *args: pytest.fail("the eager gates ran"))
    states["compiled"] = trainers["compiled"].fit(prepared.train, prepared.val)
    assert states["compiled"].history[0]["val_loss"] == pytest.approx(states["eager"].history[0]["val_loss"], rel=1e-4)
    for name, value in trainers["eager"].model.state_dict().items():
        torch.testing.assert_close(trainers["compiled"].model.state_dict()[name], value, rtol=1e-4, atol=1e-5)

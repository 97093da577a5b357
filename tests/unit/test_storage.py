"""A full disk or a folder we may not write: one line naming the path and the cause, refused before
training where it can be seen, and nothing half-written left behind."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
from pathlib import Path

import click
import pytest
import torch

from convlstm import atomic
from convlstm.atomic import atomic_path, check_writable
from convlstm.checkpoint import checkpoint_space, load_checkpoint, save_checkpoint
from convlstm.cli import run_cli
from convlstm.errors import StorageError
from convlstm.model import ConvLSTMUNet

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.endswith(".tmp"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device that is always full")
def test_checkpoint_on_a_full_device_is_one_line_and_keeps_the_previous_file(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    target = save_checkpoint(tmp_path / "last.pt", {"weights": torch.arange(4.0)})
    good = target.read_bytes()
    # torch writes the checkpoint's bytes into /dev/full, which fails every write with ENOSPC
    monkeypatch.setattr("convlstm.checkpoint.open", lambda path, mode: builtins.open("/dev/full", mode), raising=False)
    with pytest.raises(StorageError) as caught:
        save_checkpoint(target, {"weights": torch.zeros(100_000)})
    message = str(caught.value)
    assert message == f"Cannot write {target}: No space left on device; free some space there or choose another output directory."
    assert "\n" not in message
    assert target.read_bytes() == good and leftovers(tmp_path) == []


@pytest.mark.parametrize(("code", "cause"), [(errno.ENOSPC, "No space left on device"), (errno.EDQUOT, "disk quota exceeded"),
                                             (errno.EROFS, "not writable (read-only file system)")])
def test_a_write_failing_half_way_leaves_nothing(tmp_path: Path, code: int, cause: str) -> None:
    target = tmp_path / "out" / "predictions.nc"
    with pytest.raises(StorageError, match=rf"^Cannot write {target}: {cause.replace('(', '.').replace(')', '.')};"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a file")
            raise OSError(code, os.strerror(code))
    assert not target.exists() and leftovers(target.parent) == []


def test_other_errors_are_not_disguised(tmp_path: Path) -> None:
    with pytest.raises(OSError) as caught, atomic_path(tmp_path / "x.bin"):
        raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(caught.value, StorageError)


@pytest.mark.skipif(AS_ROOT, reason="root bypasses file permissions, so chmod cannot make a folder read-only")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    try:
        with pytest.raises(StorageError, match=r"not writable \(permission denied\)") as caught:
            check_writable(folder, setting="output_dir")
        assert caught.value.setting == "output_dir" and str(folder) in str(caught.value)
        with pytest.raises(StorageError, match="not writable"):
            check_writable(folder / "sub")
    finally:
        folder.chmod(0o700)


def test_a_folder_that_refuses_writes_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a read-only folder does to the probe file, for every user (root included)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(atomic.tempfile, "TemporaryFile", refuse)
    with pytest.raises(StorageError, match=rf"^Cannot write {tmp_path}: not writable \(permission denied\); make it writable"):
        check_writable(tmp_path, setting="output_dir")


def test_too_little_free_space_is_refused_before_training(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    check_writable(tmp_path, required_bytes=free // 2)
    with pytest.raises(StorageError, match=rf"^Cannot write {tmp_path}: No space left on device \(it has \d+ MiB free, "
                                           r"the outputs need about \d+ MiB\)"):
        check_writable(tmp_path, required_bytes=free + 2**40)
    assert leftovers(tmp_path) == [] and list(tmp_path.iterdir()) == []  # the probe file is gone


def test_checkpoint_space_bounds_what_the_checkpoints_take(tmp_path: Path) -> None:
    model = ConvLSTMUNet(11, [4, 8], 1, 3)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 2, 11, 8, 8)).sum().backward()
    optimizer.step()  # AdamW's moment estimates now exist: a checkpoint's real size
    path = save_checkpoint(tmp_path / "c.pt", {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()})
    per_file = checkpoint_space(model, num_epochs=1, checkpoint_frequency=2) / 3  # best, last, one temporary
    assert 0.8 * path.stat().st_size <= per_file <= 1.5 * path.stat().st_size
    assert checkpoint_space(model, 10, 5) == 5 * per_file  # and two periodic ones
    assert load_checkpoint(path)["format_version"] == 1


def test_run_cli_turns_a_stray_full_disk_into_one_line(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)

    @click.command()
    def full() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/mlartifacts/x/last.pt")

    with pytest.raises(SystemExit) as exited:
        run_cli(full, [])
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == "Error: No space left on device: /data/mlartifacts/x/last.pt"

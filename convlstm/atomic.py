"""Write files so that a crash never leaves a half-written one in place of a good one, and say in one
line why a file could not be written (disk full, read-only folder) instead of a traceback."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from convlstm.errors import StorageError

#: Why a write can fail through no fault of the program, and what the user can do about it.
_FREE = "free some space there or choose another output directory"
_PERMIT = "make it writable or choose another output directory"
WRITE_FAILURES = {
    errno.ENOSPC: ("No space left on device", _FREE),
    errno.EDQUOT: ("disk quota exceeded", _FREE),
    errno.EACCES: ("not writable (permission denied)", _PERMIT),
    errno.EPERM: ("not writable (operation not permitted)", _PERMIT),
    errno.EROFS: ("not writable (read-only file system)", _PERMIT),
}


@contextmanager
def explained_write_errors(path: str | os.PathLike[str], setting: str | None = None) -> Iterator[None]:
    """Turn a write that fails for a full disk or a folder we may not write (:data:`WRITE_FAILURES`) into
    a one-line :class:`StorageError` naming ``path``; other errors (bugs) pass unchanged.

    Parameters
    ----------
    path : path-like
        The file or folder written inside the block.
    setting : str, optional
        The setting that chose the place (``output_dir``), named by the command line.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES:
            raise
        cause, fix = WRITE_FAILURES[exc.errno]
        raise StorageError(f"Cannot write {path}: {cause}; {fix}.", setting) from exc


def check_writable(directory: str | os.PathLike[str], required_bytes: int = 0, setting: str | None = None) -> None:
    """Refuse a folder before any work when it cannot take the outputs: create it, write and remove a
    probe file, and compare its free space with ``required_bytes``.

    Parameters
    ----------
    directory : path-like
        The output folder (created if missing).
    required_bytes : int
        Space the outputs will need at most.
    setting : str, optional
        The setting that chose the folder, named in the error.

    Raises
    ------
    StorageError
        When the folder is not writable or has less than ``required_bytes`` free.
    """
    directory = Path(directory)
    with explained_write_errors(directory, setting):
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    free = shutil.disk_usage(directory).free
    if free < required_bytes:
        raise StorageError(f"Cannot write {directory}: No space left on device (it has {free / 2**20:.0f} MiB free, "
                           f"the outputs need about {required_bytes / 2**20:.0f} MiB); {_FREE}.", setting)


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` in one rename.

    The temporary file lives in the same directory so ``os.replace`` is atomic; on failure it is removed
    and ``target`` is untouched. A full disk or a read-only folder raises :class:`StorageError`.

    Parameters
    ----------
    target : path-like
        The file to write; its folder is created.

    Yields
    ------
    pathlib.Path
        The temporary file to write to.
    """
    target = Path(target)
    with explained_write_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual permissions
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically.

    Parameters
    ----------
    target : path-like
        The file to write.
    data : bytes
        Its whole contents.

    Returns
    -------
    pathlib.Path
        ``target``.
    """
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)

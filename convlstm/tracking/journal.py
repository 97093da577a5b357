"""The local record of a training's MLflow run: every call the run would make (params, metrics, artifacts,
the model, its end) appended to ``<output_dir>/tracking/journal.jsonl`` before anything is sent.

The training only ever appends to this file, so a slow, restarting or absent tracking server never
holds up an epoch; :mod:`convlstm.tracking.upload` sends the entries in order, in a background thread
during training and with ``python -m entrypoints.sync`` afterwards. Which entries are on the server,
and which server run they went to, is kept beside it in ``state.json``.

An entry names its run by a local key (a training resumed into the same folder appends a second run's
entries), so the record can be replayed to a server that has never seen the run.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from convlstm.atomic import atomic_write_bytes
from convlstm.errors import TrackingError

JOURNAL_DIR = "tracking"
ENTRIES_NAME = "journal.jsonl"
STATE_NAME = "state.json"
LOCK_NAME = "journal.lock"
SYNC_HINT = "python -m entrypoints.sync {}"


def now_ms() -> int:
    """The time as MLflow stores it (milliseconds since the epoch)."""
    return int(time.time() * 1000)


@dataclass
class JournalState:
    """What has been sent: the number of entries applied, and the server run of each local run key.

    Parameters
    ----------
    applied : int
        Entries ``[0, applied)`` are on the server.
    runs : dict of str to str
        Local run key → MLflow run id.
    tracking_uri : str, optional
        The store they were sent to.
    """

    applied: int = 0
    runs: dict[str, str] = field(default_factory=dict)
    tracking_uri: str | None = None


class Journal:
    """The entries of one output folder's runs and how far they have been sent.

    Parameters
    ----------
    output_dir : pathlib.Path
        The training's output folder; the journal lives in its ``tracking/`` subfolder.
    """

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.folder = self.output_dir / JOURNAL_DIR
        self._append_lock = threading.Lock()
        self._appended = threading.Event()
        self._read_lock = threading.Lock()
        self._read: list[dict[str, Any]] = []  # the entries parsed so far, from the file's first _read_bytes
        self._read_bytes = 0
        self._cut = False  # a line cut short by a crash: nothing after it is read

    @property
    def entries_path(self) -> Path:
        """The append-only file of entries, one JSON object a line."""
        return self.folder / ENTRIES_NAME

    def exists(self) -> bool:
        """Whether this folder holds a journal."""
        return self.entries_path.is_file()

    def writer_lock(self) -> FileLock:
        """The lock a process holds while it appends to or sends this journal (one at a time)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.folder / LOCK_NAME), timeout=0)

    def new_run_key(self) -> str:
        """A key for a run not known to any server yet."""
        return uuid.uuid4().hex

    def append(self, entry: dict[str, Any]) -> None:
        """Append one entry (flushed to the disk: a killed training keeps every entry it made) and wake the sender.

        Parameters
        ----------
        entry : dict
            ``{"op": ..., "run": <key>, ...}``, JSON-serialisable.
        """
        line = json.dumps(entry, allow_nan=True) + "\n"
        with self._append_lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.entries_path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
        self._appended.set()

    def wait_for_entries(self, timeout: float) -> None:
        """Block until an entry is appended (or :meth:`wake`) since the last wait, or ``timeout`` seconds pass (the
        sender's idle wait; an entry appended while it was sending ends the wait at once)."""
        if self._appended.wait(timeout):
            self._appended.clear()  # before the sender reads the file again: a later entry sets it anew

    def wake(self) -> None:
        """Wake a sender waiting for entries (e.g. to stop it)."""
        self._appended.set()

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, in order (a last line cut short by a crash is left out). Only the lines appended since the
        last call are read and parsed: the sender and the end of training ask often, the file only grows."""
        if not self.exists():
            return []
        with self._read_lock:
            if not self._cut:
                with open(self.entries_path, "rb") as handle:
                    handle.seek(self._read_bytes)
                    data = handle.read()
                complete = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next call
                self._read_bytes += len(complete)
                for line in complete.splitlines():
                    try:
                        self._read.append(json.loads(line))
                    except json.JSONDecodeError:  # only a line cut short by a crash: it was never complete
                        self._cut = True
                        break
            return list(self._read)

    def state(self) -> JournalState:
        """How far the journal has been sent."""
        path = self.folder / STATE_NAME
        if not path.is_file():
            return JournalState()
        return JournalState(**json.loads(path.read_text(encoding="utf-8")))

    def save_state(self, state: JournalState) -> None:
        """Record progress atomically (a crash leaves the previous state, and the next send repeats an entry
        at most: :mod:`convlstm.tracking.upload` makes every entry safe to repeat)."""
        atomic_write_bytes(self.folder / STATE_NAME, json.dumps(asdict(state), indent=1).encode())

    def pending(self) -> list[dict[str, Any]]:
        """The entries not sent yet."""
        return self.entries()[self.state().applied:]

    def newest_run_id(self) -> str | None:
        """The server run of the newest run recorded here (None if it was never sent)."""
        keys = [entry["run"] for entry in self.entries() if entry["op"] == "start"]
        return self.state().runs.get(keys[-1]) if keys else None

    def relative(self, path: Path) -> str:
        """``path`` relative to the output folder when inside it (the record survives moving the folder)."""
        path = Path(path).resolve()
        try:
            return str(path.relative_to(self.output_dir.resolve()))
        except ValueError:
            return str(path)

    def resolve(self, stored: str) -> Path:
        """A path as :meth:`relative` stored it, back to a file on this machine."""
        path = Path(stored)
        return path if path.is_absolute() else self.output_dir / path

    def check_sent(self, what: str) -> None:
        """Refuse to go on (e.g. resume) from a folder whose record is not all on the server yet.

        Parameters
        ----------
        what : str
            What was asked, e.g. ``--resume runs/baseline``.

        Raises
        ------
        TrackingError
            Entries are pending: the run on the server is incomplete until they are sent.
        """
        pending = self.pending()
        if pending:
            raise TrackingError(f"{what}: {len(pending)} entries of the run's record in {self.folder} are not on the "
                                f"tracking server yet; send them first with: {SYNC_HINT.format(self.output_dir)}")

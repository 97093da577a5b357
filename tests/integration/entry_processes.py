"""Entry points started as processes of their own against the team's tracking server, as a researcher starts
them, each under :mod:`tests.integration.request_log` so that a test can read what it asked of the server."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.request_log import read_requests
from tests.integration.workspace import TINY_ARGS

TIMEOUT_S = 300
FINISHED = re.compile(r"Finished \w+ run ([0-9a-f]{32})")


@dataclass
class Process:
    """An entry point started under the request recorder, its output and requests in files named after it."""

    name: str
    popen: subprocess.Popen[bytes]
    folder: Path

    @classmethod
    def start(cls, name: str, module: str, args: list[object], folder: Path, env: dict[str, str]) -> Process:
        """``python -m MODULE ARGS`` from ``folder`` (``mlflow`` and ``mlflow_run_args`` for ``mlflow run``)."""
        with (folder / f"{name}.out").open("wb") as out:
            popen = subprocess.Popen([sys.executable, "-m", "tests.integration.request_log",
                                      str(folder / f"{name}.requests"), module, *map(str, args)],
                                     cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
        return cls(name, popen, folder)

    @property
    def output(self) -> str:
        return (self.folder / f"{self.name}.out").read_text(errors="replace")

    def finish(self) -> None:
        """Wait for the process; fails the test, with the end of its output, unless it ended well."""
        code = self.popen.wait(timeout=TIMEOUT_S)
        assert code == 0, f"{self.name} exited with {code}:\n{self.output[-3000:]}"

    @property
    def run_id(self) -> str:
        """The run a finished training names in its last line."""
        found = FINISHED.search(self.output)
        assert found, f"{self.name} names no run:\n{self.output[-3000:]}"
        return found.group(1)

    def requests(self, host: str) -> list[dict[str, Any]]:
        """What the process asked of ``host``, in order (``mlflow run``: its launcher's requests only)."""
        return [entry for entry in read_requests(self.folder / f"{self.name}.requests") if entry["host"] == host]


def train(name: str, kind: str, epochs: int, folder: Path, env: dict[str, str], experiment: str,
          model: str) -> Process:
    """``python -m entrypoints.train`` on the tiny data (``folder/tiny.nc``), a tiny model for ``epochs`` epochs."""
    args = ["--data", folder / "tiny.nc", "--output-dir", folder / name, *TINY_ARGS, "--num-epochs", epochs,
            "--include-upstream", str(kind == "upstream").lower(), "--experiment-name", experiment,
            "--registered-model-name", model]
    return Process.start(name, "entrypoints.train", args, folder, env)

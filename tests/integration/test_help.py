"""``--help`` of every entry point answers without loading torch, mlflow or xarray, and prints no warning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from convlstm.mlproject import ENTRY_POINTS
from tests.helpers import REPO

HEAVY = ("torch", "mlflow", "xarray", "pandas", "matplotlib")
#: The MLproject's entry points, and the commands that are not one (sync sends a training's record afterwards).
COMMANDS = [*ENTRY_POINTS, "sync"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_loads_no_heavy_library_and_warns_nothing(name: str) -> None:
    probe = (f"import sys, runpy; sys.argv = ['{name}', '--help']\n"
             f"try:\n    runpy.run_module('entrypoints.{name}', run_name='__main__')\n"
             f"except SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
             f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-W", "default", "-c", probe], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "LOADED []" in done.stdout, done.stdout[-500:]
    assert done.stderr == ""


@pytest.mark.parametrize("name", COMMANDS)
def test_installed_command_runs_outside_the_repository(name: str, tmp_path) -> None:
    """``pip install`` puts ``convlstm-<name>`` beside the interpreter; it must not need the repository as cwd."""
    script = Path(sys.executable).parent / f"convlstm-{name.replace('_', '-')}"
    assert script.is_file(), f"{script} missing: install the package (pip install -e .)"
    done = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: convlstm-{name.replace('_', '-')} [OPTIONS]")

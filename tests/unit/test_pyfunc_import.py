"""Defining the served model's class makes MLflow check ``predict``'s type hints: no warning may come of it."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO


def test_defining_the_served_model_warns_nothing() -> None:
    # the file MLflow runs to rebuild the model: it imports convlstm.pyfunc and makes the model
    done = subprocess.run([sys.executable, "-W", "default", "-c", "import convlstm.pyfunc_entry"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "type hint" not in done.stderr.lower(), done.stderr
    assert "Warning" not in done.stderr, done.stderr

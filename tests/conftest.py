"""Small, fast datasets in the library's layout, built in memory for the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from convlstm.data.schema import CF_ATTRS, LEVEL_VARIABLES, PRECIPITATION
from convlstm.data.demo import write_demo_dataset
from convlstm.pyfunc import DEFAULT_REGISTERED_NAME

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def subprocess_env(directory: Path) -> dict[str, str]:
    """Environment for entry-point subprocesses: a private tracking store, demo cache and temp dir,
    the repo importable, this venv's executables first, one thread (the machine is shared)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{directory}/mlflow.db",
        "CONVLSTM_CACHE_DIR": str(directory / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(directory / "tmp"),  # downloaded models land here, not in the machine's /tmp
    })
    (directory / "tmp").mkdir(parents=True, exist_ok=True)
    return env


def run_module(directory: Path, module: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` from ``directory`` against its tracking store."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=directory, env=subprocess_env(directory),
                          capture_output=True, text=True, timeout=timeout, check=False)


class Workspace:
    """A temporary directory with tiny demo data, its own tracking store, and tiny baseline and upstream
    models trained through the train entry point (``train()``), for the end-to-end tests."""

    EXPERIMENT = "t"
    KINDS = ("baseline", "upstream")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tiny = root / "tiny.nc"
        self.train_dirs = {kind: root / f"train-{kind}" for kind in self.KINDS}
        self.run_ids: dict[str, str] = {}

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root}/mlflow.db"

    def client(self):  # noqa: ANN201 - MlflowClient, imported lazily
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def experiment_id(self) -> str:
        return self.client().get_experiment_by_name(self.EXPERIMENT).experiment_id

    def runs(self, filter_string: str = "") -> list:
        return self.client().search_runs([self.experiment_id()], filter_string, max_results=1000)

    def model_version(self, kind: str) -> str:
        (version,) = self.client().search_model_versions(f"name='{DEFAULT_REGISTERED_NAME}' and run_id='{self.run_ids[kind]}'")
        return version.version

    def train(self, kinds: tuple[str, ...] = KINDS) -> "Workspace":
        """Write the tiny demo file and train the models of ``kinds`` on it (2 epochs, hidden 4 8); nothing
        lands in the repository."""
        absent = [name for name in ("mlruns", "mlflow.db", "outputs") if not (REPO / name).exists()]
        write_demo_dataset(self.tiny, years=0.2, resolution=5.0)
        for kind in kinds:
            done = run_module(self.root, "entrypoints.train", "--data", self.tiny,
                              *(["--include-upstream"] if kind == "upstream" else []), "--hidden-channels", "4", "8",
                              "--num-epochs", "2", "--batch-size", "8", "--output-dir", self.train_dirs[kind],
                              "--experiment-name", self.EXPERIMENT)
            assert done.returncode == 0, done.stderr[-3000:]
            (run,) = self.runs(f"tags.experiment_type = '{kind}'")
            assert run.info.status == "FINISHED"
            self.run_ids[kind] = run.info.run_id
        assert not [name for name in absent if (REPO / name).exists()], "training wrote into the repository"
        assert (self.root / "mlruns").is_dir()
        return self


def assert_png(path: Path) -> None:
    """A real, non-trivial PNG, written atomically (no temporary file left beside it)."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def make_dataset(
    n_time: int = 20,
    lat: np.ndarray | None = None,
    lon: np.ndarray | None = None,
    levels: tuple[float, ...] = (1000.0, 850.0, 500.0),
    seed: int = 0,
    start: str = "2000-01-01",
) -> xr.Dataset:
    """Random but physically ordered fields (TEM > DPT, GPH rising with height), precipitation >= 0."""
    rng = np.random.default_rng(seed)
    lat = np.arange(25.0, 41.0, 3.0) if lat is None else lat
    lon = np.arange(70.0, 126.0, 5.0) if lon is None else lon
    shape = (n_time, len(levels), len(lat), len(lon))
    height = np.array([110.0 + 7.0 * (1000.0 - p) * 2.2 for p in levels])[None, :, None, None]
    tem = 290.0 - 0.0065 * height + rng.normal(0, 2, shape)
    fields = {
        "TEM": tem,
        "DPT": tem - 2.0 - rng.gamma(2.0, 2.0, shape),
        "GPH": height + rng.normal(0, 30, shape),
        "U": 10.0 + rng.normal(0, 5, shape),
        "V": rng.normal(0, 3, shape),
    }
    precip = np.where(rng.random(shape[:1] + shape[2:]) < 0.5, 0.0, rng.gamma(1.0, 5.0, shape[:1] + shape[2:]))
    data_vars = {var: (("time", "level", "lat", "lon"), fields[var].astype(np.float32), CF_ATTRS[var]) for var in LEVEL_VARIABLES}
    data_vars[PRECIPITATION] = (("time", "lat", "lon"), precip.astype(np.float32), CF_ATTRS[PRECIPITATION])
    coords = {
        "time": pd.date_range(start, periods=n_time, freq="12h"),
        "level": np.asarray(levels, dtype=np.float64),
        "lat": lat,
        "lon": lon,
    }
    return xr.Dataset(data_vars, coords=coords)


@pytest.fixture
def small_dataset() -> xr.Dataset:
    return make_dataset()

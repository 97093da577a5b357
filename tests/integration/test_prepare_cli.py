"""The prepare entry point end to end: raw input → a prepared store (an MLflow run with its inputs and the
store as datasets) → training, inference and comparison reading the store; real ERA5 as the CDS delivers it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.era5_sample import era5_folder, requires_sample
from tests.integration.workspace import TINY_ARGS, all_runs, artifact_paths, mlflow_run, run_module, subprocess_env

pytestmark = pytest.mark.slow


def _sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _context(dataset_input) -> str:  # noqa: ANN001 - an MLflow DatasetInput
    return {tag.key: tag.value for tag in dataset_input.tags}["mlflow.data.context"]


def test_mlflow_run_prepare_then_train_and_infer_from_the_store(tracked: Path, tiny_nc: Path) -> None:
    store = tracked / "prepared.zarr"
    result = mlflow_run(tracked, "prepare", {"data": tiny_nc, "output": store, "time_chunk": 4})
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient()
    (run,) = all_runs(client)
    assert run.info.status == "FINISHED" and run.data.tags["run_type"] == "prepare"
    assert run.data.params["output"] == str(store) and run.data.params["time_step"] == "12"
    assert run.data.metrics["prepare/time_steps"] == 73 and run.data.metrics["prepare/store_gb"] > 0
    assert {"provenance.json", "prepare.log"} <= artifact_paths(client, run.info.run_id)
    inputs = {_context(item): item.dataset for item in run.inputs.dataset_inputs}
    assert inputs["raw input"].name == "tiny.nc" and inputs["raw input"].digest == _sha16(tiny_nc)
    assert inputs["prepared store"].name == "prepared.zarr" and inputs["prepared store"].digest == _sha16(store / "zarr.json")
    provenance = json.loads((store / "zarr.json").read_text())["attributes"]["provenance"]
    assert provenance["inputs"] == [{"path": str(tiny_nc), "size_bytes": tiny_nc.stat().st_size, "sha256": _sha16(tiny_nc)}]

    out = tracked / "trained"
    # A temporary folder too deep for a Unix socket's name: read-ahead workers must not hand batches over
    # through one (with torch's shared-memory tensors, training waited forever here).
    deep = tracked / ("d" * 110)
    deep.mkdir()
    result = subprocess.run([sys.executable, "-m", "entrypoints.train", "--data", str(store), "--include-upstream",
                             "true", "--output-dir", str(out), *map(str, TINY_ARGS)], cwd=tracked, capture_output=True,
                            text=True, timeout=300, env={**subprocess_env(tracked), "TMPDIR": str(deep)}, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    (trained,) = [r for r in all_runs(client) if r.data.tags.get("run_type") == "training"]
    assert trained.info.status == "FINISHED"
    assert trained.data.params["data_path"] == str(store)
    assert trained.data.params["data_digest"] == _sha16(store / "zarr.json")
    assert "test_rmse_mm" in trained.data.metrics

    result = run_module(tracked, "entrypoints.infer", "--checkpoint", out, "--data", store, "--output-dir",
                        tracked / "infer")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tracked / "infer" / "predictions.nc").is_file()

    before = (store / "zarr.json").read_bytes()
    again = run_module(tracked, "entrypoints.prepare", "--data", tiny_nc, "--output", store)
    assert again.returncode != 0 and f"{store} already exists" in again.stderr
    assert "Traceback" not in again.stderr and (store / "zarr.json").read_bytes() == before


@requires_sample
def test_real_era5_files_prepare_and_train(tracked: Path) -> None:
    """The real q, u, v, tp (hourly, 20 levels, 0.25°) with written t and z: straight from the folder and
    through a store, the same windows."""
    folder = era5_folder(tracked / "era5")
    regions = ["--downstream-lat-min", 46, "--downstream-lat-max", 54, "--downstream-lon-min", 6, "--downstream-lon-max",
               10, "--upstream-lat-min", 46, "--upstream-lat-max", 54, "--upstream-lon-min", 1, "--upstream-lon-max", 6]
    hourly = ["--time-step", 1, "--window-size", 2]
    store = tracked / "era5.zarr"
    result = run_module(tracked, "entrypoints.prepare", "--data", folder, "--output", store, "--time-step", 1, *regions)
    assert result.returncode == 0, result.stderr[-3000:]
    params = {}
    for name, data in (("raw", str(folder / "*.nc")), ("store", store)):
        result = run_module(tracked, "entrypoints.train", "--data", data, "--include-upstream", "true",
                            "--output-dir", tracked / name, *hourly, *regions, *TINY_ARGS)
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = [r for r in all_runs(MlflowClient()) if r.data.params.get("data_path") == str(data)]
        assert run.info.status == "FINISHED"
        params[name] = run.data.params
    for key in ("data_time_start", "data_time_end", "n_levels", "input_channels", "input_height", "input_width",
                "n_windows_train", "n_windows_val", "n_windows_test"):
        assert params["raw"][key] == params["store"][key], key
    assert params["raw"]["n_levels"] == "20" and params["raw"]["input_channels"] == str(5 * 20 + 1)

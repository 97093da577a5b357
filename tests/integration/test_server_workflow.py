"""The README's workflow against the team's tracking server, as the researcher: train the baseline
(``python -m entrypoints.train``) and the upstream model (``mlflow run . -e train``), compare them (``mlflow run .
-e compare``: the experiment's newest trainings; the better one's registered version gets the alias ``champion``),
serve ``models:/<name>@champion`` with ``mlflow models serve``, which fetches the model through the server with
the researcher's credentials, and ask it over HTTP for a forecast of a raw window. The reader downloads the
champion too, but may not move an alias.
"""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest

from convlstm.data import RegionConfig, crop_regions, open_dataset, stack_channels
from convlstm.forecast import load_forecast_model
from convlstm.scoring_client import PARQUET_CONTENT_TYPE, ScoringServer, request_body, request_parquet
from tests.integration.entry_processes import Process, train
from tests.integration.server_stack import as_user, refused, user_env
from tests.integration.workspace import mlflow_run_args

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)

EPOCHS = 1
#: ``TINY_ARGS`` as the MLproject's parameters.
TINY_PARAMS = {"hidden_channels": "4,8", "batch_size": 8, "num_epochs": EPOCHS, "visualize": "false"}


def test_train_compare_and_serve_the_champion_through_the_server(server_stack, tiny_nc: Path, tmp_path: Path) -> None:
    (tmp_path / "tiny.nc").symlink_to(tiny_nc)
    env = user_env(server_stack, "researcher", tmp_path)
    experiment, model = f"workflow-{uuid.uuid4().hex[:8]}", f"workflow-{uuid.uuid4().hex[:8]}"
    with as_user(server_stack, "researcher") as client:
        # created before the two trainings start together: `mlflow run` would otherwise race the other to create it
        experiment_id = client.create_experiment(experiment)

    began = time.monotonic()
    trainings = {
        "baseline": train("baseline", "baseline", EPOCHS, tmp_path, env, experiment, model),
        "upstream": Process.start("upstream", "mlflow", mlflow_run_args("train", {
            "data": tmp_path / "tiny.nc", "output_dir": tmp_path / "upstream", **TINY_PARAMS,
            "include_upstream": "true", "registered_model_name": model}, experiment), tmp_path, env),
    }
    for process in trainings.values():
        process.finish()
    trained = time.monotonic()
    run_ids = {kind: process.run_id for kind, process in trainings.items()}
    compare = Process.start("compare", "mlflow", mlflow_run_args("compare", {
        "data": tmp_path / "tiny.nc", "n_boot": 100, "output_dir": tmp_path / "compare",
        "registered_model_name": model}, experiment), tmp_path, env)
    compare.finish()
    compared = time.monotonic()

    # compare scored the two new runs (the experiment's newest) and made the one with the lower RMSE the champion
    with as_user(server_stack, "researcher") as client:
        (comparison,) = client.search_runs([experiment_id], "tags.run_type = 'comparison'")
        assert comparison.info.status == "FINISHED"
        assert {kind: comparison.data.tags[f"{kind}_run_id"] for kind in run_ids} == run_ids
        rmse = {kind: comparison.data.metrics[f"compare/{kind}_rmse_mm"] for kind in run_ids}
        better, worse = sorted(rmse, key=rmse.__getitem__)
        versions = {alias: client.get_model_version_by_alias(model, alias) for alias in ("champion", "challenger")}
        assert {alias: version.run_id for alias, version in versions.items()} == {
            "champion": run_ids[better], "challenger": run_ids[worse]}, rmse

    # the reader loads the champion through the server, as a client reads its metadata, but may not move an alias
    uri = f"models:/{model}@champion"
    with as_user(server_stack, "reader") as client:
        in_process = mlflow.pyfunc.load_model(uri)
        meta = mlflow.models.get_model_info(uri).metadata
        assert refused(client.set_registered_model_alias, model, "champion", versions["challenger"].version) == 403
        assert client.get_model_version_by_alias(model, "champion").version == versions["champion"].version

    # the latest raw window, cut and stacked from the model's metadata as the README shows
    grid = crop_regions(open_dataset(tmp_path / "tiny.nc"), RegionConfig.from_dict(meta["region_config"]),
                        meta["include_upstream"]).data
    window = stack_channels(grid, time_slice=slice(-meta["window_size"], None))[None]
    assert meta["include_upstream"] == (better == "upstream")

    serving = time.monotonic()
    with ScoringServer(uri, tmp_path / "serve.log", env=env, cwd=tmp_path) as server:
        ready = time.monotonic()
        status, answer = server.post(request_parquet(window), content_type=PARQUET_CONTENT_TYPE)
        as_json = server.post(request_body(window))  # what the README's curl sends
    assert status == 200, answer
    assert as_json == (status, answer)
    rain_mm = np.asarray(answer["predictions"], dtype=np.float32)
    assert rain_mm.shape == (1, 4, 4) and (rain_mm >= 0).all()  # [N, H, W_down] on the tiny grid
    np.testing.assert_allclose(rain_mm, in_process.predict(window), rtol=0, atol=1e-5)
    # the very model the better training wrote to its output directory
    trained_model = load_forecast_model(tmp_path / better)
    np.testing.assert_allclose(rain_mm, trained_model.predict_stacked(window), rtol=0, atol=1e-5)
    assert "Traceback" not in (tmp_path / "serve.log").read_text()
    logger.info("Trainings %.0f s, compare %.0f s, the scoring server ready in %.0f s; champion: %s (RMSE %s)",
                trained - began, compared - trained, ready - serving, better, rmse)

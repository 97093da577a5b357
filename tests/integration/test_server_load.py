"""Four trainings and a comparison at once against the team's tracking server, as the researcher: every process
ends well, every run FINISHED with each epoch's metrics once, and a training sends the epoch's metrics in one
batch.

Each process runs under :mod:`tests.integration.request_log`, which records the requests it makes; the
server's access log must show exactly those requests, so none was lost, repeated or retried unseen. The
comparison scores two runs trained just before, so that all five processes start together.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.entry_processes import Process, train
from tests.integration.server_stack import AccessLog, as_user, user_env
from tests.integration.workspace import EPOCH_METRICS, steps

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)

EPOCHS = 3
KINDS = ("baseline", "upstream")


def request_kind(entry: dict[str, Any]) -> str:
    """What a request sends: ``epoch`` (a batch of epoch metrics), ``system`` (a batch of MLflow's system
    metrics), ``batch`` (another batch), ``PUT artifact``, or else its path."""
    if entry["path"].endswith("/runs/log-batch"):
        if set(entry["metrics"]) & set(EPOCH_METRICS):
            return "epoch"
        return "system" if entry["metrics"] and all(key.startswith("system/") for key in entry["metrics"]) else "batch"
    return f"{entry['method']} artifact" if "/mlflow-artifacts/artifacts/" in entry["path"] else entry["path"]


def test_four_trainings_and_a_compare_at_once(server_stack, tiny_nc: Path, tmp_path: Path) -> None:
    (tmp_path / "tiny.nc").symlink_to(tiny_nc)
    env = user_env(server_stack, "researcher", tmp_path)
    host = urlsplit(server_stack.tracking_uri).netloc
    experiment, model = f"load-{uuid.uuid4().hex[:8]}", f"load-{uuid.uuid4().hex[:8]}"
    earlier = {kind: train(f"earlier-{kind}", kind, 1, tmp_path, env, experiment, model) for kind in KINDS}
    for process in earlier.values():  # the comparison's runs
        process.finish()

    log, began = AccessLog(server_stack), time.monotonic()
    trainings = [train(f"{kind}-{number}", kind, EPOCHS, tmp_path, env, experiment, model)
                 for number in (1, 2) for kind in KINDS]
    compare = Process.start("compare", "entrypoints.compare",
                            ["--baseline", earlier["baseline"].run_id, "--upstream", earlier["upstream"].run_id,
                             "--data", tmp_path / "tiny.nc", "--n-boot", 100, "--output-dir", tmp_path / "compare",
                             "--registered-model-name", model], tmp_path, env)
    for process in (*trainings, compare):
        process.finish()
    answered, seconds = log.requests(), time.monotonic() - began

    # the server answered exactly the requests the five processes made, and refused none but the one MLflow expects:
    # registering a model version first tries to create the registered model, which exists (HTTP 400)
    sent = [entry for process in (*trainings, compare) for entry in process.requests(host)]
    assert Counter((method, path) for method, path, _ in answered) == Counter((e["method"], e["path"]) for e in sent)
    assert Counter(path for _, path, status in answered if status >= 400) == {
        "/api/2.0/mlflow/registered-models/create": len(trainings)}
    times = sorted(entry["time"] for process in trainings for entry in process.requests(host))
    assert any(times[0] < entry["time"] < times[-1] for entry in compare.requests(host)), "compare ran alone"

    with as_user(server_stack, "researcher") as client:
        # each training's own run, by the id it printed, and the comparison's, by the runs it compared
        trained = [client.get_run(process.run_id) for process in (*earlier.values(), *trainings)]
        assert [run.info.status for run in trained] == ["FINISHED"] * len(trained)
        everywhere = [e.experiment_id for e in client.search_experiments()]
        (compared,) = client.search_runs(everywhere, "tags.run_type = 'comparison' and "
                                                     f"tags.baseline_run_id = '{earlier['baseline'].run_id}'")
        assert compared.info.status == "FINISHED"
        for process in trainings:
            for key in EPOCH_METRICS:
                assert steps(client, process.run_id, key) == list(range(1, EPOCHS + 1)), (process.name, key)

    for process in trainings:
        requests = process.requests(host)
        kinds = [request_kind(entry) for entry in requests]
        epochs = [index for index, found in enumerate(kinds) if found == "epoch"]
        # one batch an epoch with all its metrics, none sent alone
        assert [sorted(requests[index]["metrics"]) for index in epochs] == [sorted(EPOCH_METRICS)] * EPOCHS
        assert "/api/2.0/mlflow/runs/log-metric" not in kinds, process.name
        # between the epochs' batches only checkpoints and the system metrics sampled meanwhile (a batch every 5 s)
        later = Counter(kinds[epochs[0] + 1:epochs[-1] + 1])
        assert set(later) <= {"epoch", "system", "PUT artifact"}, (process.name, later)
        # each epoch rewrites last.pt; a copy that a newer one superseded before it was sent (the sender lagged
        # behind under this load) is skipped, so it goes up once to once an epoch, and the server's copy is the last
        uploads = Counter(Path(entry["path"]).name for entry in requests if request_kind(entry) == "PUT artifact")
        assert 1 <= uploads["last.pt"] <= EPOCHS, (process.name, uploads)
        (downloads := tmp_path / "downloaded" / process.name).mkdir(parents=True)
        with as_user(server_stack, "researcher") as client:
            sent_copy = client.download_artifacts(process.run_id, "checkpoints/last.pt", str(downloads))
        assert Path(sent_copy).read_bytes() == (tmp_path / process.name / "last.pt").read_bytes(), process.name
        logger.info("%s: %d requests; %d until its first epoch's metrics, then %s in %d epochs, %d after them",
                    process.name, len(requests), epochs[0] + 1, dict(later), EPOCHS - 1, len(requests) - epochs[-1] - 1)
    logger.info("The server answered %d requests in %.0f s: %s", len(answered), seconds,
                dict(Counter(path.split("/api/")[-1].split("/workspaces/")[0] for _, path, _ in answered)))

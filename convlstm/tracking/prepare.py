"""A prepare run in MLflow: its settings as params, each raw input and the store as dataset inputs,
the provenance as an artifact, and the sizes and the throughput as metrics."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource

from convlstm.cli import configure_logging
from convlstm.config import PrepareSettings
from convlstm.data.demo import demo_data_path
from convlstm.data.prepare_store import PreparedStore, prepare_store
from convlstm.data.provenance import source_digest
from convlstm.data.store import check_new_store
from convlstm.tracking.runs import log_new_params, managed_run, settings_params, timestamped
from convlstm.tracking.store import check_tracking_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepareOutcome:
    """The run and the store it wrote."""

    run_id: str
    store: PreparedStore


def prepare_tracked(settings: PrepareSettings) -> PrepareOutcome:
    """Prepare a store inside an MLflow run (``run_type=prepare``).

    Parameters
    ----------
    settings : PrepareSettings
        The input, the output store and how to cut it.

    Returns
    -------
    PrepareOutcome
        The run id and the store.
    """
    output = Path(settings.output)
    check_new_store(output)  # before the run: a refusal leaves nothing behind
    check_tracking_store()
    name = timestamped("prepare")
    log_path = Path("outputs") / name / "prepare.log"
    configure_logging(settings.log_level, log_path)
    source = settings.data or str(demo_data_path())
    with managed_run(None, name, settings.experiment_name, {"run_type": "prepare"}, log_path) as run:
        log_new_params(run.info.run_id, {**settings_params(settings), "data": settings.data or "demo"})
        started = time.perf_counter()
        store = prepare_store(source, output, settings.regions, time_step=settings.time_step,
                              train_ratio=settings.train_ratio, val_ratio=settings.val_ratio, member=settings.member,
                              time_chunk=settings.time_chunk)
        minutes = (time.perf_counter() - started) / 60.0
        mlflow.log_metrics({"prepare/time_steps": store.n_times, "prepare/input_gb": store.input_bytes / 1e9,
                            "prepare/store_gb": store.size_bytes / 1e9, "prepare/minutes": minutes,
                            "prepare/input_gb_per_minute": store.input_bytes / 1e9 / max(minutes, 1e-9)})
        mlflow.log_dict(store.provenance, "provenance.json")
        for item in store.provenance["inputs"]:
            mlflow.log_input(MetaDataset(LocalArtifactDatasetSource(item["path"]), name=Path(item["path"]).name,
                                         digest=item["sha256"] or ""), context="raw input")
        mlflow.log_input(MetaDataset(LocalArtifactDatasetSource(str(store.path.resolve())), name=store.path.name,
                                     digest=source_digest(store.path)), context="prepared store")
    return PrepareOutcome(run.info.run_id, store)

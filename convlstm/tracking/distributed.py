"""One MLflow run for a training in several processes: the launcher creates it, rank 0 logs to it, the others
never touch MLflow, and a failure of any process ends it FAILED with the reason.

``convlstm-train --nproc-per-node N`` (and ``mlflow run . -e train -P nproc_per_node=N``) runs
:func:`train_distributed`: it checks what can be checked before anything starts, makes the run (or takes
``mlflow run``'s, or the resumed checkpoint's), starts ``torchrun --standalone --nproc-per-node N`` with the same
flags and the run's id in ``MLFLOW_RUN_ID``, and, when a process fails, records which one and how. On several
machines the user starts ``torchrun`` on each (``python -m convlstm.tracking.distributed`` makes a run to give
them all as ``MLFLOW_RUN_ID``); there, as here, only rank 0 logs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient
from mlflow.tracking.context import registry as context_registry

import convlstm
from convlstm.cli import configure_logging
from convlstm.config import TrainSettings
from convlstm.data.demo import demo_data_path
from convlstm.device import select_device
from convlstm.errors import ConfigError, ConvLSTMError
from convlstm.training.distributed import LOST_PROCESS, DistributedContext, ProcessesFailed, check_processes, launch
from convlstm.training.experiment import new_run_settings, run_training, settings_from_checkpoint
from convlstm.tracking.runs import new_run_experiment, resolve_experiment, timestamped
from convlstm.tracking.store import bounded_requests, check_tracking_store
from convlstm.tracking.training import TrackedTraining
from convlstm.tracking.uris import resolve_resume

logger = logging.getLogger(__name__)

#: The module each training process runs (``python -m``): the train command, importable wherever convlstm is.
WORKER_MODULE = "convlstm.commands.train"


def train_distributed(settings: TrainSettings, args: list[str]) -> str:
    """Train in ``settings.nproc_per_node`` processes on this machine, recorded in one MLflow run.

    Parameters
    ----------
    settings : TrainSettings
        As given on the command line.
    args : list of str
        The flags given (``convlstm.cli.given_args``): each process runs the train command with them.

    Returns
    -------
    str
        The run trained in: the resumed checkpoint's, ``mlflow run``'s (``MLFLOW_RUN_ID``) or a new one.

    Raises
    ------
    ConfigError
        Before anything starts: too many processes for the GPUs, a batch smaller than the processes, a busy
        ``--master-port``, several ``--seeds``, an output directory in use.
    ProcessesFailed
        When a training process failed; the run ends FAILED with which one and how.
    """
    configure_logging(settings.log_level)
    nproc = settings.nproc_per_node
    if settings.ensemble:
        raise ConfigError("--seeds trains its seeds one after another, each in one process: leave out "
                          "--nproc-per-node, or train each seed as its own run with --seed.", "nproc_per_node")
    run_id, batch_size = None, settings.model.batch_size
    if settings.resume:
        resumed, run_id = settings_from_checkpoint(resolve_resume(settings.resume), settings.output_dir)
        batch_size = resumed.model.batch_size
    else:
        settings = new_run_settings(settings)  # the processes must agree on the default output directory
        args = [*_without(args, "--output-dir"), "--output-dir", str(settings.output_dir)]
    check_processes(nproc, select_device(settings.device), batch_size, settings.master_port)
    check_tracking_store()
    if not settings.data:
        demo_data_path()  # made once here, rather than by every process at once
    if not run_id:
        run_id = os.environ.get("MLFLOW_RUN_ID") or new_training_run(settings.experiment_name, settings.experiment_type)
        os.environ["MLFLOW_RUN_ID"] = run_id  # the processes join it; on an error here run_cli ends it FAILED
    _prepare_environment(nproc)
    try:
        launch(nproc, WORKER_MODULE, args, settings.master_port)
    except ProcessesFailed as exc:
        _record_failure(run_id, str(exc))
        raise
    return run_id


def _without(args: list[str], flag: str) -> list[str]:
    """``args`` (flag, value pairs, as ``given_args`` makes them) without ``flag`` and its value."""
    pairs = [args[i:i + 2] for i in range(0, len(args), 2)]
    return [token for pair in pairs if pair[0] != flag for token in pair]


def _prepare_environment(nproc: int) -> None:
    """What the training processes inherit: this convlstm importable (a checkout that is not installed), and the
    machine's cores shared among them (``torchrun`` would give each one thread)."""
    package_root = str(Path(convlstm.__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))


def new_training_run(experiment_name: str | None, experiment_type: str = "training") -> str:
    """Create the run that several processes (or machines) train in, in the experiment a training would choose.

    Parameters
    ----------
    experiment_name : str, optional
        ``--experiment-name``; default: ``MLFLOW_EXPERIMENT_NAME`` or ``MLFLOW_EXPERIMENT_ID``, else MLflow's
        Default, as ``mlflow run`` and ``managed_run`` choose.
    experiment_type : str
        ``baseline`` or ``upstream``, for the run's name (rank 0 names it again when it starts).

    Returns
    -------
    str
        The run id (the run is RUNNING until rank 0 ends it).
    """
    client = MlflowClient()
    experiment_id = resolve_experiment(client, new_run_experiment(experiment_name))
    tags = context_registry.resolve_tags({"run_type": "training"})  # user, source, git commit, as start_run sets
    run = client.create_run(experiment_id, run_name=timestamped(experiment_type), tags=tags)
    logger.info("Created run %s for the training processes.", run.info.run_id)
    return run.info.run_id


def _record_failure(run_id: str, reason: str) -> None:
    """End the run FAILED with ``reason`` (which processes failed, and how) unless rank 0 already ended it FAILED
    with a reason of its own; a run rank 0 ended KILLED (``torchrun`` stopped it because another process died)
    becomes FAILED. The reason is kept in the tag ``processes_failed`` too. A FINISHED run is left alone: rank 0
    finished it, or refused to reopen it (a finished run resumed without more epochs)."""
    client = MlflowClient()
    try:
        with bounded_requests():
            run = client.get_run(run_id)
            if run.info.status == "FINISHED":
                return
            client.set_tag(run_id, "processes_failed", reason[:5000])
            own = run.data.tags.get("error", "")
            if run.info.status == "FAILED" and own and LOST_PROCESS not in own:
                return
            client.set_tag(run_id, "error", reason[:5000])
            client.set_terminated(run_id, "FAILED")
    except Exception:  # noqa: BLE001 - the store may be what failed; the reason is printed anyway
        logger.debug("Could not record the failure in run %s.", run_id, exc_info=True)


def follow_training(settings: TrainSettings) -> TrackedTraining:
    """Train as a process other than rank 0: what rank 0 trains, logging nothing to MLflow.

    Parameters
    ----------
    settings : TrainSettings
        As given on this process's command line (rank 0's resolved settings replace them).

    Returns
    -------
    TrackedTraining
        Rank 0's run id and settings, and this process's outcome.
    """
    configure_logging("ERROR" if settings.log_level == "ERROR" else "WARNING")  # rank 0 reports; the others warn
    outcome = run_training(settings, "")
    return TrackedTraining(outcome.run_id or "", outcome.settings or settings, outcome)


def is_follower() -> bool:
    """Whether this process trains alongside rank 0 without logging (a rank other than 0).

    Returns
    -------
    bool
        True on ranks 1 and up.
    """
    return not DistributedContext.current().is_main


def main(argv: list[str] | None = None) -> None:
    """``python -m convlstm.tracking.distributed``: create the run a multi-machine training logs to, print its id.

    Parameters
    ----------
    argv : list of str, optional
        ``--experiment-name NAME`` and ``--include-upstream`` (for the run's name).
    """
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0] if main.__doc__ else None)
    parser.add_argument("--experiment-name", default=None)
    parser.add_argument("--include-upstream", action="store_true")
    args = parser.parse_args(argv)
    try:
        check_tracking_store()
        print(new_training_run(args.experiment_name, "upstream" if args.include_upstream else "baseline"))
    except ConvLSTMError as exc:  # one line, as every command
        sys.exit(f"Error: {exc}")


if __name__ == "__main__":
    main(sys.argv[1:])

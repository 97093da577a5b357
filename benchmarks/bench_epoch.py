"""End to end: a `train` epoch's wall time against the sum of its pure model steps.

Run from the repository root::

    python benchmarks/bench_epoch.py                          # baseline and upstream, 5 epochs each (~4 min)
    python benchmarks/bench_epoch.py --experiment upstream

The real train command (``python -m entrypoints.train``, default settings but ``--num-epochs``) runs
on the demo atmosphere in a subprocess, tracking to a temporary SQLite MLflow store. An epoch's wall
time is the time between the MLflow timestamps of consecutive epochs' metrics: training, validation,
checkpoints, MLflow logging, progress bar, everything. Epoch 1 is left out (its start is not
logged), so with the default checkpoint frequency of 5 the window holds one periodic checkpoint.

Afterwards, in this process and with nothing else running, the same model and trainer (rebuilt from
the run's checkpoint with the library's own ``build_trainer``) take one pass of optimizer steps over
the epoch's batches, loaded beforehand: the pure model steps. Everything else is overhead; the
validation pass and the batch loading are timed on their own to show where it goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO, Target, fmt_table, print_header, report_targets, set_threads, write_json

from convlstm.training.checkpoint import LAST_NAME
from convlstm.training.experiment import TrainOptions, build_trainer, describe_data, prepare_experiment_data

OVERHEAD_TARGET_PCT = 10.0


def run_train(experiment: str, epochs: int, root: Path) -> tuple[Path, str]:
    """The train command, defaults but the epoch count; its output directory and MLflow run id."""
    from mlflow.tracking import MlflowClient

    output_dir = root / experiment
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    command = [sys.executable, "-m", "entrypoints.train", "--include-upstream", "true" if experiment == "upstream" else "false",
               "--num-epochs", str(epochs), "--output-dir", str(output_dir), "--experiment-name", "bench-epoch"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the train command failed:\n{done.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name("bench-epoch").experiment_id,
                                f"tags.experiment_type = '{experiment}'")
    return output_dir, run.info.run_id


def epoch_walls(root: Path, run_id: str) -> dict[str, object]:
    """Epoch wall times from the MLflow metric timestamps, and the run's one-off start and finish."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    stamps = sorted((m.step, m.timestamp / 1e3) for m in client.get_metric_history(run_id, "train_loss"))
    inner = {m.step: m.value for m in client.get_metric_history(run_id, "epoch_time_s")}
    run = client.get_run(run_id).info
    walls = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]
    return {
        "walls_s": walls,
        "train_val_s": [inner[step] for step, _ in stamps[1:]],
        "setup_s": stamps[0][1] - inner[stamps[0][0]] - run.start_time / 1e3,
        "finish_s": run.end_time / 1e3 - stamps[-1][1],
    }


def pure_steps(output_dir: Path) -> dict[str, float]:
    """Seconds of one pass of optimizer steps over pre-loaded batches; validation and loading apart."""
    options = dataclasses.replace(TrainOptions.from_checkpoint(output_dir / LAST_NAME), resume_from=None)
    data_path, prepared = prepare_experiment_data(options)
    trainer = build_trainer(options, prepared, describe_data(data_path, prepared))

    began = time.perf_counter()
    batches = list(trainer.loader(prepared.train, shuffle=True))
    loading = time.perf_counter() - began
    trainer.train_epoch(batches[:3], epoch=0)  # warm-up
    steps = []
    for _ in range(2):
        began = time.perf_counter()
        trainer.train_epoch(batches, epoch=1)
        steps.append(time.perf_counter() - began)
    began = time.perf_counter()
    trainer.evaluate(prepared.val)
    validation = time.perf_counter() - began
    return {"steps_s": min(steps), "loading_s": loading, "validation_s": validation, "n_batches": len(batches)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", choices=["baseline", "upstream", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (epochs 2.. are measured)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads here (the train command uses its default)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1's start is not logged")
    set_threads(args.threads)
    out: dict[str, object] = print_header("End-to-end benchmark: train epochs (demo data, default settings)")

    experiments = ["baseline", "upstream"] if args.experiment == "both" else [args.experiment]
    rows, results, targets = [], {}, []
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        for experiment in experiments:
            began = time.perf_counter()
            output_dir, run_id = run_train(experiment, args.epochs, Path(tmp))
            run_s = time.perf_counter() - began
            walls = epoch_walls(Path(tmp), run_id)
            pure = pure_steps(output_dir)
            wall = statistics.median(walls["walls_s"])
            overhead = wall - pure["steps_s"]
            pct = 100.0 * overhead / wall
            results[experiment] = {**walls, **pure, "epoch_wall_s": wall, "overhead_pct": pct, "run_s": run_s}
            rows.append([experiment, str(pure["n_batches"]), f"{wall:.2f}", f"{pure['steps_s']:.2f}",
                         f"{overhead:.2f} ({pct:.1f}%)", f"{pure['validation_s']:.2f}", f"{pure['loading_s']:.2f}",
                         f"{overhead - pure['validation_s'] - pure['loading_s']:.2f}",
                         f"{walls['setup_s']:.1f}", f"{walls['finish_s']:.1f}", f"{run_s:.0f}"])
            targets.append(Target(f"{experiment}: epoch overhead (wall - pure steps) / wall", pct,
                                  OVERHEAD_TARGET_PCT, at_least=False, unit="%"))

    print(fmt_table(["run", "batches", "epoch wall s", "pure steps s", "overhead s", "validation s", "loading s",
                     "rest s", "set-up s", "finish s", "run s"], rows))
    print("epoch wall: median over epochs 2..N of the time between consecutive epochs' MLflow metrics;\n"
          "rest: checkpoints, MLflow logging, progress bar, and timing noise; set-up (data, before epoch 1) and\n"
          "finish (test scores, plots, model packaging and registration) happen once per run.")
    report_targets(targets)
    out["results"] = results
    out["targets"] = [t.__dict__ | {"met": t.met} for t in targets]
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

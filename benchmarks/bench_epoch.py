"""End to end: a `train` epoch's wall time against the sum of its pure model steps.

Run from the repository root::

    python benchmarks/bench_epoch.py                          # baseline and upstream, 5 epochs each (~4 min)
    python benchmarks/bench_epoch.py --experiment upstream

The real train command (``python -m entrypoints.train``, default settings but ``--num-epochs``) runs
on the demo atmosphere in a subprocess, tracking to a temporary SQLite MLflow store. An epoch's wall
time is the time between the MLflow timestamps of consecutive epochs' metrics: training, validation,
checkpoints, MLflow logging, progress bar, everything. Epoch 1 is left out (its start is not
logged), so with the default checkpoint frequency of 5 the measured epochs hold one periodic
checkpoint. The sum of the pure model steps (forward, loss, backward, optimizer) is the run's own
``train_step_time_s`` metric, timed inside the same epochs; everything else is overhead, split
with the run's ``val_time_s`` and ``epoch_time_s`` (training + validation) metrics into validation,
the rest of the training loop (loading batches, progress bar) and what follows the epoch
(checkpoints, MLflow logging).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness import Target, finish, fmt_table, print_header, run_train

OVERHEAD_TARGET_PCT = 10.0
EXPERIMENT = "bench-epoch"


def train_run_id(experiment: str, epochs: int, root: Path) -> str:
    """Run the train command in ``root``; its MLflow run id."""
    from mlflow.tracking import MlflowClient

    run_train(root, experiment, epochs, EXPERIMENT)
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name(EXPERIMENT).experiment_id,
                                f"tags.experiment_type = '{experiment}'")
    return run.info.run_id


def epoch_figures(root: Path, run_id: str) -> dict[str, list[float] | float]:
    """Per measured epoch (2..N): wall time and its parts, from the run's metrics; the one-off start and finish."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")

    def history(key: str) -> dict[int, tuple[float, float]]:
        return {m.step: (m.timestamp / 1e3, m.value) for m in client.get_metric_history(run_id, key)}

    stamps, inner = history("train_loss"), history("epoch_time_s")
    steps, validation = history("train_step_time_s"), history("val_time_s")
    epochs = sorted(stamps)[1:]
    run = client.get_run(run_id).info
    return {
        "wall_s": [stamps[e][0] - stamps[e - 1][0] for e in epochs],
        "steps_s": [steps[e][1] for e in epochs],
        "validation_s": [validation[e][1] for e in epochs],
        "train_val_s": [inner[e][1] for e in epochs],
        "setup_s": stamps[1][0] - inner[1][1] - run.start_time / 1e3,
        "finish_s": run.end_time / 1e3 - stamps[max(stamps)][0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", choices=["baseline", "upstream", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (epochs 2.. are measured)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1's start is not logged")
    out: dict[str, object] = print_header("End-to-end benchmark: train epochs (demo data, default settings)")

    experiments = ["baseline", "upstream"] if args.experiment == "both" else [args.experiment]
    rows, results, targets = [], {}, []
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        for experiment in experiments:
            began = time.perf_counter()
            run_id = train_run_id(experiment, args.epochs, Path(tmp))
            run_s = time.perf_counter() - began
            fig = epoch_figures(Path(tmp), run_id)
            median = {key: statistics.median(fig[key]) for key in ("wall_s", "steps_s", "validation_s", "train_val_s")}
            overhead = median["wall_s"] - median["steps_s"]
            pct = 100.0 * overhead / median["wall_s"]
            results[experiment] = {**fig, "median": median, "overhead_pct": pct, "run_s": run_s}
            rows.append([experiment, f"{median['wall_s']:.2f}", f"{median['steps_s']:.2f}", f"{overhead:.2f} ({pct:.1f}%)",
                         f"{median['validation_s']:.2f}",
                         f"{median['train_val_s'] - median['steps_s'] - median['validation_s']:.2f}",
                         f"{median['wall_s'] - median['train_val_s']:.2f}",
                         f"{fig['setup_s']:.1f}", f"{fig['finish_s']:.1f}", f"{run_s:.0f}"])
            targets.append(Target(f"{experiment}: epoch overhead (wall - pure steps) / wall", pct,
                                  OVERHEAD_TARGET_PCT, at_least=False, unit="%"))

    print(fmt_table(["run", "epoch wall s", "pure steps s", "overhead s", "validation s", "rest of loop s",
                     "after epoch s", "set-up s", "finish s", "run s"], rows))
    print(f"medians over epochs 2..{args.epochs}. rest of loop: loading batches, progress bar; after epoch: checkpoints,\n"
          "MLflow logging. set-up (data, before epoch 1) and finish (test scores, plots, model packaging and\n"
          "registration) happen once per run.")
    out["results"] = results
    return finish(targets, out, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

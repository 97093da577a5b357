"""Two training processes (DDP, gloo) against one, on this machine's CPUs: samples/s, and the same numbers.

Run from the repository root::

    python benchmarks/bench_ddp.py                 # baseline on the 1° demo, 3 epochs a setting (~6 min on 2 cores)
    python benchmarks/bench_ddp.py --epochs 2 --hidden-channels 8,16     # shorter

The real train command runs on the demo atmosphere (default settings but the epoch count, hidden channels and
``--visualize false``) in three settings, one after another, tracking to a temporary SQLite store:

- **1 process, all cores** (``OMP_NUM_THREADS`` = the CPUs): what ``--nproc-per-node 1`` does; the reference;
- 1 process, 1 thread: what each of the two processes has;
- **2 processes** (``--nproc-per-node 2``, ``torchrun --standalone``, gloo), 1 thread each.

Samples/s is the training split's windows over an epoch's training time (the run's ``epoch_time_s`` less its
``val_time_s``: optimizer steps and loading, without validation), median over epochs 2..N, rank 0's (the
processes step together). The batch (``--batch-size``, split among the processes) is the same in every setting,
so all three train the same model: the relative difference of each one's epoch-1 ``train_loss`` and last
``val_loss`` from the one-thread process's is reported too. The two processes differ from it only in how a batch's
gradient is summed, and two threads in how a convolution is summed: float32 rounding, about 1e-6 after the first
epoch, which hundreds of AdamW steps then grow (to 1e-3 to 1e-2 after three epochs, alike for both). There is no
speed target: the figure is stated.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import finish, fmt_table, print_header, store_env

EXPERIMENT = "bench-ddp"
FINISHED = re.compile(r"Finished \w+ run ([0-9a-f]{32})")


def train(root: Path, name: str, nproc: int, threads: int, args: argparse.Namespace) -> tuple[str, float]:
    """One training in ``root/name`` with ``nproc`` processes of ``threads`` threads; its run id and wall time."""
    command = [sys.executable, "-m", "entrypoints.train", "--include-upstream",
               str(args.experiment == "upstream").lower(), "--num-epochs", str(args.epochs),
               "--hidden-channels", args.hidden_channels,
               "--batch-size", str(args.batch_size), "--output-dir", str(root / name), "--experiment-name", EXPERIMENT,
               "--visualize", "false", "--registered-model-name", "", "--nproc-per-node", str(nproc)]
    env = {**store_env(root), "OMP_NUM_THREADS": str(threads)}
    began = time.perf_counter()
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    found = FINISHED.search(done.stdout)
    if done.returncode != 0 or not found:
        raise SystemExit(f"the train command failed ({name}):\n{done.stderr[-3000:]}")
    return found.group(1), wall


def figures(root: Path, run_id: str) -> dict[str, object]:
    """Per epoch: training seconds (epoch less validation), losses; and the training windows."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlflow.db")

    def history(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]

    epoch, validation = history("epoch_time_s"), history("val_time_s")
    return {"train_s": [e - v for e, v in zip(epoch, validation)], "train_loss": history("train_loss"),
            "val_loss": history("val_loss"), "windows": int(client.get_run(run_id).data.params["n_windows_train"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", choices=["baseline", "upstream"], default="baseline")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per setting (epochs 2.. are measured)")
    parser.add_argument("--hidden-channels", default="16,32,64")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per step, over all processes")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: epoch 1 (warm-up) is not measured")
    out: dict[str, object] = print_header(f"Two training processes against one ({args.experiment}, demo data)")
    cpus = len(os.sched_getaffinity(0))
    settings = [("1 process, all cores", 1, cpus), ("1 process, 1 thread", 1, 1), ("2 processes, 1 thread each", 2, 1)]
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        for index, (name, nproc, threads) in enumerate(settings):
            run_id, wall = train(Path(tmp), f"run{index}", nproc, threads, args)
            results[name] = {**figures(Path(tmp), run_id), "run_s": wall, "nproc": nproc, "threads": threads}
    reference, arithmetic = settings[0][0], settings[1][0]
    for result in results.values():
        result["samples_s"] = result["windows"] / statistics.median(result["train_s"][1:])  # type: ignore[index]
    rows = []
    def relative(name: str, key: str, epoch: int) -> float:
        ours, theirs = results[name][key][epoch], results[arithmetic][key][epoch]  # type: ignore[index]
        return abs(ours - theirs) / abs(theirs)

    for name, result in results.items():
        result["rel_train_loss_epoch1"] = relative(name, "train_loss", 0)
        result["rel_val_loss_last"] = relative(name, "val_loss", -1)
        ratio = result["samples_s"] / results[reference]["samples_s"]  # type: ignore[operator]
        rows.append([name, f"{result['samples_s']:.2f}", f"{ratio:.2f}x", f"{result['run_s']:.0f}",
                     f"{result['rel_train_loss_epoch1']:.1e}", f"{result['rel_val_loss_last']:.1e}"])
    print(fmt_table(["setting", "samples/s", "vs 1 process, all cores", "run s", "train_loss 1", "val_loss N"], rows))
    print(f"samples/s: {results[reference]['windows']} training windows over the epoch's training time, median of "
          f"epochs 2..{args.epochs}; batch {args.batch_size} in every setting (2 processes: {args.batch_size // 2} "
          "windows each a step).\nrun s: the whole command (start, data, epochs, test, model logging). train_loss 1, "
          "val_loss N: relative difference\nof epoch 1's train_loss and the last epoch's val_loss from the "
          "one-process, one-thread run's.")
    out["settings"] = vars(args)
    out["results"] = results
    return finish([], out, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

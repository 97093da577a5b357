"""How fast each entry point's ``--help`` answers, against a bare Python start measured in the same run.

    python benchmarks/bench_cli.py

The command lines import click and the settings only; torch, mlflow and xarray load when a command
runs. The target (from the redesign issue): ``python -m entrypoints.train --help`` under 1.5 s on the
project's 2-core machine; the ratio to ``python -c pass`` says how much of that is ours.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

from harness import REPO, Target, finish, fmt_table, print_header, time_interleaved

ENTRY_POINTS = ("train", "infer", "compare", "make_data")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    info = print_header("Entry points: --help start-up time")

    def run(*argv: str) -> None:
        subprocess.run([sys.executable, *argv], cwd=REPO, check=True, capture_output=True)

    commands = {"python -c pass": lambda: run("-c", "pass")}
    commands.update({f"{name} --help": (lambda name=name: run("-m", f"entrypoints.{name}", "--help")) for name in ENTRY_POINTS})
    times = {name: statistics.median(values) for name, values in time_interleaved(commands, args.repeats).items()}
    bare = times["python -c pass"]
    print(fmt_table(["command", "median (s)", "× bare python"],
                    [[name, f"{seconds:.3f}", f"{seconds / bare:.1f}"] for name, seconds in times.items()]))
    target = Target("train --help, seconds", times["train --help"], 1.5, at_least=False, unit="s")
    return finish([target], {"machine": info, "seconds": times}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

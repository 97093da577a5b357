"""Every benchmark, one after another, then every target in one table (Markdown, for the README).

Run from the repository root, with nothing else running (the figures are ratios measured in the same
run, but two CPU-bound jobs at once slow each other far more than twice on 2 cores)::

    python benchmarks/run_all.py              # about 20 minutes on 2 CPU cores, the 0.25° file generated once
    python benchmarks/run_all.py --store-full # bench_store.py at full size (1, 2, 4 years of input; ~30 min more)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import machine

SCRIPTS = ["bench_cli.py", "bench_model.py", "bench_data.py", "bench_epoch.py", "bench_serving.py",
           "bench_serving_load.py", "bench_store.py", "bench_ddp.py"]
#: Extra arguments: bench_store.py at full size takes ~30 min, so run_all runs its smaller version by default.
QUICK = {"bench_store.py": ["--quick"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store-full", action="store_true", help="bench_store.py with 1, 2 and 4 years of input")
    args = parser.parse_args(argv)
    here = Path(__file__).parent
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        for script in SCRIPTS:
            result = Path(tmp) / f"{script}.json"
            extra = [] if args.store_full else QUICK.get(script, [])
            print(f"\n===== {script} {' '.join(extra)}", flush=True)
            done = subprocess.run([sys.executable, str(here / script), *extra, "--json", str(result)], check=False)
            if done.returncode != 0:
                rows.append(f"| {script} | failed (exit code {done.returncode}) | | |")
                continue
            for target in json.loads(result.read_text())["targets"]:
                sign = ">=" if target["at_least"] else "<="
                unit = target["unit"]
                rows.append(f"| {target['name']} | {target['measured']:.2f}{unit} | {sign} {target['threshold']:g}{unit} "
                            f"| {'met' if target['met'] else '**not met**'} |")
    info = machine()
    print(f"\n===== summary ({info['date']}; {info['cpu']}; {info['gpu']}; torch {info['torch']})\n")
    print("| measure | measured | target | |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

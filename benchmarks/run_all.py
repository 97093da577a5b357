"""Every benchmark, one after another, then every target in one table (Markdown, for the README).

Run from the repository root, with nothing else running (the figures are ratios measured in the same
run, but two CPU-bound jobs at once slow each other far more than twice on 2 cores)::

    python benchmarks/run_all.py            # about 10 minutes on 2 CPU cores, the 0.25° file generated once
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import machine

SCRIPTS = ["bench_cli.py", "bench_model.py", "bench_data.py", "bench_epoch.py", "bench_serving.py",
           "bench_serving_load.py"]


def main() -> int:
    here = Path(__file__).parent
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        for script in SCRIPTS:
            result = Path(tmp) / f"{script}.json"
            print(f"\n===== {script}", flush=True)
            done = subprocess.run([sys.executable, str(here / script), "--json", str(result)], check=False)
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

"""Data preparation: from a netCDF path to ready windows, and how fast the windows are served.

Run from the repository root::

    python benchmarks/bench_data.py                       # 1° and 0.25° (the 0.25° file is generated once, minutes)
    python benchmarks/bench_data.py --resolutions 1.0     # 1° only (about half a minute)

For each resolution of the demo atmosphere (two years, 12-hourly, 11 levels; generated once into the
demo cache, not timed): the wall time of ``convlstm.data.prepare_data`` for the upstream experiment
(the larger grid): open, validate, split, fit the normalizer on train, normalize and stack every
split into windows. Then the windows per second a ``DataLoader`` serves from the training split
(batch 4, shuffled, collated, as the trainer iterates it), against the model's training samples per
second on the same grid with the default hidden channels, measured in the same run.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

from harness import Target, finish, fmt_table, loader_rate, print_header, set_threads, training_rate

from convlstm.config import ConvLSTMConfig, RegionConfig
from convlstm.data.demo import demo_data_path
from convlstm.data.prepare import PreparedData, prepare_data

CONFIG = ConvLSTMConfig()  # the train command's defaults
READY_TARGET_S = 10.0  # two years at 1°
LOADER_TARGET = 50.0  # windows/s served over training samples/s


def prepare(path: Path) -> PreparedData:
    return prepare_data(path, RegionConfig(), include_upstream=True, window_size=CONFIG.window_size,
                        target_offset=CONFIG.target_offset, train_ratio=CONFIG.train_ratio,
                        val_ratio=CONFIG.val_ratio)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=float, nargs="+", default=[1.0, 0.25], help="demo grid spacings in degrees")
    parser.add_argument("--years", type=float, default=2.0)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: the CPUs this process may use)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out: dict[str, object] = print_header("Data preparation benchmark (upstream experiment, default regions and splits)")

    rows, results, targets = [], [], []
    batch_size = CONFIG.batch_size
    for resolution in args.resolutions:
        began = time.perf_counter()
        path = demo_data_path(years=args.years, resolution=resolution)
        print(f"{resolution:g}°: demo file {path} ({path.stat().st_size / 2**20:.0f} MiB; "
              f"found or generated in {time.perf_counter() - began:.0f} s)", flush=True)
        coarse = resolution >= 0.5
        repeats = 3 if coarse else 1
        ready = []
        for _ in range(repeats):
            began = time.perf_counter()
            prepared = prepare(path)
            ready.append(time.perf_counter() - began)
        grid = prepared.train.input_shape
        windows_s = loader_rate(prepared.train, batch_size, passes=3 if coarse else 1)
        train_s = training_rate(prepared.train, CONFIG.hidden_channels, batch_size, repeats=5 if coarse else 2)
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        result = {"resolution": resolution, "ready_s": statistics.median(ready), "ready_all_s": ready,
                  "grid": list(grid[1:]), "n_windows": {k: len(v) for k, v in prepared.datasets.items() if v},
                  "loader_windows_per_s": windows_s, "train_samples_per_s": train_s, "peak_rss_gib": peak_gib}
        results.append(result)
        rows.append([f"{resolution:g}°", f"{grid[1]} x {grid[2]} x {grid[3]}",
                     "/".join(str(n) for n in result["n_windows"].values()),
                     f"{result['ready_s']:.1f} s" + (f" (of {repeats})" if repeats > 1 else ""),
                     f"{windows_s:,.0f}", f"{train_s:.1f}", f"{windows_s / train_s:,.0f}x", f"{peak_gib:.1f}"])
        if coarse and resolution == 1.0:
            targets.append(Target(f"two years at {resolution:g}°: path to ready windows", result["ready_s"],
                                  READY_TARGET_S, at_least=False, unit="s"))
        targets.append(Target(f"{resolution:g}°: loader windows/s over training samples/s", windows_s / train_s,
                              LOADER_TARGET))
        del prepared

    print()
    print(fmt_table(["grid", "C x H x W (input)", "windows tr/va/te", "ready (median)", "loader windows/s",
                     "train samples/s", "ratio", "peak RSS GiB"], rows))
    print("ready = open + validate + split + fit + normalize + stack every split; peak RSS is the process's so far.")
    out["results"] = results
    return finish(targets, out, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

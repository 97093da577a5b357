"""Prepared stores (issue 12): bounded memory as the input grows, windows/s served from a store, store against memory.

Run from the repository root::

    python benchmarks/bench_store.py                  # everything: 1, 2 and 4 years of 0.25° input (22 GB; see README)
    python benchmarks/bench_store.py --quick          # 3, 6 and 12 months (what run_all.py runs)
    python benchmarks/bench_store.py --only demo      # store against memory on the 1° demo only (~5 min)
    python benchmarks/bench_store.py --keep           # keep the input files and stores in --workdir for a rerun

Three parts (``--only`` picks some):

``memory``
    ERA5-like 0.25° input as the CDS delivers it (``era5_files.py``: one netCDF per month and kind, 5.6 GB
    a year) is written once; stores are prepared from its first 12, 24 and 48 months (a list of paths)
    and one training epoch is run from each store (upstream experiment, small regions and model, see
    ``MEMORY_REGIONS`` / ``MEMORY_MODEL``), every prepare and every epoch in a fresh process. Peak
    memory: the process's own ``ru_maxrss``, its DataLoader workers' (``RUSAGE_CHILDREN``), and the
    sums of RSS and of PSS over the process and its workers, polled every ``POLL_S`` with psutil (a
    forked worker shares pages with its parent, so the RSS sum counts those twice: an upper bound).
    Targets: the largest input's peak (RSS sum) within ``FLAT_TARGET`` of the smallest's, and at most
    ``PEAK_TARGET_GIB``, while the input is several times that.
``loader``
    Windows/s a DataLoader serves from a store as the trainer reads it (in the training process, in the
    epoch's order: ``EpochOrder``), against the model's training samples/s on the same grid (default hidden channels;
    ``harness.training_rate``, as ``bench_data.py`` measures it in memory). The store is prepared from
    the first 12 months with ``LOADER_REGIONS``, the same 61 × 221 cells as the 0.25° demo's default
    upstream crop.
``demo``
    The default 1° demo (2 years), from memory (its netCDF) and from a store prepared from it, with the
    default model and settings: fresh trainers, 3 epochs each, interleaved epoch by epoch (memory, store,
    memory, store, ...), baseline and upstream. Epoch 1 of the store fills its cache; the ratios are
    medians of epochs 2-3: train-step samples/s (``train_step_time_s``) and epoch
    wall time (``epoch_time_s``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psutil
import torch
from era5_files import month_file, write_era5_like_files
from harness import Target, finish, fmt_table, loader_pass_times, print_header, set_threads, training_rate

from convlstm.config import ConvLSTMConfig, RegionConfig
from convlstm.data.demo import demo_data_path
from convlstm.data.prepare import prepare_data
from convlstm.data.prepare_store import prepare_store
from convlstm.interrupt import catching_signals
from convlstm.model import ConvLSTMUNet
from convlstm.training.trainer import Trainer, TrainingCallback

CONFIG = ConvLSTMConfig()  # the train command's defaults
#: Inside era5_files.py's box (30–65 °N, 30 °W–30 °E); the joined crop is 41 × 81 cells at 0.25°.
MEMORY_REGIONS = RegionConfig(downstream_lat_min=40, downstream_lat_max=50, downstream_lon_min=10, downstream_lon_max=20,
                              upstream_lat_min=40, upstream_lat_max=50, upstream_lon_min=0, upstream_lon_max=10)
#: Tiny, so that an epoch over 4 years stays a few minutes on 2 shared cores ([8, 16] ran 1.4 samples/s here under
#: load, [2, 4] 13): the memory measured is the data's, not the model's.
MEMORY_MODEL = {"hidden_channels": [2, 4], "batch_size": 8}
#: 61 × 221 cells joined at 0.25°, as the 0.25° demo's default upstream crop (bench_data.py's grid).
LOADER_REGIONS = RegionConfig(downstream_lat_min=45, downstream_lat_max=60, downstream_lon_min=15, downstream_lon_max=30,
                              upstream_lat_min=45, upstream_lat_max=60, upstream_lon_min=-25, upstream_lon_max=15)
FULL_MONTHS = [12, 24, 48]
QUICK_MONTHS = [3, 6, 12]
LOADER_MONTHS = 12
POLL_S = 0.2
FLAT_TARGET = 1.25  # largest input's peak over the smallest's
PEAK_TARGET_GIB = 3.0
LOADER_TARGET = 50.0  # store windows/s over training samples/s
STORE_TARGET = 0.95  # from the store over from memory
DEMO_EPOCHS = 3
GIB = 2**30


# ---- children: one prepare or one training epoch, in a fresh process ---------------------------------------------
def _regions(values: dict[str, float]) -> RegionConfig:
    return RegionConfig(**values)


def child_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    began = time.perf_counter()
    store = prepare_store([Path(p) for p in spec["files"]], spec["output"], _regions(spec["regions"]),
                          time_step=CONFIG.time_step, train_ratio=CONFIG.train_ratio, val_ratio=CONFIG.val_ratio)
    return {"seconds": time.perf_counter() - began, "input_bytes": store.input_bytes, "store_bytes": store.size_bytes,
            "n_times": store.n_times}


class _Epochs(TrainingCallback):
    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.metrics.append({"epoch": epoch, **metrics})


def child_train(spec: dict[str, Any]) -> dict[str, Any]:
    set_threads(None)
    began = time.perf_counter()
    config = ConvLSTMConfig(num_epochs=1, **spec["model"])
    prepared = prepare_data(spec["store"], _regions(spec["regions"]), True, config.window_size, config.target_offset)
    torch.manual_seed(config.seed)
    model = ConvLSTMUNet(prepared.train.input_shape[1], config.hidden_channels, 1, config.kernel_size)
    epochs = _Epochs()
    trainer = Trainer(model, config, prepared.normalizer, prepared.train.downstream_columns, torch.device("cpu"),
                      Path(spec["output_dir"]), metadata={"normalizer": prepared.normalizer.to_dict()}, callbacks=[epochs])
    setup = time.perf_counter() - began
    trainer.fit(prepared.train, prepared.val)
    del trainer
    gc.collect()  # the loader's workers are joined, so RUSAGE_CHILDREN holds their peak
    return {"setup_s": setup, "n_train": len(prepared.train), "n_val": len(prepared.val), "grid": list(prepared.train.input_shape[1:]),
            **epochs.metrics[-1]}


def child_main(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    result = {"prepare": child_prepare, "train": child_train}[spec["kind"]](spec)
    result["self_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    result["children_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def run_child(spec: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    """Run ``spec`` in a fresh ``python bench_store.py --child`` and poll its memory (with its workers')."""
    spec_path, result_path, log_path = work / f"{name}.spec.json", work / f"{name}.result.json", work / f"{name}.log"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    result_path.unlink(missing_ok=True)
    peak_rss = peak_pss = 0
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(spec_path)], stdout=log, stderr=subprocess.STDOUT)
        parent = psutil.Process(proc.pid)
        while proc.poll() is None:
            rss = pss = 0
            try:
                for p in [parent, *parent.children(recursive=True)]:
                    info = p.memory_full_info()
                    rss, pss = rss + info.rss, pss + info.pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            time.sleep(POLL_S)
    if proc.returncode != 0 or not result_path.exists():
        raise SystemExit(f"{name} failed (exit code {proc.returncode}):\n{log_path.read_text()[-3000:]}")
    return {**json.loads(result_path.read_text()), "peak_rss_sum_bytes": peak_rss, "peak_pss_sum_bytes": peak_pss}


# ---- part 1: memory as the input grows ---------------------------------------------------------------------------
def input_files(directory: Path, months: int) -> list[Path]:
    """The first ``months`` months of ERA5-like files (written unless all are there already), in time order."""
    import pandas as pd

    wanted = [month_file(directory, kind, month) for month in pd.period_range("2001-01", periods=months, freq="M")
              for kind in ("pressure-levels", "single-levels")]
    if not all(path.exists() for path in wanted):
        began = time.perf_counter()
        directory.mkdir(parents=True, exist_ok=True)
        written = write_era5_like_files(directory, years=(months + 11) // 12, months=months)
        size = sum(path.stat().st_size for path in written)
        print(f"wrote {len(written)} ERA5-like files, {size / 1e9:.1f} GB, in {time.perf_counter() - began:.0f} s", flush=True)
    return wanted


def memory_part(work: Path, sizes: list[int], keep: bool) -> tuple[list[dict[str, Any]], list[Target]]:
    files = input_files(work / "era5", max(sizes))
    results = []
    for months in sizes:
        paths = files[:2 * months]
        store = work / f"store-{months}m.zarr"
        shutil.rmtree(store, ignore_errors=True)
        prepared = run_child({"kind": "prepare", "files": [str(p) for p in paths], "output": str(store),
                              "regions": asdict(MEMORY_REGIONS)}, work, f"prepare-{months}m")
        print(f"{months} months: prepare {prepared['seconds']:.0f} s, peak {prepared['peak_rss_sum_bytes'] / GIB:.2f} GiB", flush=True)
        out_dir = work / f"train-{months}m"
        trained = run_child({"kind": "train", "store": str(store), "regions": asdict(MEMORY_REGIONS), "model": MEMORY_MODEL,
                             "output_dir": str(out_dir)}, work, f"train-{months}m")
        print(f"{months} months: epoch {trained['epoch_time_s']:.0f} s, peak {trained['peak_rss_sum_bytes'] / GIB:.2f} GiB", flush=True)
        shutil.rmtree(out_dir, ignore_errors=True)
        if not keep:
            shutil.rmtree(store, ignore_errors=True)
        results.append({"months": months, "load": os.getloadavg(), "prepare": prepared, "train": trained})

    rows = []
    for r in results:
        p, t = r["prepare"], r["train"]
        rows.append([f"{r['months']} months", f"{p['input_bytes'] / 1e9:.1f}", f"{p['store_bytes'] / 1e9:.2f}",
                     f"{p['seconds']:.0f}", f"{p['input_bytes'] / 1e9 / (p['seconds'] / 60):.1f}",
                     f"{p['self_maxrss_bytes'] / GIB:.2f}", f"{p['peak_rss_sum_bytes'] / GIB:.2f}",
                     f"{t['n_train']}", f"{t['epoch_time_s']:.0f}", f"{t['self_maxrss_bytes'] / GIB:.2f}",
                     f"{t['children_maxrss_bytes'] / GIB:.2f}", f"{t['peak_rss_sum_bytes'] / GIB:.2f}",
                     f"{t['peak_pss_sum_bytes'] / GIB:.2f}", " ".join(f"{x:.1f}" for x in r["load"])])
    print()
    print(fmt_table(["input", "input GB", "store GB", "prepare s", "GB/min", "prep. peak GiB", "(polled)",
                     "train windows", "epoch s", "train main GiB", "worker GiB", "sum RSS GiB", "sum PSS GiB", "load after"], rows))
    print("prepare peaks: ru_maxrss of the process, and its polled RSS; train: ru_maxrss of the main process and of its "
          "DataLoader worker, and the polled peak sums over both (RSS counts shared pages twice; PSS splits them).")
    first, last = results[0], results[-1]
    targets = []
    for kind in ("prepare", "train"):
        peak = lambda r: max(r[kind]["peak_rss_sum_bytes"], r[kind]["self_maxrss_bytes"])  # noqa: E731
        targets.append(Target(f"{kind}: peak memory, {last['months']} over {first['months']} months of input",
                              peak(last) / peak(first), FLAT_TARGET, at_least=False))
        targets.append(Target(f"{kind}: peak memory at {last['months']} months ({last['prepare']['input_bytes'] / 1e9:.1f} GB in)",
                              peak(last) / GIB, PEAK_TARGET_GIB, at_least=False, unit="GiB"))
    return results, targets


# ---- part 2: windows/s from a store against training samples/s ---------------------------------------------------
def loader_part(work: Path, keep: bool, months: int = LOADER_MONTHS) -> tuple[dict[str, Any], list[Target]]:
    files = input_files(work / "era5", months)
    store = work / "store-loader.zarr"
    shutil.rmtree(store, ignore_errors=True)
    prepared_store = run_child({"kind": "prepare", "files": [str(p) for p in files], "output": str(store),
                                "regions": asdict(LOADER_REGIONS)}, work, "prepare-loader")
    prepared = prepare_data(store, LOADER_REGIONS, True, CONFIG.window_size, CONFIG.target_offset)
    times = loader_pass_times(prepared.train, CONFIG.batch_size, 3)  # as the trainer reads it: in its loop
    n = len(prepared.train)
    windows_s = n / statistics.median(times[1:])
    train_s = training_rate(prepared.train, CONFIG.hidden_channels, CONFIG.batch_size, repeats=2)
    result = {"grid": list(prepared.train.input_shape[1:]), "n_train": n, "pass_s": times, "first_pass_windows_per_s": n / times[0],
              "loader_windows_per_s": windows_s, "train_samples_per_s": train_s, "prepare": prepared_store,
              "load": os.getloadavg()}
    del prepared
    if not keep:
        shutil.rmtree(store, ignore_errors=True)
    grid = result["grid"]
    print()
    print(fmt_table(["grid (C x H x W)", "train windows", "first pass windows/s", "later passes windows/s", "train samples/s", "ratio"],
                    [[f"{grid[0]} x {grid[1]} x {grid[2]}", str(n), f"{n / times[0]:,.0f}", f"{windows_s:,.0f}",
                      f"{train_s:.2f}", f"{windows_s / train_s:,.0f}x"]]))
    print(f"store prepared from {months} months ({prepared_store['input_bytes'] / 1e9:.1f} GB) in "
          f"{prepared_store['seconds']:.0f} s, {prepared_store['store_bytes'] / 1e9:.2f} GB; loader: batch {CONFIG.batch_size}, "
          "read in the training process, in the epoch's order; load average "
          + " ".join(f"{x:.1f}" for x in result["load"]))
    return result, [Target("0.25° store: loader windows/s over training samples/s", windows_s / train_s, LOADER_TARGET)]


# ---- part 3: training from the store against training from memory on the demo -------------------------------------
def demo_part(work: Path, keep: bool) -> tuple[dict[str, Any], list[Target]]:
    demo = demo_data_path()
    store = work / "demo.zarr"
    shutil.rmtree(store, ignore_errors=True)
    began = time.perf_counter()
    prepare_store(demo, store, RegionConfig(), time_step=CONFIG.time_step, train_ratio=CONFIG.train_ratio,
                  val_ratio=CONFIG.val_ratio)
    print(f"demo store prepared in {time.perf_counter() - began:.1f} s", flush=True)
    config = ConvLSTMConfig(num_epochs=DEMO_EPOCHS)
    results: dict[str, Any] = {}
    rows, targets = [], []
    for experiment in ("baseline", "upstream"):
        upstream = experiment == "upstream"
        runs = {}
        for source, path in (("memory", demo), ("store", store)):
            prepared = prepare_data(path, RegionConfig(), upstream, config.window_size, config.target_offset)
            torch.manual_seed(config.seed)
            model = ConvLSTMUNet(prepared.train.input_shape[1], config.hidden_channels, 1, config.kernel_size)
            epochs = _Epochs()
            trainer = Trainer(model, config, prepared.normalizer, prepared.train.downstream_columns, torch.device("cpu"),
                              work / f"ckpt-{experiment}-{source}", metadata={"normalizer": prepared.normalizer.to_dict()},
                              callbacks=[epochs])
            # The trainer's own loader, kept across epochs as fit() keeps it; epochs are driven one at a time so
            # that the two sources alternate.
            runs[source] = (trainer, trainer._loader(prepared.train, shuffle=True), prepared, epochs)
        for _ in range(DEMO_EPOCHS):
            for trainer, loader, prepared, _epochs in runs.values():
                with catching_signals(defer=True) as stop:
                    trainer._fit_epoch(loader, prepared.val, stop)
        per_source = {}
        for source, (_trainer, _loader, prepared, epochs) in runs.items():
            n = len(prepared.train)
            per_source[source] = {"n_train": n, "epochs": epochs.metrics,
                                   "step_samples_per_s": [n / m["train_step_time_s"] for m in epochs.metrics],
                                   "epoch_samples_per_s": [n / m["epoch_time_s"] for m in epochs.metrics]}
        runs.clear()
        gc.collect()
        mem, sto = per_source["memory"], per_source["store"]
        later = lambda values: statistics.median(values[1:])  # noqa: E731  epochs 2..
        step_ratio = later(sto["step_samples_per_s"]) / later(mem["step_samples_per_s"])
        epoch_ratio = later(sto["epoch_samples_per_s"]) / later(mem["epoch_samples_per_s"])
        results[experiment] = {**per_source, "step_ratio": step_ratio, "epoch_ratio": epoch_ratio, "load": os.getloadavg()}
        for source, r in per_source.items():
            rows.append([f"{experiment}, {source}", str(r["n_train"]),
                         " / ".join(f"{m['epoch_time_s']:.1f}" for m in r["epochs"]),
                         " / ".join(f"{m['train_step_time_s']:.1f}" for m in r["epochs"]),
                         " / ".join(f"{v:.1f}" for v in r["step_samples_per_s"]),
                         f"{later(r['step_samples_per_s']):.1f}", f"{later(r['epoch_samples_per_s']):.1f}",
                         "" if source == "memory" else f"{step_ratio:.3f}x / {epoch_ratio:.3f}x",
                         " ".join(f"{x:.1f}" for x in results[experiment]["load"])])
        targets.append(Target(f"demo {experiment}: store/memory train-step samples/s", step_ratio, STORE_TARGET))
        targets.append(Target(f"demo {experiment}: store/memory samples/s of epoch wall time", epoch_ratio, STORE_TARGET))
        for source in ("memory", "store"):
            shutil.rmtree(work / f"ckpt-{experiment}-{source}", ignore_errors=True)
    if not keep:
        shutil.rmtree(store, ignore_errors=True)
    print()
    print(fmt_table(["experiment, source", "train windows", "epoch s (1/2/3)", "step s (1/2/3)", "step samples/s (1/2/3)",
                     "step sam/s ep 2-3", "wall sam/s ep 2-3", "store/memory step / wall", "load after"], rows))
    print("epochs interleaved memory, store, memory, store, ...; ratios are medians of epochs 2-3.")
    return results, targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"input of {QUICK_MONTHS} months instead of {FULL_MONTHS}")
    parser.add_argument("--months", type=int, nargs="+", help="input sizes in months (overrides --quick)")
    parser.add_argument("--loader-months", type=int, default=LOADER_MONTHS, help="input of the loader part's store")
    parser.add_argument("--only", nargs="+", choices=["memory", "loader", "demo"], default=["memory", "loader", "demo"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/i12bench"), help="input files and stores go here")
    parser.add_argument("--keep", action="store_true", help="keep the input files and stores (else deleted at the end)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: the CPUs this process may use)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child)
    set_threads(args.threads)
    out: dict[str, Any] = print_header("Prepared-store benchmark (issue 12)")
    sizes = args.months or (QUICK_MONTHS if args.quick else FULL_MONTHS)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    targets: list[Target] = []
    try:
        if "memory" in args.only:
            print(f"== memory: input of {sizes} months at 0.25°, regions {asdict(MEMORY_REGIONS)}, model {MEMORY_MODEL}",
                  flush=True)
            out["memory"], found = memory_part(work, sizes, args.keep)
            targets += found
        if "loader" in args.only:
            print(f"\n== loader: a store of {args.loader_months} months at 0.25°, 61 x 221 cells", flush=True)
            out["loader"], found = loader_part(work, args.keep, args.loader_months)
            targets += found
        if "demo" in args.only:
            print("\n== demo: training from the store against from memory (1° demo, default settings)", flush=True)
            out["demo"], found = demo_part(work, args.keep)
            targets += found
    finally:
        if not args.keep:
            shutil.rmtree(work / "era5", ignore_errors=True)
            for path in work.glob("*.zarr"):
                shutil.rmtree(path, ignore_errors=True)
    out["sizes_months"] = sizes
    return finish(targets, out, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

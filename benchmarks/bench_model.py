"""Speed and activation memory of ``convlstm.model.ConvLSTMUNet`` against a textbook ConvLSTM U-Net.

Run from the repository root::

    python benchmarks/bench_model.py            # full run (about 2 minutes on 2 CPU cores)
    python benchmarks/bench_model.py --quick    # smoke run (skips the 64 x 128 grid, few repeats)

Models compared (same architecture, same weights, same outputs; see ``tests/test_reference_numerics.py``):

* ``fast`` - the library's ``ConvLSTMUNet``;
* ``ref``  - ``benchmarks/reference_model.py``: one ``Conv2d`` over ``cat([x_t, h])`` per timestep,
  the way most public implementations write it.

Figures: training step (forward + MSE loss + backward + AdamW step) in samples/s; conv GFLOP/s
counted analytically (2*Cin*Cout*k*k*H*W per conv application, x3 for forward + backward) and as a
fraction of this run's best dense float32 ``torch.mm`` rate; activation memory = bytes of the
distinct tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``,
parameters excluded) per sample; minor page faults per training step; inference latency
(``eval()`` + ``no_grad``) for 1 window, a batch of 8 and 100 windows in batches of 8.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from harness import Target, finish, fmt_table, iqr_pct, matmul_rate, print_header, set_threads, time_interleaved
from torch import Tensor, nn

from convlstm.model import ConvLSTMUNet

# Loaded by file path: ``benchmarks`` is a plain folder, not a package.
_spec = importlib.util.spec_from_file_location(
    "benchmarks_reference_model", Path(__file__).with_name("reference_model.py")
)
_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reference)
ReferenceConvLSTMUNet = _reference.ReferenceConvLSTMUNet
load_from_fast = _reference.load_from_fast

INPUT_CHANNELS = 56
BATCH = 4
STEPS = 6
NAMES = ("fast", "ref")
# The spec's GPU latency figures for inference (seconds): 1 window, a batch of 8, 100 windows.
SPEC_GPU_S = {"1 window": (0.050, 0.100), "batch of 8": (0.200, 0.300), "100 windows": (5.0, 10.0)}
TRAIN_TARGET = 1.0
INFER_TARGET = 1.3


class Grid(Protocol):
    """What an input batch needs of a benchmark's case (this script's or another's)."""

    height: int
    width: int


@dataclass(frozen=True)
class Case:
    label: str
    height: int
    width: int
    hidden: tuple[int, ...]
    repeats: int
    quick_repeats: int | None = 2  # None: skipped by --quick

    @property
    def name(self) -> str:
        return f"({self.label}) {self.height}x{self.width} h={list(self.hidden)}"


CASES = [
    Case("a", 20, 20, (32, 64), repeats=20),  # the spec's example
    Case("b", 16, 56, (32, 64), repeats=12),  # the demo's upstream + downstream grid
    Case("b", 16, 56, (16, 32, 64), repeats=12),  # ... with the demo's default hidden channels
    Case("c", 64, 128, (32, 64), repeats=7, quick_repeats=None),  # a larger grid
]


def forward_conv_flops(hidden: tuple[int, ...], batch: int, steps: int, height: int, width: int,
                       in_channels: int = INPUT_CHANNELS, kernel: int = 3, out_channels: int = 1) -> float:
    """Analytic conv FLOPs of one forward pass of the textbook formulation.

    A ConvLSTM cell applies a (Cin + hidden) -> 4*hidden k x k convolution per frame. Pooling,
    upsampling and gate arithmetic are not counted. The library does less (it skips the step-0
    state convolution over zeros, and convolves a decoder's upsampled input at the coarse grid), so its
    GFLOP/s are "reference work per second".
    """
    sizes = [(height, width)]
    for _ in range(1, len(hidden)):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))

    def cell(cin: int, hid: int, level: int) -> float:
        h, w = sizes[level]
        return 2.0 * (cin + hid) * 4 * hid * kernel * kernel * h * w * batch * steps

    total = cell(in_channels, hidden[0], 0)
    total += sum(cell(hidden[k - 1], hidden[k], k) for k in range(1, len(hidden)))
    total += sum(cell(hidden[k + 1] + hidden[k], hidden[k], k) for k in range(len(hidden) - 1))
    total += 2.0 * hidden[0] * out_channels * height * width * batch  # 1x1 head, last step only
    return total


def saved_activation_bytes(model: nn.Module, x: Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward in one forward (parameters excluded).

    Every tensor packed by ``saved_tensors_hooks`` is alive until backward, so de-duplicating by
    storage pointer counts each buffer once (views such as gate chunks count their whole base).
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs:
            storages[s.data_ptr()] = s.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())


def conv_rate(repeats: int = 5) -> float:
    """Best rate of one well-shaped 3x3 float32 convolution (128 -> 128 channels, 4 x 64 x 64), FLOP/s.

    Context for the 'of mm' column: oneDNN's direct convolutions can run faster than MKL's sgemm.
    """
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False)
    x = torch.randn(4, 128, 64, 64)
    with torch.no_grad():
        times = time_interleaved({"conv": lambda: conv(x)}, repeats=repeats, warmup=2)["conv"]
    return 2.0 * 128 * 128 * 9 * 4 * 64 * 64 / min(times)


@dataclass
class Row:
    case: str
    samples_per_s: dict[str, float] = field(default_factory=dict)
    step_ms: dict[str, float] = field(default_factory=dict)
    spread_pct: dict[str, float] = field(default_factory=dict)
    gflops: dict[str, float] = field(default_factory=dict)
    act_mib_per_sample: dict[str, float] = field(default_factory=dict)
    faults_per_step: dict[str, float] = field(default_factory=dict)
    repeats: int = 0

    @property
    def speedup(self) -> float:
        return self.samples_per_s["fast"] / self.samples_per_s["ref"]


def build_models(hidden: tuple[int, ...], seed: int = 0) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    fast = ConvLSTMUNet(INPUT_CHANNELS, list(hidden))
    return {"fast": fast, "ref": load_from_fast(ReferenceConvLSTMUNet(INPUT_CHANNELS, hidden), fast)}


def check_same_outputs(models: dict[str, nn.Module], x: Tensor) -> None:
    with torch.no_grad():
        outs = {name: m.eval()(x) for name, m in models.items()}
    err = (outs["ref"] - outs["fast"]).abs().max().item()
    if err > 1e-4:
        raise AssertionError(f"ref differs from fast by {err:.2e}: the comparison would be meaningless")


def training_inputs(case: Grid, batch: int = BATCH) -> tuple[Tensor, Tensor]:
    """A training batch ``[B, T, C, H, W]`` and its target for ``case``'s grid, the same in every script that times
    it."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, STEPS, INPUT_CHANNELS, case.height, case.width, generator=gen)
    return x, torch.rand(batch, 1, case.height, case.width, generator=gen)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, target: Tensor) -> None:
    """One timed training step: forward, MSE loss, backward, optimizer step."""
    opt.zero_grad(set_to_none=True)
    F.mse_loss(model(x), target).backward()
    opt.step()


def bench_training(case: Case, repeats: int) -> Row:
    models = build_models(case.hidden)
    x, target = training_inputs(case)
    check_same_outputs(models, x)

    row = Row(case.name, repeats=repeats)
    for name, model in models.items():
        row.act_mib_per_sample[name] = saved_activation_bytes(model, x) / BATCH / 2**20

    fns = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        fns[name] = lambda model=model, opt=opt: train_step(model, opt, x, target)
    faults: dict[str, list[int]] = {}
    times = time_interleaved(fns, repeats, faults=faults)

    flops = 3.0 * forward_conv_flops(case.hidden, BATCH, STEPS, case.height, case.width)
    for name, ts in times.items():
        med = statistics.median(ts)
        row.step_ms[name] = 1e3 * med
        row.samples_per_s[name] = BATCH / med
        row.spread_pct[name] = iqr_pct(ts)
        row.gflops[name] = flops / med / 1e9
        row.faults_per_step[name] = statistics.median(faults[name])
    return row


def bench_inference(repeats: dict[str, int], case: Case = CASES[0]) -> dict[str, dict[str, float]]:
    """Latency of consecutive shape (a) windows of a series: 1 window, a batch of 8, 100 windows in batches of 8.

    Forecasts are made over a time series, so the windows slide: ``ref`` and ``fast (stacked)`` get each
    batch collated as ``[B, T, C, H, W]`` (what a DataLoader yields; the collation is timed) and run
    ``forward``; ``fast`` is the library's prediction path, ``forward_windows`` on the frames the batch
    spans, as ``predict_windows`` does it, with the model frozen as forecasts load it (``ConvLSTMUNet.frozen``).
    """
    models = build_models(case.hidden)
    models["fast"] = models["fast"].frozen()  # as every forecast path loads it (load_forecast_model)
    models["ref"].eval()
    gen = torch.Generator().manual_seed(2)
    series = torch.randn(100 + STEPS - 1, INPUT_CHANNELS, case.height, case.width, generator=gen)
    starts = torch.arange(100)
    check_same_outputs(models, torch.stack([series[s:s + STEPS] for s in range(8)]))
    workloads = {"1 window": [starts[:1]], "batch of 8": [starts[:8]], "100 windows": list(starts.split(8))}

    def collated(model: nn.Module, batches: list[Tensor]) -> None:
        for batch in batches:
            model(torch.stack([series[s:s + STEPS] for s in batch.tolist()]))

    def spanned(model: ConvLSTMUNet, batches: list[Tensor]) -> None:
        for batch in batches:
            low = int(batch[0])
            model.forward_windows(series[low:int(batch[-1]) + STEPS], batch - low, STEPS)

    results: dict[str, dict[str, float]] = {}
    for label, count in repeats.items():  # the workloads asked for
        batches = workloads[label]
        fns = {"fast": lambda b=batches: spanned(models["fast"], b), "ref": lambda b=batches: collated(models["ref"], b),
               "fast (stacked)": lambda b=batches: collated(models["fast"], b)}
        with torch.no_grad():
            times = time_interleaved(fns, count)
        n_windows = sum(len(b) for b in batches)
        results[label] = {f"{n}_s": statistics.median(ts) for n, ts in times.items()}
        results[label].update({f"{n}_spread_pct": iqr_pct(ts) for n, ts in times.items()})
        results[label]["flops"] = forward_conv_flops(case.hidden, 1, STEPS, case.height, case.width) * n_windows
        results[label]["repeats"] = count
    return results


def profile_case(case: Case) -> None:
    """Print torch.profiler tables (self CPU time, grouped by op and input shape) for one training step."""
    from torch.profiler import ProfilerActivity, profile

    models = build_models(case.hidden)
    x, target = training_inputs(case)
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        train_step(model, opt, x, target)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            train_step(model, opt, x, target)
        events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        print(f"\n{name}: one training step, {case.name}, self CPU total {total / 1e3:.0f} ms")
        print(f"  {'op':<40} {'calls':>5} {'self ms':>9}  first input shapes")
        for e in events[:12]:
            shapes = ", ".join(str(s) for s in e.input_shapes[:2] if s)
            print(f"  {e.key[:40]:<40} {e.count:>5} {e.self_cpu_time_total / 1e3:>9.1f}  {shapes[:70]}")


def report_training(rows: list[Row], mm_rate: float) -> None:
    print("Training step (forward + backward + AdamW), samples/s = B / median step time")
    headers = ["shape", "reps"]
    for n in NAMES:
        headers += [f"{n} samp/s", f"{n} ms (IQR)"]
    table = []
    for r in rows:
        line = [r.case, str(r.repeats)]
        for n in NAMES:
            line += [f"{r.samples_per_s[n]:.1f}", f"{r.step_ms[n]:.0f} ({r.spread_pct[n]:.0f}%)"]
        table.append(line + [f"{r.speedup:.2f}x"])
    print(fmt_table(headers + ["fast/ref"], table))

    print("\nAchieved conv GFLOP/s (reference's analytic count, x3 for fwd+bwd) and as a fraction of the torch.mm rate")
    headers = ["shape", "GFLOP/step"]
    for n in NAMES:
        headers += [f"{n} GFLOP/s", "of mm"]
    table = []
    for r in rows:
        line = [r.case, f"{r.gflops['ref'] * r.step_ms['ref'] / 1e3:.1f}"]
        for n in NAMES:
            line += [f"{r.gflops[n]:.0f}", f"{r.gflops[n] * 1e9 / mm_rate:.2f}"]
        table.append(line)
    print(fmt_table(headers, table))

    print("\nActivation memory (bytes autograd saves for backward, per sample) and minor page faults per step")
    headers = ["shape"] + [f"{n} MiB/sample" for n in NAMES] + [f"{n} faults/step" for n in NAMES]
    table = []
    for r in rows:
        line = [r.case] + [f"{r.act_mib_per_sample[n]:.1f}" for n in NAMES]
        table.append(line + [f"{r.faults_per_step[n] / 1e3:.0f}k" for n in NAMES])
    print(fmt_table(headers, table))


def report_inference(results: dict[str, dict[str, float]], mm_rate: float) -> None:
    print(f"\nInference latency, consecutive windows of shape {CASES[0].name}, eval() + no_grad, median (IQR)")
    names = ["fast", "ref", "fast (stacked)"]
    headers = ["workload", "reps", *names, "ref/fast", "ref/fast (stacked)", "fast GFLOP/s", "of mm", "spec GPU",
               "fast/spec GPU"]
    table = []
    for label, res in results.items():
        line = [label, str(res["repeats"])]
        line += [f"{1e3 * res[f'{n}_s']:.1f} ms ({res[f'{n}_spread_pct']:.0f}%)" for n in names]
        lo, hi = SPEC_GPU_S[label]
        rate = res["flops"] / res["fast_s"]
        spec = f"{1e3 * lo:.0f}-{1e3 * hi:.0f} ms" if hi < 1 else f"{lo:.0f}-{hi:.0f} s"
        line += [f"{res['ref_s'] / res['fast_s']:.2f}x", f"{res['ref_s'] / res['fast (stacked)_s']:.2f}x",
                 f"{rate / 1e9:.0f}", f"{rate / mm_rate:.2f}", spec, f"{res['fast_s'] / hi:.2f}-{res['fast_s'] / lo:.2f}x"]
        table.append(line)
    print(fmt_table(headers, table))
    print("fast = the library's prediction path (forward_windows: each distinct frame projected once); fast (stacked) =\n"
          "its forward on collated windows, as for windows that do not overlap. ref/... > 1: the library is faster.\n"
          "fast/spec GPU < 1: this CPU beats the spec's GPU figure.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, skip the 64x128 grid")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: the CPUs this process may use)")
    parser.add_argument("--only", choices=["train", "infer"], help="run only the training or inference part")
    parser.add_argument("--profile", choices=sorted({c.label for c in CASES}),
                        help="instead of benchmarking, print torch.profiler tables of one training step for a shape "
                        "(b: the [32, 64] one)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    set_threads(args.threads)

    if args.profile:
        profile_case(next(c for c in CASES if c.label == args.profile))
        return 0

    out: dict[str, object] = print_header(
        "ConvLSTMUNet benchmark (fast = library, ref = per-timestep cat + Conv2d, same weights and outputs)")
    mm_rate = matmul_rate(repeats=2 if args.quick else 5)
    print(f"matmul    {mm_rate / 1e9:.0f} GFLOP/s (best torch.mm 2048x2048 float32; the 'of mm' base)")
    print(f"conv      {conv_rate(repeats=2 if args.quick else 5) / 1e9:.0f} GFLOP/s "
          "(best 3x3 Conv2d 128->128 on 4x64x64, forward; context only)")
    print(f"workload  B={BATCH}, T={STEPS}, C={INPUT_CHANNELS}, kernel 3, float32\n")
    started = time.perf_counter()
    targets: list[Target] = []

    if args.only != "infer":
        rows = []
        for case in CASES:
            repeats = case.quick_repeats if args.quick else case.repeats
            if repeats is not None:
                rows.append(bench_training(case, repeats))
        report_training(rows, mm_rate)
        if args.quick:
            print("(--quick: shape (c) skipped)")
        out["training"] = [r.__dict__ for r in rows]
        targets += [Target(f"training step {r.case}, fast/ref samples/s", r.speedup, TRAIN_TARGET) for r in rows]

    if args.only != "train":
        reps = ({"1 window": 5, "batch of 8": 3, "100 windows": 1} if args.quick
                else {"1 window": 200, "batch of 8": 15, "100 windows": 7})
        results = bench_inference(reps)
        report_inference(results, mm_rate)
        out["inference"] = results
        targets += [Target(f"inference {label}, ref/fast latency", res["ref_s"] / res["fast_s"], INFER_TARGET)
                    for label, res in results.items()]

    # A second matmul measurement shows whether the machine's load changed during the run.
    mm_after = matmul_rate(repeats=2 if args.quick else 5)
    print(f"\nmatmul after the run: {mm_after / 1e9:.0f} GFLOP/s; total time {time.perf_counter() - started:.0f} s")
    out["matmul_gflops"] = [mm_rate / 1e9, mm_after / 1e9]
    return finish(targets, out, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed and activation memory of ``convlstm.model.ConvLSTMUNet`` against a textbook ConvLSTM U-Net.

Run from the repository root::

    python benchmarks/bench_model.py            # full run (about 1-2 minutes on 2 CPU cores)
    python benchmarks/bench_model.py --quick    # smoke run (skips the 64 x 128 grid, few repeats)

Models compared (same architecture, same weights, same outputs; see ``tests/test_reference_numerics.py``):

* ``fast``  - the library's ``ConvLSTMUNet`` (input convolution batched over all timesteps, hidden
  convolution per timestep);
* ``ref``   - ``benchmarks/reference_model.py``: one ``Conv2d`` over ``cat([x_t, h])`` per timestep;
* ``proto`` - a prototype change to the library's ``ConvLSTMCell.forward_sequence`` (defined below,
  library untouched): input convolution per timestep instead of batched over time, and the first
  timestep skips ``hidden_conv(h0)``, which is exactly zero for the zero initial state.

Figures: training step (forward + MSE loss + backward + AdamW step) in samples/s; conv GFLOP/s
counted analytically (2*Cin*Cout*k*k*H*W per conv application, x3 for forward + backward) and as a
fraction of this run's best dense float32 ``torch.mm`` rate; activation memory = bytes of the
distinct tensors autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``,
parameters excluded) per sample; minor page faults per training step; inference latency
(``eval()`` + ``no_grad``) for 1 window, a batch of 8 and 100 windows in batches of 8. Every figure
is the median of repeats after warm-up; within a repeat the models run back to back, so load from
other jobs hits all of them alike.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the library, when it is not installed

from convlstm.model import ConvLSTMUNet  # noqa: E402

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
# The spec's GPU latency figures for inference (seconds): 1 window, a batch of 8, 100 windows.
SPEC_GPU_S = {"1 window": (0.050, 0.100), "batch of 8": (0.200, 0.300), "100 windows": (5.0, 10.0)}


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


# --------------------------------------------------------------------------------------------
# Prototype: the change to ConvLSTMCell.forward_sequence this benchmark suggests (library untouched)
# --------------------------------------------------------------------------------------------


def _prototype_forward_sequence(self, x_seq: Tensor, state=None):
    """``ConvLSTMCell.forward_sequence`` with two changes, same outputs.

    1. The input convolution runs per timestep on ``[B, C, H, W]`` instead of once on
       ``[B*T, C, H, W]``. On a CPU one timestep already keeps the cores busy, so batching over time
       gains nothing, while slicing the ``[B, T, 4h, H, W]`` result per step costs a zero-filled
       full-size gradient per step in backward (``SelectBackward``), and tensors that large (over
       glibc's 32 MiB mmap threshold on big grids) are page-faulted afresh on every step.
    2. With the zero initial state, ``hidden_conv(h0)`` (no bias) and ``f * c0`` are exactly zero:
       step 0 skips them (1/T of the hidden-convolution FLOPs).
    """
    hd = self.hidden_dim
    outputs = []
    frames = x_seq.unbind(1)
    start = 0
    if state is None:
        i, _f, o, g = torch.split(self.input_conv(frames[0]), hd, dim=1)
        c = torch.sigmoid(i) * torch.tanh(g)
        state = (torch.sigmoid(o) * torch.tanh(c), c)
        outputs.append(state[0])
        start = 1
    for x_t in frames[start:]:
        state = self.step(self.input_conv(x_t), state)
        outputs.append(state[0])
    return torch.stack(outputs, dim=1), state


def prototype_from_fast(fast: ConvLSTMUNet) -> ConvLSTMUNet:
    proto = copy.deepcopy(fast)
    for cell in [*proto.encoders, *proto.decoders]:
        cell.forward_sequence = types.MethodType(_prototype_forward_sequence, cell)
    return proto


# --------------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------------


def forward_conv_flops(hidden: tuple[int, ...], batch: int, steps: int, height: int, width: int,
                       in_channels: int = INPUT_CHANNELS, kernel: int = 3, out_channels: int = 1) -> float:
    """Analytic conv FLOPs of one forward pass (both formulations do the same convolutions).

    A ConvLSTM cell applies a (Cin + hidden) -> 4*hidden k x k convolution per frame (the library
    splits it into an input and a hidden conv, the reference fuses them: same count). Pooling,
    upsampling and gate arithmetic are not counted. The step-0 hidden conv over the zero state is
    counted (both models compute it; only ``proto`` skips it).
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


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                     faults: dict[str, list[int]] | None = None) -> dict[str, list[float]]:
    """Run every fn ``warmup`` times, then ``repeats`` rounds of all fns back to back; seconds per call.

    With ``faults``, also record each call's minor page faults (process-wide ``getrusage``).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt if faults is not None else 0
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
            if faults is not None:
                faults.setdefault(name, []).append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return times


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """Best dense float32 ``torch.mm`` rate in FLOP/s (2*n^3 per product)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    times = time_interleaved({"mm": lambda: torch.mm(a, b, out=out)}, repeats=repeats, warmup=2)["mm"]
    return 2.0 * size**3 / min(times)


def conv_rate(repeats: int = 5) -> float:
    """Best rate of one well-shaped 3x3 float32 convolution (128 -> 128 channels, 4 x 64 x 64), FLOP/s.

    Context for the 'of mm' column: oneDNN's direct convolutions can run faster than MKL's sgemm.
    """
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False)
    x = torch.randn(4, 128, 64, 64)
    with torch.no_grad():
        times = time_interleaved({"conv": lambda: conv(x)}, repeats=repeats, warmup=2)["conv"]
    return 2.0 * 128 * 128 * 9 * 4 * 64 * 64 / min(times)


def iqr_pct(values: list[float]) -> float:
    if len(values) < 4:
        return 100.0 * (max(values) - min(values)) / statistics.median(values)
    q = statistics.quantiles(values, n=4)
    return 100.0 * (q[2] - q[0]) / statistics.median(values)


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


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


def build_models(hidden: tuple[int, ...], with_proto: bool, seed: int = 0) -> dict[str, nn.Module]:
    torch.manual_seed(seed)
    fast = ConvLSTMUNet(INPUT_CHANNELS, list(hidden))
    reference = load_from_fast(ReferenceConvLSTMUNet(INPUT_CHANNELS, hidden), fast)
    models: dict[str, nn.Module] = {"fast": fast, "ref": reference}
    if with_proto:
        models["proto"] = prototype_from_fast(fast)
    return models


def check_same_outputs(models: dict[str, nn.Module], x: Tensor) -> None:
    with torch.no_grad():
        outs = {name: m.eval()(x) for name, m in models.items()}
    for name, out in outs.items():
        err = (out - outs["fast"]).abs().max().item()
        if err > 1e-4:
            raise AssertionError(f"{name} differs from fast by {err:.2e}: the comparison would be meaningless")


def bench_training(case: Case, repeats: int, with_proto: bool) -> Row:
    models = build_models(case.hidden, with_proto)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, STEPS, INPUT_CHANNELS, case.height, case.width, generator=gen)
    target = torch.rand(BATCH, 1, case.height, case.width, generator=gen)
    check_same_outputs(models, x)

    row = Row(case.name, repeats=repeats)
    for name, model in models.items():
        row.act_mib_per_sample[name] = saved_activation_bytes(model, x) / BATCH / 2**20

    def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), target).backward()
        opt.step()

    fns = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        fns[name] = lambda model=model, opt=opt: train_step(model, opt)
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


def bench_inference(repeats: dict[str, int], with_proto: bool, case: Case = CASES[0]) -> dict[str, dict[str, float]]:
    """Latency of shape (a) windows: 1 window, a batch of 8, 100 windows in batches of 8."""
    models = build_models(case.hidden, with_proto)
    for model in models.values():
        model.eval()
    gen = torch.Generator().manual_seed(2)
    windows = torch.randn(100, STEPS, INPUT_CHANNELS, case.height, case.width, generator=gen)
    check_same_outputs(models, windows[:8])
    workloads = {
        "1 window": [windows[:1]],
        "batch of 8": [windows[:8]],
        "100 windows": list(windows.split(8)),
    }
    results: dict[str, dict[str, float]] = {}
    for label, batches in workloads.items():

        def run(model: nn.Module, batches=batches) -> None:
            with torch.no_grad():
                for batch in batches:
                    model(batch)

        times = time_interleaved({n: (lambda m=m: run(m)) for n, m in models.items()}, repeats[label])
        n_windows = sum(b.shape[0] for b in batches)
        flops = forward_conv_flops(case.hidden, 1, STEPS, case.height, case.width) * n_windows
        results[label] = {f"{n}_s": statistics.median(ts) for n, ts in times.items()}
        results[label].update({f"{n}_spread_pct": iqr_pct(ts) for n, ts in times.items()})
        results[label]["flops"] = flops
        results[label]["repeats"] = repeats[label]
    return results


def profile_case(case: Case) -> None:
    """Print torch.profiler tables (self CPU time, grouped by op and input shape) for one training step."""
    from torch.profiler import ProfilerActivity, profile

    models = build_models(case.hidden, with_proto=True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, STEPS, INPUT_CHANNELS, case.height, case.width, generator=gen)
    target = torch.rand(BATCH, 1, case.height, case.width, generator=gen)
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            F.mse_loss(model(x), target).backward()
            opt.step()

        step()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
        events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        print(f"\n{name}: one training step, {case.name}, self CPU total {total / 1e3:.0f} ms")
        print(f"  {'op':<40} {'calls':>5} {'self ms':>9}  first input shapes")
        for e in events[:12]:
            shapes = ", ".join(str(s) for s in e.input_shapes[:2] if s)
            print(f"  {e.key[:40]:<40} {e.count:>5} {e.self_cpu_time_total / 1e3:>9.1f}  {shapes[:70]}")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def cpu_description() -> str:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model", "flags") and key not in info:
                    info[key] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    flags = info.get("flags", "").split()
    simd = "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "no avx2")
    family, model = info.get("cpu family", "?"), info.get("model", "?")
    return f"{info.get('model name', '?')} (family {family}, model {model}, {simd})"


def print_header(threads: int, mm_rate: float, conv: float) -> None:
    print("ConvLSTMUNet benchmark (fast = library, ref = per-timestep cat+Conv2d, proto = suggested change)")
    print(f"date      {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"cpu       {cpu_description()}; {os.cpu_count()} logical CPUs, torch threads = {threads}")
    print(f"torch     {torch.__version__}, python {platform.python_version()}")
    print(f"matmul    {mm_rate / 1e9:.0f} GFLOP/s (best torch.mm 2048x2048 float32; the 'of mm' base)")
    print(f"conv      {conv / 1e9:.0f} GFLOP/s (best 3x3 Conv2d 128->128 on 4x64x64, forward; context only)")
    print(f"workload  B={BATCH}, T={STEPS}, C={INPUT_CHANNELS}, kernel 3, float32\n")


def fmt_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def report_training(rows: list[Row], mm_rate: float, names: list[str]) -> None:
    print("Training step (forward + backward + AdamW), samples/s = B / median step time")
    headers = ["shape", "reps"]
    for n in names:
        headers += [f"{n} samp/s", f"{n} ms (IQR)"]
    headers += ["fast/ref"] + (["proto/ref"] if "proto" in names else [])
    table = []
    for r in rows:
        line = [r.case, str(r.repeats)]
        for n in names:
            line += [f"{r.samples_per_s[n]:.1f}", f"{r.step_ms[n]:.0f} ({r.spread_pct[n]:.0f}%)"]
        line += [f"{r.samples_per_s['fast'] / r.samples_per_s['ref']:.2f}x"]
        if "proto" in names:
            line += [f"{r.samples_per_s['proto'] / r.samples_per_s['ref']:.2f}x"]
        table.append(line)
    print(fmt_table(headers, table))

    print("\nAchieved conv GFLOP/s (analytic, x3 for fwd+bwd) and as a fraction of the torch.mm rate")
    headers = ["shape", "GFLOP/step"]
    for n in names:
        headers += [f"{n} GFLOP/s", "of mm"]
    table = []
    for r in rows:
        flops = r.gflops["fast"] * r.step_ms["fast"] / 1e3
        line = [r.case, f"{flops:.1f}"]
        for n in names:
            line += [f"{r.gflops[n]:.0f}", f"{r.gflops[n] * 1e9 / mm_rate:.2f}"]
        table.append(line)
    print(fmt_table(headers, table))

    print("\nActivation memory (bytes autograd saves for backward, per sample) and minor page faults per step")
    headers = ["shape"] + [f"{n} MiB/sample" for n in names] + [f"{n} faults/step" for n in names]
    table = []
    for r in rows:
        line = [r.case] + [f"{r.act_mib_per_sample[n]:.1f}" for n in names]
        line += [f"{r.faults_per_step[n] / 1e3:.0f}k" for n in names]
        table.append(line)
    print(fmt_table(headers, table))


def report_inference(results: dict[str, dict[str, float]], mm_rate: float, names: list[str]) -> None:
    print(f"\nInference latency, shape {CASES[0].name}, eval() + no_grad, median (IQR)")
    headers = ["workload", "reps"] + [f"{n}" for n in names] + ["ref/fast"]
    headers += (["ref/proto"] if "proto" in names else []) + ["fast GFLOP/s", "of mm", "spec GPU", "fast/spec GPU"]
    table = []
    for label, res in results.items():
        line = [label, str(res["repeats"])]
        line += [f"{1e3 * res[f'{n}_s']:.1f} ms ({res[f'{n}_spread_pct']:.0f}%)" for n in names]
        line += [f"{res['ref_s'] / res['fast_s']:.2f}x"]
        if "proto" in names:
            line += [f"{res['ref_s'] / res['proto_s']:.2f}x"]
        lo, hi = SPEC_GPU_S[label]
        rate = res["flops"] / res["fast_s"]
        spec = f"{1e3 * lo:.0f}-{1e3 * hi:.0f} ms" if hi < 1 else f"{lo:.0f}-{hi:.0f} s"
        line += [f"{rate / 1e9:.0f}", f"{rate / mm_rate:.2f}", spec,
                 f"{res['fast_s'] / hi:.2f}-{res['fast_s'] / lo:.2f}x"]
        table.append(line)
    print(fmt_table(headers, table))
    print("ref/fast > 1: the library is faster. fast/spec GPU < 1: this CPU beats the spec's GPU figure.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, skip the 64x128 grid")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch.set_num_threads (default: the CPUs this process may use)")
    parser.add_argument("--no-proto", action="store_true", help="leave out the prototype model")
    parser.add_argument("--only", choices=["train", "infer"], help="run only the training or inference part")
    parser.add_argument("--profile", choices=sorted({c.label for c in CASES}),
                        help="instead of benchmarking, print torch.profiler tables of one training step for a shape "
                        "(b: the [32, 64] one)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    if args.profile:
        profile_case(next(c for c in CASES if c.label == args.profile))
        return 0

    mm_rate = matmul_rate(repeats=2 if args.quick else 5)
    print_header(threads, mm_rate, conv_rate(repeats=2 if args.quick else 5))
    names = ["fast", "ref"] + ([] if args.no_proto else ["proto"])
    out: dict[str, object] = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                              "cpu": cpu_description(), "threads": threads, "torch": torch.__version__}
    started = time.perf_counter()

    if args.only != "infer":
        rows = []
        for case in CASES:
            repeats = case.quick_repeats if args.quick else case.repeats
            if repeats is None:
                continue
            rows.append(bench_training(case, repeats, with_proto=not args.no_proto))
        report_training(rows, mm_rate, names)
        if args.quick:
            print("(--quick: shape (c) skipped)")
        out["training"] = [r.__dict__ for r in rows]

    if args.only != "train":
        reps = ({"1 window": 5, "batch of 8": 3, "100 windows": 1} if args.quick
                else {"1 window": 30, "batch of 8": 15, "100 windows": 7})
        results = bench_inference(reps, with_proto=not args.no_proto)
        report_inference(results, mm_rate, names)
        out["inference"] = results

    # A second matmul measurement shows whether the machine's load changed during the run.
    mm_after = matmul_rate(repeats=2 if args.quick else 5)
    print(f"\nmatmul after the run: {mm_after / 1e9:.0f} GFLOP/s; total time {time.perf_counter() - started:.0f} s")
    out["matmul_gflops"] = [mm_rate / 1e9, mm_after / 1e9]
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

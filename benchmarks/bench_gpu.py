"""The CUDA path's options, each on and off: mixed precision (bf16, fp16), channels-last, compiled gates and
cuDNN autotuning, for a training step and for inference, against the library in float32 with every option off
(the reference of the run) and against the textbook model.

Run from the repository root, on a machine with a CUDA GPU::

    python benchmarks/bench_gpu.py [--quick] [--json out.json]

``--device cpu`` runs the same script on the CPU, as a check of the script itself (its figures say nothing of a GPU).
A configuration is safe when its forecast stays within ``SAFE_ERROR`` of the float32 one (relative L2 error, the
same weights); the fastest safe configuration for training is named at the end for each grid: the CUDA default
should be the one of the grid of real data.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._dynamo
import torch.nn.functional as F
from bench_cpu_variants import contiguous_layout
from bench_model import INPUT_CHANNELS, SPEC_GPU_S, STEPS, load_from_fast, training_inputs
from bench_model import ReferenceConvLSTMUNet as Textbook
from harness import fmt_table, print_header, set_threads, time_interleaved
from torch import Tensor, nn

from convlstm.model import ConvLSTMUNet

#: a forecast further than this from the float32 one (relative L2 error) makes a configuration unsafe
SAFE_ERROR = 1e-2


@dataclass(frozen=True)
class Options:
    """One configuration of the CUDA path."""

    amp: torch.dtype | None = None
    channels_last: bool = True
    compile_gates: bool = False
    cudnn_benchmark: bool = False
    textbook: bool = False


def configurations(device: torch.device) -> dict[str, Options]:
    """Every option on alone, the shipped CUDA default, all the fast options together, and the textbook model."""
    bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()
    low = torch.bfloat16 if bf16 else torch.float16
    configs = {
        "float32 (reference)": Options(),
        "AMP bf16": Options(amp=torch.bfloat16),
        "AMP fp16": Options(amp=torch.float16),
        "NCHW": Options(channels_last=False),
        "compiled gates": Options(compile_gates=True),
        "cudnn.benchmark": Options(cudnn_benchmark=True),
        "shipped (AMP, channels-last)": Options(amp=low),
        "AMP + compiled + cudnn.benchmark": Options(amp=low, compile_gates=True, cudnn_benchmark=True),
        "textbook float32": Options(textbook=True),
        "textbook AMP": Options(amp=low, textbook=True),
    }
    if not bf16:
        del configs["AMP bf16"]
    return configs


@dataclass(frozen=True)
class Case:
    name: str
    height: int
    width: int
    hidden: tuple[int, ...]
    batch: int


TRAIN_CASES = [
    Case("demo 16x56", 16, 56, (16, 32, 64), 16),
    Case("64x128", 64, 128, (32, 64), 8),
    # ERA5 at 0.25°, the default regions with the upstream one (25-40 °N, 70-125 °E), the README's levels for a GPU
    Case("ERA5 61x221", 61, 221, (32, 64, 128), 16),
]
INFER_CASE = Case("20x20", 20, 20, (32, 64), 8)  # bench_model.py's inference shape, and the spec's GPU figures'


@dataclass
class Run:
    """A configuration's model, optimizer and scaler on the device, and how it calls them."""

    options: Options
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The configuration's global switches, for one call (runs are interleaved)."""
        previous = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.options.cudnn_benchmark
        layout = contextlib.nullcontext() if self.options.channels_last else contiguous_layout()
        try:
            with layout, torch.autocast(self.device.type, dtype=self.options.amp or torch.float32,
                                        enabled=self.options.amp is not None):
                yield
        finally:
            torch.backends.cudnn.benchmark = previous

    def train_step(self, x: Tensor, target: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.active():
            loss = F.mse_loss(self.model(x).float(), target)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    @torch.no_grad()
    def forecast(self, x: Tensor) -> Tensor:
        with self.active():
            return self.model(x).float()


def build(options: Options, hidden: tuple[int, ...], device: torch.device) -> Run:
    """The configuration's model, with the weights every configuration of ``hidden`` starts from."""
    torch.manual_seed(0)
    with contextlib.nullcontext() if options.channels_last else contiguous_layout():
        model: nn.Module = ConvLSTMUNet(INPUT_CHANNELS, list(hidden))
    if options.textbook:
        model = load_from_fast(Textbook(INPUT_CHANNELS, hidden), model)
    elif options.compile_gates:
        model.compile_gates()
    model.to(device)
    return Run(options, model, torch.optim.AdamW(model.parameters(), lr=1e-4),
               torch.amp.GradScaler(device.type, enabled=options.amp == torch.float16), device)


def synchronized(device: torch.device, fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` timed to its end on the device, not to its launch."""
    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return call


def first_call_s(fn: Callable[[], None]) -> float:
    """Seconds of the first call: where compiling and cuDNN's autotuning happen."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_training(configs: dict[str, Options], case: Case, repeats: int, device: torch.device) -> list[list[str]]:
    """Samples/s, the ratio to the reference, peak memory and the first step's seconds, one row a configuration."""
    x, target = (t.to(device) for t in training_inputs(case, case.batch))
    runs = {name: build(options, case.hidden, device) for name, options in configs.items()}
    fns = {name: synchronized(device, lambda run=run: run.train_step(x, target)) for name, run in runs.items()}
    first = {name: first_call_s(fn) for name, fn in fns.items()}
    peak = {}
    for name, fn in fns.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            peak[name] = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}"
        else:
            peak[name] = "-"
    times = {name: statistics.median(ts) for name, ts in time_interleaved(fns, repeats).items()}
    reference = times["float32 (reference)"]
    return [[case.name, name, f"{case.batch / seconds:.1f}", f"{reference / seconds:.2f}x", peak[name],
             f"{first[name]:.1f}"] for name, seconds in times.items()]


def bench_inference(configs: dict[str, Options], repeats: int,
                    device: torch.device) -> tuple[list[list[str]], dict[str, float]]:
    """Latency of one window and of a batch of 8, and each forecast's error against float32's, a row each."""
    case = INFER_CASE
    gen = torch.Generator().manual_seed(2)
    batch = torch.randn(case.batch, STEPS, INPUT_CHANNELS, case.height, case.width, generator=gen).to(device)
    runs = {name: build(options, case.hidden, device) for name, options in configs.items()}
    for run in runs.values():
        run.model.eval()
    reference = runs["float32 (reference)"].forecast(batch)
    errors = {name: float(torch.linalg.vector_norm(run.forecast(batch) - reference)
                          / torch.linalg.vector_norm(reference)) for name, run in runs.items()}
    rows = []
    for label, x in (("1 window", batch[:1]), ("batch of 8", batch)):
        fns = {name: synchronized(device, lambda run=run, x=x: run.forecast(x)) for name, run in runs.items()}
        times = {name: statistics.median(ts) for name, ts in time_interleaved(fns, repeats, warmup=2).items()}
        lo, hi = SPEC_GPU_S[label]
        for name, seconds in times.items():
            rows.append([label, name, f"{1e3 * seconds:.2f}", f"{times['float32 (reference)'] / seconds:.2f}x",
                         f"{1e3 * lo:.0f}-{1e3 * hi:.0f}", f"{errors[name]:.1e}"])
    return rows, errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: check the script only")
    parser.add_argument("--quick", action="store_true", help="the demo grid only, few repeats")
    parser.add_argument("--json", type=Path, help="also write the tables to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (PyTorch sees none); --device cpu checks the script only.")
    device = torch.device(args.device)
    set_threads(None)
    # A run compiles the gates for each precision, grad mode and state it meets; a training run meets a few of
    # them (convlstm.model._compiled_gates), this script all of them, beyond Dynamo's default limit of 8, after
    # which it would fall back to eager mode and time that instead.
    torch._dynamo.config.recompile_limit = 64
    info = print_header("ConvLSTMUNet on a GPU: the CUDA options, each on and off")
    configs = configurations(device)
    cases = TRAIN_CASES[:1] if args.quick else TRAIN_CASES
    repeats = 3 if args.quick else 20

    train_rows = [row for case in cases for row in bench_training(configs, case, repeats, device)]
    print("Training step (forward, loss, backward, AdamW), samples/s of the median step")
    train_headers = ["grid", "configuration", "samples/s", "vs float32", "peak MiB", "first step s"]
    print(fmt_table(train_headers, train_rows))

    infer_rows, errors = bench_inference(configs, 5 * repeats, device)
    print(f"\nInference, {INFER_CASE.name}, hidden {list(INFER_CASE.hidden)}: median latency")
    infer_headers = ["workload", "configuration", "ms", "vs float32", "spec GPU ms", "error vs float32"]
    print(fmt_table(infer_headers, infer_rows))

    safe = [name for name, error in errors.items() if error <= SAFE_ERROR and not configs[name].textbook]
    print(f"\nFastest safe configuration for training (forecast within {SAFE_ERROR:g} of float32's), each grid:")
    fastest = {}
    for case in cases:
        speed = {row[1]: float(row[2]) for row in train_rows if row[0] == case.name}
        best = fastest[case.name] = max(safe, key=speed.__getitem__)
        print(f"  {case.name}: {best}, {speed[best]:.1f} samples/s")
    if args.json is not None:
        import json

        args.json.write_text(json.dumps({"machine": info, "training": {"headers": train_headers, "rows": train_rows},
                                         "inference": {"headers": infer_headers, "rows": infer_rows},
                                         "fastest_safe": fastest}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

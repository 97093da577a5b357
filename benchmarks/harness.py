"""What every benchmark script shares: timing, the machine's yardsticks, tables and target lines.

Every figure is the median of repeats after a warm-up; competitors run back to back within each
repeat, so a change in the machine's load hits them alike and their ratio stays meaningful even
when absolute times drift (this machine is shared).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the library, when it is not installed

from convlstm.device import cpu_info  # noqa: E402  (after the path above)


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


def iqr_pct(values: list[float]) -> float:
    """Interquartile range as a % of the median (max - min for fewer than 4 values)."""
    if len(values) < 4:
        return 100.0 * (max(values) - min(values)) / statistics.median(values)
    q = statistics.quantiles(values, n=4)
    return 100.0 * (q[2] - q[0]) / statistics.median(values)


def percentile(values: list[float], pct: float) -> float:
    """The ``pct``-th percentile (linear interpolation between order statistics)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * pct / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """Best dense float32 ``torch.mm`` rate in FLOP/s (2*n^3 per product): the machine's yardstick."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    times = time_interleaved({"mm": lambda: torch.mm(a, b, out=out)}, repeats=repeats, warmup=2)["mm"]
    return 2.0 * size**3 / min(times)


def cpu_description() -> str:
    """The CPU's name, family, model and widest SIMD level, which decide the kernels its figures come from."""
    info = cpu_info()
    if not info:
        return platform.processor() or platform.machine()
    flags = info.get("flags", "").split()
    simd = "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "no avx2")
    family, model = info.get("cpu family", "?"), info.get("model", "?")
    return f"{info.get('model name', '?')} (family {family}, model {model}, {simd})"


def machine() -> dict[str, str]:
    """Where and with what the figures were measured."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{cpu_description()}; {os.cpu_count()} logical CPUs, torch threads = {torch.get_num_threads()}",
        "kernels": f"torch {torch.backends.cpu.get_cpu_capability()} CPU kernels, "
                   f"MKL {'yes' if torch.backends.mkl.is_available() else 'no'}, "
                   f"oneDNN {'yes' if torch.backends.mkldnn.is_available() else 'no'}" + _isa_limits(),
        "gpu": device,
        "torch": f"{torch.__version__}, python {platform.python_version()}",
        "load": "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


#: Variables that make PyTorch, oneDNN and MKL use narrower instructions than the CPU has: with all three at AVX2,
#: an AVX-512 machine runs the kernels an AVX2-only one would (benchmarks/README.md).
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _isa_limits() -> str:
    """``; limited by NAME=value, ...`` for the ISA_LIMITS set in this process's environment, else nothing."""
    limits = [f"{name}={os.environ[name]}" for name in ISA_LIMITS if os.environ.get(name)]
    return f"; limited by {', '.join(limits)}" if limits else ""


def print_header(title: str) -> dict[str, str]:
    info = machine()
    print(title)
    for key, value in info.items():
        print(f"{key:<9} {value}")
    print()
    return info


def fmt_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


@dataclass
class Target:
    """One line of the issue's targets: what was measured against what was asked."""

    name: str
    measured: float
    threshold: float
    at_least: bool = True  # True: measured >= threshold passes; False: measured <= threshold passes
    unit: str = "x"

    @property
    def met(self) -> bool:
        return self.measured >= self.threshold if self.at_least else self.measured <= self.threshold

    def line(self) -> str:
        sign = ">=" if self.at_least else "<="
        verdict = "met" if self.met else "NOT MET"
        return f"{self.name:<58} {self.measured:8.2f}{self.unit:<2} (target {sign} {self.threshold:g}{self.unit})  {verdict}"


def finish(targets: list[Target], out: dict, json_path: Path | None) -> int:
    """Print the targets, add them to ``out`` and write it to ``json_path`` (when given); the exit code."""
    print("\nTargets")
    for target in targets:
        print("  " + target.line())
    out["targets"] = [t.__dict__ | {"met": t.met} for t in targets]
    if json_path is not None:
        json_path.write_text(json.dumps(out, indent=2, default=str))
    return 0


def store_env(root: Path) -> dict[str, str]:
    """Environment for subprocesses: an MLflow store in ``root`` (artifacts land there, not in the
    repository) and the repository importable."""
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_train(root: Path, experiment: str, epochs: int, experiment_name: str) -> None:
    """The real train command with its defaults but the epoch count, run in ``root`` against its store."""
    command = [sys.executable, "-m", "entrypoints.train", "--include-upstream", str(experiment == "upstream").lower(),
               "--num-epochs", str(epochs), "--output-dir", str(root / experiment), "--experiment-name", experiment_name]
    done = subprocess.run(command, cwd=root, env=store_env(root), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the train command failed:\n{done.stderr[-3000:]}")


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads`` (default: the CPUs this process may use)."""
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))


def loader_pass_times(dataset: torch.utils.data.Dataset, batch_size: int, passes: int, **options: object) -> list[float]:
    """Seconds of each of ``passes`` collated passes over ``dataset`` by one ``DataLoader``, each in a new
    training order (``EpochOrder``, as the trainer draws it; the first pass included: with persistent workers
    it starts them, and it fills a store's cache). ``options`` go to the loader."""
    from convlstm.data.epoch_order import EpochOrder

    order = EpochOrder(len(dataset), torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=order, **options)  # type: ignore[arg-type]
    return time_interleaved({"pass": lambda: sum(1 for _ in loader)}, repeats=passes, warmup=0)["pass"]


def loader_rate(dataset: torch.utils.data.Dataset, batch_size: int, passes: int, **options: object) -> float:
    """Windows per second of a collated pass over ``dataset`` in training order (median of ``passes`` after a
    warm-up pass)."""
    times = loader_pass_times(dataset, batch_size, passes + 1, **options)[1:]
    return len(dataset) / statistics.median(times)  # type: ignore[arg-type]


def training_rate(dataset: torch.utils.data.Dataset, hidden: list[int], batch_size: int, repeats: int) -> float:
    """Training samples per second of the model on ``dataset``'s grid (forward + loss + backward + AdamW), on
    its first batch; ``dataset`` is a window dataset (``downstream_columns`` picks the target's columns)."""
    from convlstm.model import ConvLSTMUNet

    x, y = next(iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size)))
    model = ConvLSTMUNet(x.shape[2], hidden)
    opt = torch.optim.AdamW(model.parameters())
    columns = dataset.downstream_columns  # type: ignore[attr-defined]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x)[:, 0, :, columns], y).backward()
        opt.step()

    return batch_size / statistics.median(time_interleaved({"step": step}, repeats=repeats)["step"])

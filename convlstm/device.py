"""Pick the compute device: the best available for ``auto``, and a clear refusal for one that is not there; and what
the CPU is, which the kernel choice (``convlstm.kernels``) and the benchmarks' header both need."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from convlstm.config import DEVICES
from convlstm.errors import ConfigError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def select_device(name: str = "auto") -> torch.device:
    """The device to compute on: ``auto`` takes cuda, else mps (Apple silicon), else cpu.

    Parameters
    ----------
    name : str
        One of ``auto``, ``cuda``, ``mps``, ``cpu``; a named device must exist.

    Returns
    -------
    torch.device
        The chosen device.
    """
    if name not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}.", "device")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but PyTorch sees no CUDA GPU (is a CUDA build of torch "
                          "installed?). Use --device auto or cpu.", "device")
    if name == "mps" and not _mps_available():
        raise ConfigError("--device mps was requested but MPS (Apple silicon GPU) is not available. Use --device auto "
                          "or cpu.", "device")
    return torch.device(name)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for mixed precision on this device, or None where AMP is not used.

    bf16 where the GPU supports it (no loss scaling needed), else fp16 with a gradient scaler.
    CPU and MPS run in fp32. On MPS autocast is slower or unsupported for these convolutions. On a CPU
    with AMX, bf16 autocast measured 1.4-2.2x faster for inference (within 0.4 % of fp32, untrained
    weights), but it is unchecked for training quality and for CPUs without AMX, so it is no default.

    Parameters
    ----------
    device : torch.device
        Where the model runs.

    Returns
    -------
    torch.dtype or None
        ``torch.bfloat16``, ``torch.float16`` or None (full precision).
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def cpu_info() -> dict[str, str]:
    """The first processor's fields in Linux's ``/proc/cpuinfo`` (``vendor_id``, ``model name``, ``cpu family``,
    ``model``, ``flags``, ...); empty where there is none (macOS, Windows). Read at each call: callers on a hot path
    cache what they derive from it (``convlstm.kernels``)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as lines:
            return parse_cpuinfo(lines)
    except OSError:
        return {}


def parse_cpuinfo(lines: Iterable[str]) -> dict[str, str]:
    """``key: value`` lines as a dict, the first value of each key (every processor repeats them)."""
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields

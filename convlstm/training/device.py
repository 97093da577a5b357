"""Pick the compute device: the best available for ``auto``, and a clear refusal for one that is not there."""

from __future__ import annotations

import torch

from convlstm.errors import DataError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def select_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda, else mps (Apple silicon), else cpu; a named device must exist."""
    if name not in DEVICE_CHOICES:
        raise DataError(f"--device must be one of {', '.join(DEVICE_CHOICES)}, got {name!r}.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda was requested but PyTorch sees no CUDA GPU (is a CUDA build of torch installed?). Use --device auto or cpu.")
    if name == "mps" and not _mps_available():
        raise DataError("--device mps was requested but MPS (Apple silicon GPU) is not available. Use --device auto or cpu.")
    return torch.device(name)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for mixed precision on this device, or None where AMP is not used.

    bf16 where the GPU supports it (no loss scaling needed), else fp16 with a gradient scaler.
    CPU and MPS run in fp32. On MPS autocast is slower or unsupported for these convolutions. On a CPU
    with AMX, bf16 autocast measured 1.4-2.2x faster for inference (within 0.4 % of fp32, untrained
    weights), but it is unchecked for training quality and for CPUs without AMX, so it is no default.
    """
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

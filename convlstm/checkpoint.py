"""Self-contained checkpoints: everything needed to resume training or rebuild the model for inference.

A checkpoint holds the weights, optimizer / scheduler / gradient-scaler state, epoch and step, the best
validation score, both configs, the normalizer statistics, the training history and library versions.
Only plain Python values and tensors go in, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from convlstm.atomic import atomic_path
from convlstm.errors import ModelError

FORMAT_VERSION = 1
BEST_NAME = "best_model.pt"
LAST_NAME = "last.pt"


def periodic_name(epoch: int) -> str:
    """``checkpoint_epoch_N.pt``: the name the original documentation gives periodic checkpoints.

    Parameters
    ----------
    epoch : int
        The epoch the checkpoint was written after.

    Returns
    -------
    str
        The file name (no folder).
    """
    return f"checkpoint_epoch_{epoch}.pt"


def library_versions() -> dict[str, str]:
    """Versions that matter for reproducing a run (recorded in checkpoints and as MLflow params).

    Returns
    -------
    dict of str to str
        ``convlstm``, ``torch``, ``numpy`` and ``xarray`` versions.
    """
    import numpy
    import xarray

    import convlstm

    return {"convlstm": convlstm.__version__, "torch": str(torch.__version__), "numpy": numpy.__version__, "xarray": xarray.__version__}


def checkpoint_space(model: torch.nn.Module, num_epochs: int, checkpoint_frequency: int) -> int:
    """Disk space a training run's checkpoints need at most, to refuse a too-full disk before training.

    Each checkpoint holds the weights and AdamW's two moment estimates (3 × the parameters' bytes; the
    rest is small); a run keeps ``best_model.pt``, ``last.pt`` and one every ``checkpoint_frequency``
    epochs, and an atomic write needs room for one more copy while it replaces a file.

    Parameters
    ----------
    model : torch.nn.Module
        The model to train.
    num_epochs : int
        Epochs the run trains.
    checkpoint_frequency : int
        Epochs between periodic checkpoints.

    Returns
    -------
    int
        Bytes.
    """
    size = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    return size * (3 + num_epochs // checkpoint_frequency)


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write a checkpoint atomically: a crash mid-write leaves the previous file intact.

    ``torch.save`` writes through a Python file, so a full disk raises ``OSError(ENOSPC)``, which
    :func:`~convlstm.atomic.atomic_path` turns into one line (given a path, torch reports only
    ``unexpected pos``).

    Parameters
    ----------
    path : path-like
        Where to write.
    state : dict
        Plain values and tensors (loadable with ``weights_only=True``); format version and library
        versions are added.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save({"format_version": FORMAT_VERSION, "versions": library_versions(), **state}, handle)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``, refusing anything else with a clear message.

    Parameters
    ----------
    path : path-like
        The checkpoint file.
    map_location : str or torch.device
        Where tensors are loaded.

    Returns
    -------
    dict
        The checkpoint's contents.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint {path} does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or corrupt files all end here
        # torch explains in paragraphs (and suggests weights_only=False, which would run the file's code): one line
        detail = str(exc).split("\n", 1)[0].split(". ", 1)[0].strip()
        raise ModelError(f"{path} is not a readable convlstm checkpoint: the file is truncated, corrupt or not a torch "
                         f"checkpoint ({type(exc).__name__}{': ' + detail if detail else ''}).") from exc
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{path} is not a checkpoint written by this version of convlstm.")
    return state

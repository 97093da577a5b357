"""Where data came from: the input files with their sizes and digests, so a run or a prepared store
names exactly the bytes it was made from.

Digests are SHA-256 of the file contents (the first 16 hex digits: enough to tell files apart, short
enough for an MLflow param). A Zarr store is recorded by its path or URL only: it may be remote and
terabytes large, and only the cropped part of it is ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from convlstm.data.sources import Source, input_paths, is_zarr_source

_BLOCK = 1 << 22  # 4 MiB reads


def file_digest(path: str | os.PathLike[str]) -> str:
    """Short SHA-256 of a file's contents: identifies the exact data a run trained on.

    Parameters
    ----------
    path : path-like
        The file, read in 4 MiB blocks.

    Returns
    -------
    str
        The first 16 hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def describe_inputs(source: Source, progress: bool = True) -> list[dict[str, Any]]:
    """Every input of ``source`` with its size and digest (Zarr stores: path only), in reading order.

    Parameters
    ----------
    source : path-like, str or sequence of them
        What :func:`convlstm.data.sources.open_source` takes.
    progress : bool
        Show a progress bar over the bytes digested (inputs of many GB take a while).

    Returns
    -------
    list of dict
        ``{"path", "size_bytes", "sha256"}`` per input; ``size_bytes`` and ``sha256`` are None for a Zarr store.
    """
    paths = input_paths(source)
    files = [path for path in paths if not is_zarr_source(path)]
    total = sum(Path(path).stat().st_size for path in files)
    described = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="digesting inputs", disable=not progress or not files) as bar:
        for path in paths:
            if is_zarr_source(path):
                described.append({"path": path, "size_bytes": None, "sha256": None})
                continue
            size = Path(path).stat().st_size
            described.append({"path": str(Path(path).resolve()), "size_bytes": size, "sha256": file_digest(path)})
            bar.update(size)
    return described


def combined_digest(inputs: list[dict[str, Any]]) -> str:
    """One short digest for a set of inputs (their paths, sizes and digests): a multi-file run's ``data_digest``.

    Parameters
    ----------
    inputs : list of dict
        What :func:`describe_inputs` returned.

    Returns
    -------
    str
        16 hex digits; a single file's is its own digest, so one-file runs keep the digest they always had.
    """
    if len(inputs) == 1 and inputs[0]["sha256"]:
        return str(inputs[0]["sha256"])
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def source_digest(source: Source) -> str:
    """A short digest of what ``source`` names: a run's ``data_digest``.

    Parameters
    ----------
    source : path-like, str or sequence of them
        Raw input, or a prepared store.

    Returns
    -------
    str
        16 hex digits: a prepared store's root metadata (which holds its inputs' digests, its split and
        statistics), else the inputs' :func:`combined_digest`.
    """
    from convlstm.data.store import is_prepared_store

    if is_prepared_store(source):
        return file_digest(Path(os.fspath(source)) / "zarr.json")  # type: ignore[arg-type]
    return combined_digest(describe_inputs(source, progress=False))

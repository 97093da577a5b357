"""Raw reanalysis input → a prepared store: open lazily, bring to the model's step, crop, write.

What the ``prepare`` entry point runs (``convlstm.tracking.prepare`` adds the MLflow run around it).
Nothing is read whole: the input is opened with dask and the store written chunk by chunk
(:func:`convlstm.data.store.write_store`), so memory does not grow with the length of the input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convlstm.checkpoint import library_versions
from convlstm.config import RegionConfig
from convlstm.data.provenance import combined_digest, describe_inputs
from convlstm.data.schema import open_dataset
from convlstm.data.sources import Source
from convlstm.data.store import DEFAULT_TIME_CHUNK, check_new_store, write_store

#: Time steps per dask chunk while reading raw input: a day of hourly data; the crop is what gets read.
READ_CHUNK = 24


@dataclass(frozen=True)
class PreparedStore:
    """A store ``prepare`` wrote and what it was made from.

    Parameters
    ----------
    path : pathlib.Path
        The store.
    provenance : dict
        Its inputs (paths, sizes, digests), their combined digest and the library versions.
    n_times : int
        Time steps it holds (at the model's step).
    size_bytes : int
        Its size on disk.
    """

    path: Path
    provenance: dict[str, Any]
    n_times: int
    size_bytes: int

    @property
    def input_bytes(self) -> int:
        """Bytes of the input files read (Zarr inputs are not counted)."""
        return sum(item["size_bytes"] or 0 for item in self.provenance["inputs"])


def prepare_store(source: Source, output: str | os.PathLike[str], regions: RegionConfig, *, time_step: int = 12,
                  train_ratio: float = 0.7, val_ratio: float = 0.15, member: int | None = None,
                  time_chunk: int = DEFAULT_TIME_CHUNK) -> PreparedStore:
    """Open ``source`` lazily, aggregate it to ``time_step`` hours and write the regions to a store at ``output``.

    Parameters
    ----------
    source : path-like, str or sequence of them
        Any input :func:`~convlstm.data.schema.open_dataset` takes (files, glob, folder, list, Zarr).
    output : path-like
        The store to create; an existing path is refused before anything is read.
    regions : RegionConfig
        The store holds the smallest box around both regions.
    time_step : int
        The model's step in hours.
    train_ratio, val_ratio : float
        The split whose training part the normalizers are fitted on.
    member : int, optional
        The ensemble member, for input with several.
    time_chunk : int
        Time steps per Zarr chunk.

    Returns
    -------
    PreparedStore
        The store and its provenance.
    """
    output = Path(output)
    check_new_store(output)
    data = open_dataset(source, chunks={"time": READ_CHUNK}, member=member, time_step=time_step)
    inputs = describe_inputs(source)
    provenance = {"inputs": inputs, "digest": combined_digest(inputs), "versions": library_versions()}
    path = write_store(data, output, regions, train_ratio=train_ratio, val_ratio=val_ratio, provenance=provenance,
                       time_chunk=time_chunk)
    size = sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return PreparedStore(path, provenance, int(data.sizes["time"]), size)

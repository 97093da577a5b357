"""Prepared stores: the region crop written once to Zarr (v3), with its split, normalizers and missing-value
flags, so that training on data of any length reads windows on demand in bounded memory.

A store holds the smallest lat/lon box around both regions (either experiment can be cut from it),
chunked along time only. It is written into ``.<name>.partial`` beside the output and renamed into
place only once complete (``convlstm_complete`` is the last attribute written), so an interrupted
prepare never leaves something that looks like a store.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from convlstm.atomic import explained_write_errors
from convlstm.checks import require_positive_int
from convlstm.config import DEFAULT_TIME_CHUNK, RegionConfig
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.regions import crop_regions, crop_union
from convlstm.data.schema import LAYOUT_ATTR, LAYOUT_VERSION, SOURCE_ATTR, describe_source, open_dataset
from convlstm.data.split import create_train_val_test_split
from convlstm.data.stacking import missing_steps_lazily
from convlstm.errors import ConfigError, DataError, StorageError

logger = logging.getLogger(__name__)

#: Bumped whenever what a store holds changes; a store of another version is refused.
STORE_VERSION = 1
VERSION_ATTR = "convlstm_store_version"
COMPLETE_ATTR = "convlstm_complete"
#: Set on the dataset ``open_store`` returns: where store-backed windows read from.
STORE_ATTR = "convlstm_store"
_BLOCK_STEPS = 64  # time steps written per block (rounded to whole chunks)
_VARIANTS = {False: "baseline", True: "upstream"}
_MISSING = {False: "missing_downstream", True: "missing_joined"}
_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class StoreInfo:
    """What a prepared store says about itself (its root attributes and missing-value flags).

    Parameters
    ----------
    path : str
        The store.
    regions : RegionConfig
        The regions it was cropped for.
    train_ratio, val_ratio : float
        The split it was prepared with.
    splits : dict of str to list of str or None
        First and last time (ISO) of ``train``, ``val`` and ``test`` (None when empty).
    normalizers : dict of str to dict
        ``baseline`` and ``upstream`` statistics of the training split (``ConvLSTMNormalizer.to_dict``).
    missing : dict of str to numpy.ndarray
        Per time step of the store, whether the downstream (``missing_downstream``) or joined
        (``missing_joined``) crop holds a missing value.
    provenance : dict
        What the caller recorded (input files, sizes, digests, library version).
    time_step_hours : float or None
        The data's time step, when the input said.
    """

    path: str
    regions: RegionConfig
    train_ratio: float
    val_ratio: float
    splits: dict[str, list[str] | None]
    normalizers: dict[str, dict[str, Any]]
    missing: dict[str, np.ndarray]
    provenance: dict[str, Any]
    time_step_hours: float | None

    def open(self, *, dask: bool = True) -> xr.Dataset:
        """The store's data, lazily, in the library's layout (see :func:`open_store`), without reading its
        metadata again.

        Parameters
        ----------
        dask : bool
            dask arrays chunked as stored, or plain lazy arrays.

        Returns
        -------
        xarray.Dataset
            The six variables over the store's crop; nothing is read yet.
        """
        return _open_layout(self.path, dask=dask, time_step_hours=self.time_step_hours)

    def normalizer(self, include_upstream: bool) -> ConvLSTMNormalizer:
        """The training split's statistics for one experiment's input crop.

        Parameters
        ----------
        include_upstream : bool
            The upstream experiment (upstream ⊕ downstream crop) or the baseline (downstream crop).

        Returns
        -------
        ConvLSTMNormalizer
            A new, fitted normalizer.
        """
        return ConvLSTMNormalizer.from_dict(self.normalizers[_VARIANTS[include_upstream]])

    def missing_steps(self, include_upstream: bool) -> np.ndarray:
        """Which time steps of the store hold a missing value in that experiment's input crop.

        Parameters
        ----------
        include_upstream : bool
            The joined crop, or the downstream one.

        Returns
        -------
        numpy.ndarray
            bool ``[T]`` over the whole store.
        """
        return self.missing[_MISSING[include_upstream]]


def check_store_step(info: StoreInfo, time_step: int | None) -> None:
    """Refuse a store prepared at another time step than the model's (its windows would span other times).

    Parameters
    ----------
    info : StoreInfo
        The store.
    time_step : int, optional
        The model's step in hours; None accepts any.
    """
    if time_step is not None and info.time_step_hours is not None and float(info.time_step_hours) != float(time_step):
        raise ConfigError(f"{info.path} was prepared at a {info.time_step_hours:g}-h time step, but --time-step is "
                          f"{time_step} h. Use --time-step {info.time_step_hours:g}, or prepare the raw input again with "
                          f"--time-step {time_step}.", "time_step")


def check_new_store(output: Path) -> None:
    """Refuse to write a store where something already is: nothing the user has is replaced.

    Parameters
    ----------
    output : pathlib.Path
        Where the store would go.
    """
    if output.exists():
        raise StorageError(f"{output} already exists; choose another --output or delete it.", "output")


def partial_path(output: Path) -> Path:
    """Where a store is written before it is complete: ``.<name>.partial`` beside ``output``."""
    return output.with_name(f".{output.name}.partial")


def write_store(data: xr.Dataset, output: str | os.PathLike[str], regions: RegionConfig, *, train_ratio: float,
                val_ratio: float, provenance: dict[str, Any], time_chunk: int = DEFAULT_TIME_CHUNK) -> Path:
    """Write the crop around both regions of ``data`` to a Zarr store, with what training needs to read it
    without a pass over it: split bounds, both normalizers, missing-value flags.

    Lazy (dask) data is streamed chunk by chunk, and the statistics are computed out of core, so the
    memory used does not grow with the length of the data.

    Parameters
    ----------
    data : xarray.Dataset
        The library's layout (``open_dataset``), physical units; best opened lazily (``chunks``).
    output : path-like
        The store to create; an existing one is refused.
    regions : RegionConfig
        The regions; the store holds the smallest box around both.
    train_ratio, val_ratio : float
        The split (as ``create_train_val_test_split``); the normalizers are fitted on its training part.
    provenance : dict
        JSON-serialisable facts to keep with the store (input files, sizes, digests, versions).
    time_chunk : int
        Time steps per chunk.

    Returns
    -------
    pathlib.Path
        ``output``, complete.
    """
    require_positive_int("time_chunk", time_chunk)
    output = Path(output)
    check_new_store(output)
    partial = partial_path(output)
    if partial.exists():
        logger.warning("Removing %s, left by an interrupted prepare, and starting over.", partial)
        shutil.rmtree(partial)
    data = open_dataset(data)
    crop = _zarr_ready(crop_union(data, regions), time_chunk)
    create_train_val_test_split(crop, train_ratio=train_ratio, val_ratio=val_ratio)  # refuse bad ratios before writing
    try:
        with explained_write_errors(output, "output"):
            partial.parent.mkdir(parents=True, exist_ok=True)
            _stream(crop, partial, time_chunk)
            stored = _open_layout(partial, dask=True)
            attrs, flags = _summaries(stored, regions, train_ratio, val_ratio)
            # (appending variables rewrites the root attributes with these)
            xr.Dataset({name: ("time", values) for name, values in flags.items()}, attrs={VERSION_ATTR: STORE_VERSION}
                       ).to_zarr(partial, mode="a", zarr_format=3, consolidated=False)
            group = zarr.open_group(partial, mode="r+", zarr_format=3)
            group.attrs.update({**attrs, "source": describe_source(data), "provenance": provenance,
                                **({"time_step_hours": data.attrs["time_step_hours"]} if "time_step_hours" in data.attrs else {})})
            group.attrs[COMPLETE_ATTR] = True  # last: only now is it a store
            os.replace(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.info("Prepared %s: %d time steps of %s, %d × %d cells.", output, crop.sizes["time"], describe_source(data),
                crop.sizes["lat"], crop.sizes["lon"])
    return output


def _stream(crop: xr.Dataset, path: Path, time_chunk: int) -> None:
    """Write ``crop`` a block of whole chunks at a time, so that at most one block is held in memory (one
    ``to_zarr`` of the whole lazy crop let dask read ahead, and memory grew with the data's length)."""
    crop.to_zarr(path, mode="w-", zarr_format=3, consolidated=False, compute=False)  # metadata and coordinates
    block = time_chunk * max(1, _BLOCK_STEPS // time_chunk)
    fields = crop.drop_vars([name for name in crop.coords if name != "time"])
    for start in range(0, crop.sizes["time"], block):
        part = slice(start, min(start + block, crop.sizes["time"]))
        fields.isel(time=part).to_zarr(path, region={"time": part}, zarr_format=3, consolidated=False)


def _zarr_ready(crop: xr.Dataset, time_chunk: int) -> xr.Dataset:
    """The crop as it is stored: chunks along time only, float32, CF attributes, no encoding of the input file."""
    out = crop.chunk({"time": time_chunk, "level": -1, "lat": -1, "lon": -1})
    for variable in out.variables.values():
        variable.encoding = {}  # netCDF chunking and compression settings mean nothing to Zarr
    for variable in out.data_vars.values():
        # Uncompressed: zstd saved 10 % on the demo's float32 fields and cost half the read time of a window.
        variable.encoding = {"compressors": None}
    out.attrs = {VERSION_ATTR: STORE_VERSION}  # first: a partial store is recognised as one, and refused
    return out


def _summaries(stored: xr.Dataset, regions: RegionConfig, train_ratio: float,
               val_ratio: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split bounds, both normalizers (training split) and missing-value flags, read back from the store."""
    splits = dict(zip(_SPLITS, create_train_val_test_split(stored, train_ratio=train_ratio, val_ratio=val_ratio)))
    bounds = {name: [_iso(split["time"].values[0]), _iso(split["time"].values[-1])] if split.sizes["time"] else None
              for name, split in splits.items()}
    normalizers = {name: ConvLSTMNormalizer().fit(crop_regions(splits["train"], regions, upstream).data).to_dict()
                   for upstream, name in _VARIANTS.items()}
    flags = {name: missing_steps_lazily(crop_regions(stored, regions, upstream).data) for upstream, name in _MISSING.items()}
    attrs = {"splits": bounds, "train_ratio": train_ratio, "val_ratio": val_ratio, "regions": regions.to_dict(),
             "normalizers": normalizers}
    return attrs, flags


def _iso(value: np.datetime64) -> str:
    return str(np.datetime_as_string(value, unit="s"))


def is_prepared_store(source: object) -> bool:
    """Whether ``source`` (a path or URL) is a Zarr group carrying ``convlstm_store_version``.

    Parameters
    ----------
    source : object
        What the user passed as data: a path, a URL, or a dataset (never a store).

    Returns
    -------
    bool
        True for a prepared store, complete or not (``read_store_info`` refuses an incomplete one).
    """
    if not isinstance(source, (str, os.PathLike)):
        return False
    if "://" not in str(source) and not Path(source).is_dir():
        return False
    try:
        return VERSION_ATTR in zarr.open_group(str(source), mode="r").attrs
    except Exception:  # noqa: BLE001 - anything zarr cannot open as a group is no store
        return False


def read_store_info(path: str | os.PathLike[str]) -> StoreInfo:
    """Read a prepared store's metadata; refuse an incomplete store or one of another version.

    Parameters
    ----------
    path : path-like or str
        The store (a folder, or a URL fsspec reads).

    Returns
    -------
    StoreInfo
        Its split, normalizers, missing-value flags and provenance.
    """
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - any failure means it is no readable store
        raise DataError(f"{path} is not a prepared store ({type(exc).__name__}: {exc}); rerun prepare.") from exc
    attrs = dict(group.attrs)
    version = attrs.get(VERSION_ATTR)
    if version is None:
        raise DataError(f"{path} is a Zarr store but not one prepared by convlstm; rerun prepare.")
    if version != STORE_VERSION:
        age = "an older" if version < STORE_VERSION else "a newer"
        raise DataError(f"{path} was prepared by {age} version of convlstm (store version {version}, this version "
                        f"reads {STORE_VERSION}); rerun prepare.")
    if not attrs.get(COMPLETE_ATTR):
        raise DataError(f"{path} is an incomplete prepared store (its prepare was interrupted or is still running); "
                        "rerun prepare.")
    return StoreInfo(str(path), RegionConfig.from_dict(attrs["regions"]), float(attrs["train_ratio"]),
                     float(attrs["val_ratio"]), attrs["splits"], attrs["normalizers"],
                     {name: np.asarray(group[name][:], dtype=bool) for name in _MISSING.values()},
                     attrs.get("provenance", {}), attrs.get("time_step_hours"))


def open_store(path: str | os.PathLike[str], *, dask: bool = True) -> xr.Dataset:
    """Open a prepared store lazily, in the library's layout (``open_dataset`` passes it through).

    Parameters
    ----------
    path : path-like or str
        The store; an incomplete one or one of another version is refused.
    dask : bool
        dask arrays chunked as stored (for reductions over the whole store), or plain lazy arrays
        (for reading a few time steps at a time, without a task graph).

    Returns
    -------
    xarray.Dataset
        The six variables over the store's crop; nothing is read yet.
    """
    return read_store_info(path).open(dask=dask)


def _open_layout(path: str | os.PathLike[str], *, dask: bool, time_step_hours: float | None = None) -> xr.Dataset:
    ds = xr.open_zarr(str(path), consolidated=False, zarr_format=3, chunks={} if dask else None)
    ds = ds.drop_vars([name for name in _MISSING.values() if name in ds.variables])
    ds.attrs = {SOURCE_ATTR: str(path), LAYOUT_ATTR: LAYOUT_VERSION, STORE_ATTR: str(path),
                **({"time_step_hours": time_step_hours} if time_step_hours is not None else {})}
    return ds

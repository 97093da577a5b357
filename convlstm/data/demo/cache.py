"""The demo atmosphere on disk: written as CF netCDF-4, and cached under a name that hashes its settings."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from convlstm.config import DemoAtmosphere
from convlstm.data.demo.generator import GENERATOR_VERSION, generate_demo_dataset, resolve_atmosphere
from convlstm.netcdf import write_netcdf

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "CONVLSTM_CACHE_DIR"


def write_demo_dataset(
    path: str | os.PathLike[str], atmosphere: DemoAtmosphere | None = None, *, compress: bool = True, **settings: Any
) -> Path:
    """Generate the demo atmosphere and write it to a file, for runs and tools that read files.

    Parameters
    ----------
    path : path-like
        The netCDF file; written atomically (:func:`convlstm.netcdf.write_netcdf`), its folder created.
    atmosphere : DemoAtmosphere, optional
        What to generate (default ``DemoAtmosphere()``).
    compress : bool
        zlib level 1: about a third smaller, a few seconds slower to write at 1°.
    **settings
        Instead of ``atmosphere``: its fields, e.g. ``years=0.2, resolution=5.0``.

    Returns
    -------
    Path
        ``path``.
    """
    path = write_netcdf(generate_demo_dataset(atmosphere, **settings), path, compress=compress)
    logger.info("Wrote the synthetic demo atmosphere to %s (%.1f MB).", path, path.stat().st_size / 1e6)
    return path


def demo_data_path(
    cache_dir: str | os.PathLike[str] | None = None, atmosphere: DemoAtmosphere | None = None, **settings: Any
) -> Path:
    """The demo file for these settings, generated on first use and reused afterwards, so runs start fast.

    Parameters
    ----------
    cache_dir : path-like, optional
        Where cached files live; default ``$CONVLSTM_CACHE_DIR``, else ``~/.cache/convlstm``.
    atmosphere : DemoAtmosphere, optional
        What to generate (default ``DemoAtmosphere()``).
    **settings
        Instead of ``atmosphere``: its fields, e.g. ``years=0.2``.

    Returns
    -------
    Path
        ``<cache_dir>/demo-<12 hex>.nc``: a hash of the settings and ``GENERATOR_VERSION``, so other
        settings or a changed generator never reuse a file.
    """
    atmosphere = resolve_atmosphere(atmosphere, settings)
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "convlstm"
    text = json.dumps({"version": GENERATOR_VERSION, **atmosphere.to_dict()}, sort_keys=True)
    path = Path(cache_dir).expanduser() / f"demo-{hashlib.sha256(text.encode()).hexdigest()[:12]}.nc"
    if path.is_file():
        logger.info("Reusing the cached synthetic demo atmosphere %s.", path)
        return path
    logger.info("Generating the synthetic demo atmosphere %s (once; later runs reuse it).", path)
    began = time.perf_counter()
    write_demo_dataset(path, atmosphere)
    logger.info("Generated %s in %.1f s.", path, time.perf_counter() - began)
    return path

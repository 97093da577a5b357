"""One check that fields line up (same times, same grid) before they are compared, scored or drawn.

xarray arithmetic silently aligns on the intersection of coordinates, so a one-step time shift or a
rounding difference in latitude would quietly score the wrong pairs, or none. Everything that sets
two precipitation fields against each other (scores, the comparison, inference's check against the
observations, the figures) calls this instead.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from convlstm.errors import DataError

DIMS: tuple[str, str, str] = ("time", "lat", "lon")
#: Degrees: grids written by different tools differ in the last digits of their coordinates.
COORD_TOL = 1e-4


def same_coordinate(dim: str, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two coordinate arrays agree: times exactly, latitudes and longitudes within ``COORD_TOL``.

    Parameters
    ----------
    dim : str
        ``time``, ``lat`` or ``lon``.
    a, b : numpy.ndarray
        The coordinate values.

    Returns
    -------
    bool
        True when they have the same length and values.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if dim == "time" or not (np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number)):
        return bool(np.array_equal(a, b))
    return bool(np.allclose(a, b, rtol=0.0, atol=COORD_TOL))


def describe_coordinate(values: np.ndarray) -> str:
    """``'213 values 2001-08-01T12 .. 2001-12-31T12'``: a coordinate in a few words, for messages.

    Parameters
    ----------
    values : numpy.ndarray
        Times (shown to the hour, first and last), numbers (shown as min and max) or names.

    Returns
    -------
    str
        The count and the range, or ``'no values'``.
    """
    values = np.asarray(values)
    if values.size == 0:
        return "no values"
    if np.issubdtype(values.dtype, np.datetime64):
        first, last = (np.datetime_as_string(v, unit="h") for v in (values[0], values[-1]))
    elif np.issubdtype(values.dtype, np.number):
        first, last = f"{values.min():g}", f"{values.max():g}"
    else:  # names (a forecast coordinate): as they stand
        first, last = values[0], values[-1]
    return f"{values.size} values {first} .. {last}"


def check_aligned(fields: dict[str, xr.DataArray], dims: tuple[str, ...] = DIMS) -> None:
    """Refuse fields that do not share dims, times and grid with the first one, naming what differs.

    Parameters
    ----------
    fields : dict of str to xarray.DataArray
        Named fields, e.g. ``{"observed": truth, "upstream": forecast}``; each must have exactly the
        dims ``dims`` (in that order) with coordinates.
    dims : tuple of str
        The expected dims, ``(time, lat, lon)`` by default.

    Raises
    ------
    DataError
        Naming the two fields and the dimension where they differ.
    """
    for name, field in fields.items():
        if not isinstance(field, xr.DataArray) or tuple(map(str, field.dims)) != dims:
            got = tuple(map(str, field.dims)) if isinstance(field, xr.DataArray) else type(field).__name__
            raise DataError(f"The {name} field must be an xarray.DataArray on dims {dims}, got {got}; "
                            f"use .transpose{dims}.")
        missing = [dim for dim in dims if dim not in field.coords]
        if missing:
            raise DataError(f"The {name} field has no {', '.join(missing)} coordinate; assign one before comparing.")
    (first_name, first), *rest = fields.items()
    for name, other in rest:
        for dim in dims:
            a, b = first[dim].values, other[dim].values
            if not same_coordinate(dim, a, b):
                only = [(n, np.setdiff1d(x, y)) for n, x, y in ((first_name, a, b), (name, b, a))]
                detail = "".join(f"; {len(v)} only in {n} ({_examples(v)})" for n, v in only if len(v))
                raise DataError(
                    f"{first_name} and {name} differ in {dim}: {describe_coordinate(a)} vs {describe_coordinate(b)}{detail}. "
                    "Select the same times and grid in both (forecast the same data, split and window size)."
                )


def _examples(values: np.ndarray, k: int = 3) -> str:
    """The first ``k`` values, e.g. ``'2001-08-03T00, 2001-08-04T12 ...'``."""
    if np.issubdtype(values.dtype, np.datetime64):
        shown = [str(np.datetime_as_string(v, unit="h")) for v in values[:k]]
    else:
        shown = [f"{v:g}" if np.issubdtype(values.dtype, np.number) else str(v) for v in values[:k]]
    return ", ".join(shown) + (" ..." if len(values) > k else "")

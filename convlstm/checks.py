"""The value checks more than one layer needs (settings, model, dataset, served requests), written once.

Each raises :class:`~convlstm.errors.ConfigError` (or ``DataError`` for data) naming the value.
"""

from __future__ import annotations

import numbers

import numpy as np

from convlstm.errors import ConfigError, DataError
from convlstm.settings import flag_of


def require_positive_int(name: str, value: object) -> int:
    """Refuse anything but an integer >= 1 (a bool is not an integer here).

    Parameters
    ----------
    name : str
        The setting or argument, for the message.
    value : object
        The value to check.

    Returns
    -------
    int
        ``value`` as a Python int.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}.", name)
    return int(value)


def require_odd_kernel(name: str, value: object) -> int:
    """An odd kernel size keeps 'same' padding symmetric, so the grid keeps its size.

    Parameters
    ----------
    name, value : str, object
        The setting's name (for the message) and the kernel size.

    Returns
    -------
    int
        The kernel size.
    """
    size = require_positive_int(name, value)
    if size % 2 == 0:
        raise ConfigError(f"{name} ({flag_of(name)}) must be odd so the grid keeps its size, got {size}; use "
                          f"{size - 1} or {size + 1}.", name)
    return size


def check_split_ratios(train_ratio: float, val_ratio: float, need_test: bool = True) -> None:
    """Each ratio in (0, 1) and, when a test split is cut by ratio, their sum below 1.

    Parameters
    ----------
    train_ratio, val_ratio : float
        Fractions of the time steps for training and validation.
    need_test : bool
        Whether the rest must leave a test split (False when the test split starts at a date).
    """
    total_ok = train_ratio + val_ratio < 1.0 if need_test else True
    if not (0.0 < train_ratio < 1.0 and 0.0 < val_ratio < 1.0 and total_ok):
        raise ConfigError(
            f"train_ratio ({train_ratio}) and val_ratio ({val_ratio}) must each lie in (0, 1)"
            + (" and sum to less than 1, leaving the rest for the test split" if need_test else "")
            + ", e.g. 0.7 and 0.15.", "train_ratio")


def require_finite(values: np.ndarray, subject: str = "The request") -> None:
    """Refuse NaN or infinite values, saying how many: the model's input must be finite numbers.

    Parameters
    ----------
    values : numpy.ndarray
        The values to check.
    subject : str
        What holds them, for the message.
    """
    if not np.isfinite(values).all():
        raise DataError(f"{subject} holds {int((~np.isfinite(values)).sum())} NaN or infinite values; send finite numbers.")

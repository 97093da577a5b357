"""The one exception type users see for bad input, so callers can catch it and CLIs print it cleanly,
and the finiteness check every entry to the model shares."""

import numpy as np


class DataError(ValueError):
    """Input data, a region or an option is unusable; the message names it and says how to fix it."""


def require_finite(values: np.ndarray, subject: str = "The request") -> None:
    """Refuse NaN or infinite values with how many there are: the model's input must be finite numbers."""
    if not np.isfinite(values).all():
        raise DataError(f"{subject} holds {int((~np.isfinite(values)).sum())} NaN or infinite values; send finite numbers.")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""

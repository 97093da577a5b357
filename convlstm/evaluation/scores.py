"""Scores of precipitation forecasts (placeholder: the accumulators are being written)."""

from __future__ import annotations

import numpy as np


def rmse(forecast: np.ndarray, observed: np.ndarray) -> float:
    """Root-mean-square error over every value (mm)."""
    error = np.asarray(forecast, dtype=np.float64) - np.asarray(observed, dtype=np.float64)
    return float(np.sqrt(np.mean(error ** 2)))

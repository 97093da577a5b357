"""The weighted loss: heavy rain is rare but matters most, so errors where it fell weigh more."""

from __future__ import annotations

import torch
from torch import nn


class WeightedPrecipitationLoss(nn.Module):
    """Mean squared error in normalized space, with cells whose observed rain reaches the
    threshold weighted ``high_weight`` times.

    Parameters
    ----------
    threshold : float
        Heavy-rain threshold, already converted to normalized space (``normalize_precipitation``).
    high_weight : float
        Weight of the cells at or above it; the others weigh 1.
    """

    def __init__(self, threshold: float, high_weight: float) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.high_weight = float(high_weight)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weighted mean squared error of a batch.

        Parameters
        ----------
        prediction, target : torch.Tensor
            Normalized precipitation, same shape (``[B, H_down, W_down]``).

        Returns
        -------
        torch.Tensor
            A scalar.
        """
        weights = torch.where(target >= self.threshold, self.high_weight, 1.0)
        return (weights * (prediction - target) ** 2).mean()

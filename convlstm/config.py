"""Model and training settings as data: one dict becomes MLflow params, rides in every checkpoint and
rebuilds the model in ``load_model`` without the original command line."""

from __future__ import annotations

from dataclasses import dataclass, field

from convlstm.data.split import DEFAULT_TRAIN_RATIO, DEFAULT_VAL_RATIO
from convlstm.dictconfig import DictRoundTrip
from convlstm.errors import DataError


@dataclass
class ConvLSTMConfig(DictRoundTrip):
    """Everything that defines a model and how it was trained (regions live in ``RegionConfig``)."""

    input_channels: int = 56
    hidden_channels: list[int] = field(default_factory=lambda: [32, 64])
    output_channels: int = 1
    kernel_size: int = 3
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 4
    num_epochs: int = 100
    window_size: int = 6
    target_offset: int = 1
    train_ratio: float = DEFAULT_TRAIN_RATIO
    val_ratio: float = DEFAULT_VAL_RATIO
    high_precip_threshold: float = 10.0
    high_precip_weight: float = 3.0
    use_amp: bool = True
    gradient_accumulation_steps: int = 1
    gradient_clip_norm: float = 1.0
    early_stopping_patience: int = 10
    checkpoint_frequency: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        self.hidden_channels = [int(c) for c in self.hidden_channels]
        positive_ints = ("input_channels", "output_channels", "kernel_size", "batch_size", "num_epochs",
                         "window_size", "target_offset", "gradient_accumulation_steps", "checkpoint_frequency")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"{name} must be a positive integer, got {value!r}.")
        if not self.hidden_channels or min(self.hidden_channels) < 1:
            raise DataError(f"hidden_channels must list one or more positive integers, got {self.hidden_channels!r}.")
        if self.kernel_size % 2 == 0:
            raise DataError(f"kernel_size must be odd so the grid size is kept, got {self.kernel_size}.")
        for name in ("learning_rate", "high_precip_weight", "gradient_clip_norm"):
            if not getattr(self, name) > 0:
                raise DataError(f"{name} must be positive, got {getattr(self, name)!r}.")
        if self.weight_decay < 0 or self.high_precip_threshold < 0 or self.early_stopping_patience < 0:
            raise DataError("weight_decay, high_precip_threshold and early_stopping_patience must not be negative.")

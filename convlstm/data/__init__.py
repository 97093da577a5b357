"""Data pipeline: open → split → normalize → crop regions → stack → windows."""

from convlstm.data.dataset import ConvLSTMDataset, WindowBatch, window_starts
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.data.regions import RegionConfig, RegionCrop, crop_regions
from convlstm.data.schema import LEVEL_VARIABLES, PRECIPITATION, VARIABLES, open_dataset
from convlstm.data.split import create_train_val_test_split
from convlstm.data.stacking import channel_names, n_channels, stack_channels
from convlstm.errors import DataError

__all__ = [
    "ConvLSTMDataset",
    "ConvLSTMNormalizer",
    "DataError",
    "LEVEL_VARIABLES",
    "PRECIPITATION",
    "RegionConfig",
    "RegionCrop",
    "VARIABLES",
    "WindowBatch",
    "channel_names",
    "create_train_val_test_split",
    "crop_regions",
    "n_channels",
    "open_dataset",
    "stack_channels",
    "window_starts",
]

"""convlstm: ConvLSTM U-Net precipitation forecasting, and how much upstream weather helps it."""

__version__ = "0.1.0"

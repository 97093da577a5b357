"""Run a model over windows and keep only the downstream columns: the one forward path shared by
training, evaluation, inference and the pyfunc model."""

from __future__ import annotations

import torch

from convlstm.data.dataset import ConvLSTMDataset, WindowBatch


def forward_downstream(
    model: torch.nn.Module, inputs: torch.Tensor | WindowBatch, downstream_columns: slice,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Model output cropped to the downstream columns, in float32: ``[B, H_down, W_down]`` (normalized).

    ``inputs`` is a batch of windows ``[B, T, C, H, W]``, or consecutive windows as a ``WindowBatch``.
    """
    with torch.autocast(inputs.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        output = model.forward_windows(*inputs) if isinstance(inputs, WindowBatch) else model(inputs)
    return output[:, 0, :, downstream_columns].float()


@torch.no_grad()
def predict_windows(
    model: torch.nn.Module,
    dataset: ConvLSTMDataset,
    downstream_columns: slice,
    device: torch.device,
    batch_size: int = 8,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Normalized predictions for every window of ``dataset``, in order, on the CPU: ``[N, H_down, W_down]``."""
    model.eval()
    outputs = [
        forward_downstream(model, batch.to(device), downstream_columns, amp_dtype).cpu()
        for batch, _ in dataset.window_batches(batch_size)
    ]
    return torch.cat(outputs)

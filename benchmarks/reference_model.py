"""A straightforward ConvLSTM U-Net, written the way most public implementations write it.

This is the benchmark's yardstick for :class:`convlstm.model.ConvLSTMUNet`: the SAME architecture
(same levels, 2×2 max-pooling with ``ceil_mode=True``, nearest upsampling to the skip level's exact
size, decoder ConvLSTM over ``[up, skip]``, 1×1 head + ReLU on the last timestep, gates stacked
i, f, o, g), but every cell runs one fused

    Conv2d(input_dim + hidden_dim, 4 * hidden_dim, k, padding=k // 2, bias=True)

over ``torch.cat([x_t, h], dim=1)`` at every timestep, instead of the library's split into one
batched input convolution over all timesteps plus a per-timestep hidden convolution.

``load_from_fast(reference, fast)`` copies a ``ConvLSTMUNet``'s weights into a reference model, so
both compute the same function (checked by ``tests/test_reference_numerics.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ReferenceConvLSTMCell", "ReferenceConvLSTMUNet", "load_from_fast"]


class ReferenceConvLSTMCell(nn.Module):
    """Textbook ConvLSTM cell: one convolution over ``cat([x_t, h_{t-1}])`` per timestep."""

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.conv = nn.Conv2d(
            input_dim + hidden_dim, 4 * hidden_dim, kernel_size, padding=kernel_size // 2, bias=True
        )

    def forward(self, x_t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        h_cur, c_cur = state
        gates = self.conv(torch.cat([x_t, h_cur], dim=1))
        i, f, o, g = torch.split(gates, self.hidden_dim, dim=1)
        c_next = torch.sigmoid(f) * c_cur + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return h_next, c_next

    def forward_sequence(self, x_seq: Tensor) -> Tensor:
        """``[B, T, C, H, W]`` -> all hidden states ``[B, T, hidden_dim, H, W]`` (zero initial state)."""
        b, t, _, height, width = x_seq.shape
        zeros = torch.zeros(b, self.hidden_dim, height, width, device=x_seq.device, dtype=x_seq.dtype)
        state = (zeros, zeros)
        outputs = []
        for step in range(t):
            state = self(x_seq[:, step], state)
            outputs.append(state[0])
        return torch.stack(outputs, dim=1)


def _frames(fn, seq: Tensor) -> Tensor:
    """Apply a 4-D spatial op to all frames of ``[B, T, C, H, W]`` at once.

    Pooling and upsampling are batched over time exactly as in the library, so the benchmark's
    fast/reference ratio measures only the difference in how the recurrent cells are written.
    """
    b, t = seq.shape[:2]
    out = fn(seq.reshape(b * t, *seq.shape[2:]))
    return out.reshape(b, t, *out.shape[1:])


class ReferenceConvLSTMUNet(nn.Module):
    """Per-timestep ConvLSTM U-Net with the same architecture as ``ConvLSTMUNet``."""

    def __init__(
        self,
        input_channels: int,
        hidden_channels: Sequence[int] = (32, 64),
        output_channels: int = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        hidden = list(hidden_channels)
        self.hidden_channels = hidden
        self.encoders = nn.ModuleList(
            [ReferenceConvLSTMCell(input_channels, hidden[0], kernel_size)]
            + [ReferenceConvLSTMCell(hidden[k - 1], hidden[k], kernel_size) for k in range(1, len(hidden))]
        )
        self.decoders = nn.ModuleList(
            [ReferenceConvLSTMCell(hidden[k + 1] + hidden[k], hidden[k], kernel_size) for k in range(len(hidden) - 1)]
        )
        self.head = nn.Conv2d(hidden[0], output_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        skips: list[Tensor] = []
        seq = x
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                seq = _frames(lambda frames: F.max_pool2d(frames, kernel_size=2, ceil_mode=True), seq)
            seq = encoder.forward_sequence(seq)
            skips.append(seq)

        for level in range(len(self.decoders) - 1, -1, -1):
            skip = skips[level]
            size = skip.shape[-2:]
            up = _frames(lambda frames, size=size: F.interpolate(frames, size=size, mode="nearest"), seq)
            seq = self.decoders[level].forward_sequence(torch.cat([up, skip], dim=2))

        return F.relu(self.head(seq[:, -1]))


def _fuse_cell(reference: ReferenceConvLSTMCell, fast: nn.Module) -> None:
    weight = torch.cat([fast.input_conv.weight, fast.hidden_conv.weight], dim=1)
    if reference.conv.weight.shape != weight.shape:
        raise ValueError(
            f"cell shapes differ: reference {tuple(reference.conv.weight.shape)}, fast {tuple(weight.shape)}"
        )
    reference.conv.weight.copy_(weight)
    reference.conv.bias.copy_(fast.input_conv.bias)


@torch.no_grad()
def load_from_fast(reference: ReferenceConvLSTMUNet, fast: nn.Module) -> ReferenceConvLSTMUNet:
    """Copy a ``ConvLSTMUNet``'s weights into ``reference`` (same architecture); returns ``reference``.

    Fused weight = ``cat([input_conv.weight, hidden_conv.weight], dim=1)`` (input channels first,
    matching ``cat([x_t, h])``); fused bias = ``input_conv.bias`` (the hidden conv has none).
    """
    if len(reference.encoders) != len(fast.encoders) or len(reference.decoders) != len(fast.decoders):
        raise ValueError("reference and fast models have a different number of levels")
    for ref_cell, fast_cell in zip(reference.encoders, fast.encoders, strict=True):
        _fuse_cell(ref_cell, fast_cell)
    for ref_cell, fast_cell in zip(reference.decoders, fast.decoders, strict=True):
        _fuse_cell(ref_cell, fast_cell)
    reference.head.weight.copy_(fast.head.weight)
    reference.head.bias.copy_(fast.head.bias)
    return reference

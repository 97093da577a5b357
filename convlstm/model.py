"""ConvLSTM U-Net for precipitation nowcasting.

The model reads a sequence of gridded fields ``[B, T, C, H, W]`` and predicts a
single non-negative field ``[B, output_channels, H, W]`` (e.g. the next
precipitation map).

Every recurrent layer splits its work into two parts so that as little as
possible runs sequentially over time:

* the input-to-state convolution is applied once to all timesteps at once
  (a single batched ``Conv2d`` over ``[B*T, C, H, W]``);
* only the state-to-state convolution and the gate arithmetic run in a
  Python loop over ``T``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvLSTMCell", "ConvLSTMUNet"]

State = tuple[Tensor, Tensor]

HEAD_BIAS_INIT = 0.5


def _require_positive_int(name: str, value: int) -> None:
    """Reject non-int (incl. bool) or non-positive values with a fixable message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}; pass an integer >= 1.")


def _require_odd_kernel(kernel_size: int) -> None:
    """Odd kernels keep 'same' padding symmetric, so H and W are preserved exactly."""
    _require_positive_int("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd so padding keeps the grid size, got {kernel_size}; "
            f"use e.g. {kernel_size - 1} or {kernel_size + 1}."
        )


class ConvLSTMCell(nn.Module):
    """A convolutional LSTM cell (Shi et al., 2015) without peephole connections.

    Gates are stacked along the channel axis in the order input, forget,
    output, candidate (i, f, o, g).
    """

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        _require_positive_int("input_dim", input_dim)
        _require_positive_int("hidden_dim", hidden_dim)
        _require_odd_kernel(kernel_size)
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.kernel_size = kernel_size
        padding = kernel_size // 2
        self.input_conv = nn.Conv2d(input_dim, 4 * hidden_dim, kernel_size, padding=padding, bias=True)
        # The input convolution already carries the bias; a second one would be redundant.
        self.hidden_conv = nn.Conv2d(hidden_dim, 4 * hidden_dim, kernel_size, padding=padding, bias=False)
        # Forget-gate bias of 1.0 keeps the cell state flowing early in training,
        # which avoids vanishing gradients through time (Jozefowicz et al., 2015).
        with torch.no_grad():
            self.input_conv.bias[hidden_dim : 2 * hidden_dim].fill_(1.0)

    def init_hidden(self, batch_size: int, height: int, width: int, device: torch.device | str | None = None) -> State:
        """Return zero ``(h, c)`` of shape ``[B, hidden_dim, H, W]`` in the parameters' dtype."""
        dtype = self.input_conv.weight.dtype
        shape = (batch_size, self.hidden_dim, height, width)
        return (
            torch.zeros(shape, device=device, dtype=dtype),
            torch.zeros(shape, device=device, dtype=dtype),
        )

    def project_inputs(self, x_seq: Tensor) -> Tensor:
        """Apply the input-to-state convolution to all timesteps in one batched call.

        ``[B, T, C, H, W]`` -> ``[B, T, 4*hidden_dim, H, W]``.
        """
        b, t, c, h, w = x_seq.shape
        projected = self.input_conv(x_seq.reshape(b * t, c, h, w))
        return projected.reshape(b, t, 4 * self.hidden_dim, h, w)

    def step(self, projected_t: Tensor, state: State) -> State:
        """Advance one timestep given an already-projected input ``[B, 4*hidden_dim, H, W]``."""
        h_cur, c_cur = state
        gates = projected_t + self.hidden_conv(h_cur)
        i, f, o, g = torch.chunk(gates, 4, dim=1)
        c_next = torch.sigmoid(f) * c_cur + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return h_next, c_next

    def forward(self, input_tensor: Tensor, cur_state: State) -> State:
        """Advance one timestep from a raw input ``[B, input_dim, H, W]``."""
        return self.step(self.input_conv(input_tensor), cur_state)

    def forward_sequence(self, x_seq: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Run the cell over ``[B, T, C, H, W]``; return all hidden states and the last state.

        Outputs have shape ``[B, T, hidden_dim, H, W]``. A missing ``state`` starts from zeros.
        """
        b, t, _, h, w = x_seq.shape
        projected = self.project_inputs(x_seq)
        if state is None:
            # Zeros in the parameters' dtype: under autocast the cell state then
            # stays in full precision while the convolutions run in low precision.
            state = self.init_hidden(b, h, w, device=x_seq.device)
        outputs = []
        for step_idx in range(t):
            state = self.step(projected[:, step_idx], state)
            outputs.append(state[0])
        return torch.stack(outputs, dim=1), state


def _map_frames(fn: Callable[[Tensor], Tensor], seq: Tensor) -> Tensor:
    """Apply a 4-D spatial op to every frame of ``[B, T, C, H, W]`` in one call."""
    b, t = seq.shape[:2]
    out = fn(seq.reshape(b * t, *seq.shape[2:]))
    return out.reshape(b, t, *out.shape[1:])


class ConvLSTMUNet(nn.Module):
    """U-Net whose encoder and decoder levels are ConvLSTM layers.

    Each encoder level halves the grid (ceil, so odd sizes work); each decoder
    level upsamples to the matching skip level's exact size and fuses it with
    the skip sequence. The last timestep of the top decoder level is mapped to
    ``output_channels`` by a 1x1 convolution followed by ReLU, because
    precipitation is non-negative.
    """

    def __init__(
        self,
        input_channels: int,
        hidden_channels: Sequence[int] = (32, 64),
        output_channels: int = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        _require_positive_int("input_channels", input_channels)
        _require_positive_int("output_channels", output_channels)
        _require_odd_kernel(kernel_size)
        if isinstance(hidden_channels, (int, str, bytes)):
            raise ValueError(
                f"hidden_channels must be a sequence of ints (one per level), got {hidden_channels!r}; "
                "e.g. pass (32, 64)."
            )
        hidden = list(hidden_channels)
        if len(hidden) == 0:
            raise ValueError("hidden_channels must list at least one level, got an empty sequence; e.g. pass (32, 64).")
        for idx, ch in enumerate(hidden):
            _require_positive_int(f"hidden_channels[{idx}]", ch)

        self.input_channels = input_channels
        self.hidden_channels = hidden
        self.output_channels = output_channels
        self.kernel_size = kernel_size

        self.encoders = nn.ModuleList(
            [ConvLSTMCell(input_channels, hidden[0], kernel_size)]
            + [ConvLSTMCell(hidden[k - 1], hidden[k], kernel_size) for k in range(1, len(hidden))]
        )
        # decoders[k] produces level k from level k+1 (upsampled) concatenated with skip k.
        self.decoders = nn.ModuleList(
            [ConvLSTMCell(hidden[k + 1] + hidden[k], hidden[k], kernel_size) for k in range(len(hidden) - 1)]
        )
        self.head = nn.Conv2d(hidden[0], output_channels, kernel_size=1)
        # A ReLU whose input starts negative everywhere passes no gradient and never recovers (a
        # "dead" head: seen with 3 levels on the demo). A positive bias makes every cell start on
        # the active side; cells the model learns to call dry then move below zero on their own.
        with torch.no_grad():
            self.head.bias.fill_(HEAD_BIAS_INIT)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[B, T, input_channels, H, W]`` to a non-negative ``[B, output_channels, H, W]``."""
        if x.dim() != 5 or x.shape[2] != self.input_channels or x.shape[1] < 1:
            raise ValueError(
                f"expected input of shape [B, T, {self.input_channels}, H, W] "
                f"(batch, time >= 1, channels, height, width), got {list(x.shape)}"
            )

        skips: list[Tensor] = []
        seq = x
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                seq = _map_frames(partial(F.max_pool2d, kernel_size=2, ceil_mode=True), seq)
            seq, _ = encoder.forward_sequence(seq)
            skips.append(seq)

        for level in range(len(self.decoders) - 1, -1, -1):
            skip = skips[level]
            up = _map_frames(partial(F.interpolate, size=skip.shape[-2:], mode="nearest"), seq)
            seq, _ = self.decoders[level].forward_sequence(torch.cat([up, skip], dim=2))

        return F.relu(self.head(seq[:, -1]))

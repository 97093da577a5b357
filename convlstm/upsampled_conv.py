"""The decoder's input convolution, ``conv3x3(cat([upsample(coarse), skip]))``, without upsampling.

Nearest upsampling by two repeats each coarse value over a 2 x 2 block, so at each of a block's four positions
(its phases) a 3 x 3 convolution of the upsampled map reads a 2 x 2 neighbourhood of the coarse map, with some of
its taps summed. All four phases are one 2 x 2 convolution of the coarse map, with four kernels per output
channel: 4 x 4 taps at a quarter of the pixels instead of 9 at all of them, 4/9 of the FLOPs, and no upsampled
map or concatenation in memory. The phases are added into the skip's convolution in one strided add. With the
decoder's input two thirds upsampled, this took its projection of one window's six 20 x 20 frames from 2.28 to
1.88 ms under imitated AVX2, and every training step and batched forecast faster on AVX2 and AVX-512 alike
(benchmarks/README.md: *The decoder's input by phases*).

Exact (to float rounding) where the skip's grid is twice the coarse one. An odd grid's last row or column would
read the upsampled map where the convolution pads with zeros, so odd grids, and kernels other than 3 x 3, take
the plain way: upsample, concatenate, convolve.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from convlstm.kernels import conv

__all__ = ["conv_of_upsampled", "split_weights"]

CL = torch.channels_last

# _TAPS[a, u, r]: which of a 3 x 3 kernel's rows r fall on coarse row u (0: the one above, 1: its own) at fine
# row phase a (0: top of the block, 1: bottom), with the 2 x 2 convolution padded by one on each side; columns
# alike. _PHASE_TAPS[(a, b, u, v), (r, s)]: both at once, so the phases' weights are one small matrix product.
_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
_PHASE_TAPS = torch.einsum("aur,bvs->abuvrs", _TAPS, _TAPS).reshape(16, 9)


def conv_of_upsampled(coarse: Tensor, skip: Tensor, weight: Tensor, bias: Tensor | None,
                      padding: tuple[int, ...], split: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """``conv(cat([interpolate(coarse, skip's size, nearest), skip]), weight, bias)`` of ``[N, C, H, W]`` frames.

    Parameters
    ----------
    coarse, skip : torch.Tensor
        ``[N, C_up, h, w]`` and ``[N, C_skip, H, W]``, channels-last, with ``h = ceil(H / 2)``, ``w = ceil(W / 2)``.
    weight, bias : torch.Tensor
        The convolution's, over ``C_up + C_skip`` input channels (the upsampled ones first).
    padding : tuple of int
        The convolution's ('same').
    split : tuple of torch.Tensor, optional
        ``split_weights(weight, C_up)``, made beforehand (a frozen model's, ``ConvLSTMCell._prescale``); else made
        here, from ``weight`` as it is now.

    Returns
    -------
    torch.Tensor
        ``[N, C_out, H, W]``, channels-last.
    """
    if not _by_phases(coarse, skip, weight, padding):
        up = F.interpolate(coarse, size=skip.shape[-2:], mode="nearest")
        return conv(torch.cat([up, skip], dim=1), weight, bias, padding)
    phase_weight, skip_weight = split if split is not None else split_weights(weight, coarse.shape[1])
    out = conv(skip, skip_weight, bias, padding).contiguous(memory_format=CL)
    phases = conv(coarse, phase_weight, None, (1, 1)).contiguous(memory_format=CL)
    if torch.is_grad_enabled() and (out.requires_grad or phases.requires_grad):
        return _AddPhases.apply(out, phases)
    _blocks(out).add_(_phase_blocks(phases, out))
    return out


def _by_phases(coarse: Tensor, skip: Tensor, weight: Tensor, padding: tuple[int, ...]) -> bool:
    """Whether the phases give the convolution exactly: a 3 x 3 'same' one, on a grid twice the coarse one."""
    return (weight.shape[-2:] == (3, 3) and tuple(padding) == (1, 1)
            and skip.shape[-2:] == (2 * coarse.shape[-2], 2 * coarse.shape[-1]))


def split_weights(weight: Tensor, up_channels: int) -> tuple[Tensor, Tensor]:
    """The phases' weights (:func:`_phase_weights`) and the skip's, from the convolution's.

    Made at every call, so that they follow the weight through training: in a one-window forecast on a CPU that
    costs 0.2 ms of the 0.4 ms the phases save, so a frozen model (``ConvLSTMUNet.frozen``) makes them once.
    """
    return _phase_weights(weight[:, :up_channels]), weight[:, up_channels:]


def _phase_weights(weight: Tensor) -> Tensor:
    """``[4 * C_out, C_in, 2, 2]`` channels-last: the 3 x 3 ``weight`` summed onto each phase's 2 x 2 taps, phases
    (a, b) major. Made at every call, so that it follows the weight through training, as one matrix product over
    the taps: 65 us, where an einsum over the three factors took 335 us, a thirtieth of a one-window forecast."""
    out_channels, in_channels = weight.shape[:2]
    # in the weight's own precision: autocast would round the sums to half precision, where the convolution casts
    # its weights itself
    with torch.autocast(weight.device.type, enabled=False):
        taps = torch.mm(_phase_taps(weight.device, weight.dtype),
                        weight.permute(2, 3, 0, 1).reshape(9, out_channels * in_channels))
    pixels = taps.view(2, 2, 2, 2, out_channels, in_channels).permute(0, 1, 4, 2, 3, 5)  # [a, b, C_out, u, v, C_in]
    return pixels.reshape(4 * out_channels, 2, 2, in_channels).permute(0, 3, 1, 2)


@cache
def _phase_taps(device: torch.device, dtype: torch.dtype) -> Tensor:
    """``_PHASE_TAPS`` where the weights are, made once: a copy to a GPU at every call would wait for the GPU."""
    return _PHASE_TAPS.to(device, dtype)


def _blocks(fine: Tensor) -> Tensor:
    """``[N, C, H, W]`` channels-last as ``[N, H / 2, 2, W / 2, 2, C]``: element ``[n, i, a, j, b, c]`` is pixel
    ``(2i + a, 2j + b)``, channel ``c``."""
    n, channels, height, width = fine.shape
    return fine.permute(0, 2, 3, 1).view(n, height // 2, 2, width // 2, 2, channels)


def _phase_blocks(phases: Tensor, fine: Tensor) -> Tensor:
    """The phases' map viewed as :func:`_blocks` views ``fine``, so that both name a fine pixel alike.

    Phase (a, b) of coarse pixel (i, j) lies at row ``i + a``, column ``j + b`` of the padded 2 x 2 convolution's
    output, in channel group ``2a + b``: a view with strides, no copy."""
    n, channels, height, width = fine.shape
    pixels = phases.permute(0, 2, 3, 1)
    s_n, s_row, s_col, _ = pixels.stride()
    return pixels.as_strided((n, height // 2, 2, width // 2, 2, channels),
                             (s_n, s_row, s_row + 2 * channels, s_col, s_col + channels, 1))


class _AddPhases(torch.autograd.Function):
    """``out`` += the phases interleaved into it, in place; the phases' gradient is the output's, gathered back."""

    @staticmethod
    def forward(ctx, out: Tensor, phases: Tensor) -> Tensor:
        _blocks(out).add_(_phase_blocks(phases, out))
        ctx.mark_dirty(out)
        ctx.phases_shape = phases.shape
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        grad = grad.contiguous(memory_format=CL)
        d_phases = torch.empty(ctx.phases_shape, dtype=grad.dtype, device=grad.device, memory_format=CL).zero_()
        _phase_blocks(d_phases, grad).copy_(_blocks(grad))
        return grad, d_phases

"""The model's convolutions and its tanh, with the CPU kernel that is fastest for them where PyTorch's own is not.

Three choices, each measured against the textbook model in ``benchmarks/`` and each giving the same results
to float32 rounding (``tests/unit/test_kernels.py``):

* on an AMD CPU with AVX-512, a convolution of a single image (a single sequence's state, at every step) runs on
  oneDNN, where PyTorch would pick its im2col kernel, whose MKL matrix product is slower there;
* on a CPU whose oneDNN kernels are AVX2 at most, a training convolution's weight gradient is computed from
  NCHW copies, where oneDNN's channels-last weight-gradient kernel runs at half its speed;
* on any CPU, the gates' tanh is computed through a sigmoid (:func:`tanh_through_sigmoid`), whose kernel is four
  times faster per element.

The first two are made in :func:`conv`, the one way the model convolves, so every convolution gets the same
choice. Inside code that ``torch.compile`` traces (the gate arithmetic with ``--compile-gates``) all three step
aside: the compiler chooses its own kernels and fuses the arithmetic.
"""

from __future__ import annotations

import os
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

from convlstm.device import cpu_info

__all__ = ["conv", "tanh_through_sigmoid"]

# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) that stop below AVX-512
_BELOW_AVX512 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}
# On smaller frames the NCHW copies cost more than the faster kernel saves. Alternated training steps under
# imitated AVX2 (benchmarks/bench_cpu_variants.py): at 64 x 128 (8192 pixels) the library went from 1.00x to
# 1.19x the textbook model, while at 16 x 56 (896) and 20 x 20 (400) the copies cost 7-15 %.
_PLAIN_WEIGHT_GRAD_PIXELS = 4096


def conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, ...]) -> Tensor:
    """A stride-1 convolution of ``[N, C, H, W]`` frames, as ``F.conv2d``.

    On a CPU whose oneDNN kernels are AVX2 at most, oneDNN computes the weight gradient of channels-last
    frames with a kernel half as fast as its blocked one (77 against 166 GFLOP/s for the decoder's projection
    at 64 x 128, imitated AVX2 on an AMD EPYC); there the weight gradient of a float32 training convolution
    is computed from NCHW copies of the frames and of the output's gradient, which oneDNN reorders to its
    blocked layout itself, for frames of ``_PLAIN_WEIGHT_GRAD_PIXELS`` or more. The input gradient and the
    forward stay channels-last, where they are fastest.

    PyTorch sends a float32 CPU convolution of a batch of one and under 20480 input values (the state of a
    one-window forecast, 32 x 20 x 20, at every step) to its im2col kernel, whose matrix product is MKL's
    (``use_mkldnn`` in ATen's ``Convolution.cpp``). That is the faster kernel on Intel CPUs; on AMD ones MKL
    runs slower code, and oneDNN's kernel, with the same result, took the one-window forecast from 1.09-1.14x
    to 1.33-1.38x the textbook model on an AMD EPYC with AVX-512 (benchmarks/README.md). With oneDNN's kernels
    limited to AVX2, im2col was the faster again: the one-window forecast took 3-6 % less time with it, in five
    alternated runs (benchmarks/README.md: *The state's kernel under AVX2*). So on an AMD CPU whose oneDNN kernels
    are above AVX2 a batch of one is convolved by oneDNN.
    """
    if torch.compiler.is_compiling():
        return F.conv2d(x, weight, bias, padding=padding)
    # what is fixed for the machine first (cached, False on most): this runs at every step of the time loop
    if (_onednn_avx2_at_most() and weight.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and x.shape[-2] * x.shape[-1] >= _PLAIN_WEIGHT_GRAD_PIXELS
            and not torch.is_autocast_enabled("cpu") and torch.backends.mkldnn.enabled):
        return _PlainWeightGradConv.apply(x, weight, bias, padding)
    # torch.backends.mkldnn.enabled is asked each time: torch.backends.mkldnn.flags may change it at run time
    if (x.size(0) == 1 and _onednn_beats_im2col() and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32 and torch.backends.mkldnn.enabled):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, (1, 1), (1, 1), 1)
    return F.conv2d(x, weight, bias, padding=padding)


def tanh_through_sigmoid(x: Tensor) -> bool:
    """Whether the gates should compute ``tanh(x)`` as ``1 - 2 * sigmoid(-2 * x)`` (``convlstm.model._gates_forward``):
    on a CPU, in float32 or float64, outside code that ``torch.compile`` traces.

    ATen's CPU tanh takes 2.7 ns per float32 element, AVX2 and AVX-512 alike (an accurate vector kernel), its
    sigmoid 0.7 ns, and through the sigmoid the absolute error stays within a few float32 roundings (2e-7), which is
    all the model needs of it. Elsewhere the plain tanh: a GPU's is a fast instruction, half precision would lose the
    small values' digits in ``1 - 2 s``, and ``torch.compile`` fuses its own.
    """
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling())


class _PlainWeightGradConv(torch.autograd.Function):
    """``F.conv2d`` whose backward computes the weight and bias gradients from NCHW copies (see :func:`conv`)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        ones, zeros = [1] * len(ctx.padding), [0] * len(ctx.padding)

        def gradients(g: Tensor, inputs: Tensor, w: Tensor, mask: list[bool]) -> tuple[Tensor, Tensor, Tensor]:
            return torch.ops.aten.convolution_backward(
                g, inputs, w, bias_sizes, ones, list(ctx.padding), ones, False, zeros, 1, mask)

        d_x = gradients(grad, x, weight, [True, False, False])[0] if ctx.needs_input_grad[0] else None
        _, d_weight, d_bias = gradients(grad.contiguous(), x.contiguous(), weight.contiguous(),
                                        [False, True, ctx.has_bias])
        return d_x, d_weight, d_bias, None


@cache
def _onednn_avx2_at_most() -> bool:
    """Whether oneDNN's kernels here are AVX2 at most: an x86 CPU for which PyTorch picks its AVX2 kernels (no
    AVX-512), or oneDNN limited below AVX-512 by ``ONEDNN_MAX_CPU_ISA``. Asked once."""
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    return torch.backends.mkldnn.is_available() and (
        torch.backends.cpu.get_cpu_capability() == "AVX2" or limit in _BELOW_AVX512)


@cache
def _onednn_beats_im2col() -> bool:
    """Whether this machine has oneDNN with kernels above AVX2 and an AMD CPU (Linux's ``/proc/cpuinfo``; elsewhere,
    taken as not): asked once, not at every step of the time loop."""
    return (torch.backends.mkldnn.is_available() and not _onednn_avx2_at_most()
            and cpu_info().get("vendor_id") == "AuthenticAMD")

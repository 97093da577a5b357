"""The decoder's input convolution by phases (convlstm.upsampled_conv) against the convolution of the built input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convlstm import upsampled_conv
from convlstm.upsampled_conv import conv_of_upsampled, split_weights

CL = torch.channels_last


def _inputs(fine: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Coarse and skip frames (channels-last), and a 3 x 3 convolution's weight and bias over both."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(3, 5, (fine[0] + 1) // 2, (fine[1] + 1) // 2, generator=gen).contiguous(memory_format=CL)
    skip = torch.randn(3, 4, *fine, generator=gen).contiguous(memory_format=CL)
    weight = torch.randn(8, 9, 3, 3, generator=gen).contiguous(memory_format=CL)
    return coarse, skip, weight, torch.randn(8, generator=gen)


def _built(coarse: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(coarse, size=skip.shape[-2:], mode="nearest")
    return F.conv2d(torch.cat([up, skip], dim=1), weight, bias, padding=1)


def _assert_as_built(coarse: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """conv_of_upsampled's output, checked against the convolution of the built input."""
    ours = conv_of_upsampled(coarse, skip, weight, bias, (1, 1))
    torch.testing.assert_close(ours, _built(coarse, skip, weight, bias), rtol=1e-5, atol=1e-5)
    return ours


@pytest.mark.parametrize("fine", [(6, 8), (7, 8), (6, 9), (7, 9)], ids=["even", "odd rows", "odd columns", "odd"])
def test_equals_the_convolution_of_the_upsampled_input_beside_the_skip(fine: tuple[int, int]) -> None:
    coarse, skip, weight, bias = _inputs(fine)
    with torch.no_grad():
        ours = _assert_as_built(coarse, skip, weight, bias)
    assert ours.is_contiguous(memory_format=CL)


def test_even_grids_never_build_the_upsampled_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upsampled_conv.F, "interpolate", lambda *args, **kwargs: pytest.fail("upsampled"))
    coarse, skip, weight, bias = _inputs((6, 8))
    conv_of_upsampled(coarse, skip, weight, bias, (1, 1))


@pytest.mark.parametrize("fine", [(6, 8), (7, 9)], ids=["even", "odd"])
def test_gradients_equal_those_of_the_built_input(fine: tuple[int, int]) -> None:
    leaves = [t.clone().requires_grad_() for t in _inputs(fine)]
    conv_of_upsampled(*leaves, (1, 1)).square().sum().backward()
    ours = [t.grad for t in leaves]
    for t in leaves:
        t.grad = None
    _built(*leaves).square().sum().backward()
    for mine, theirs in zip(ours, (t.grad for t in leaves), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_weights_split_beforehand_give_the_same_convolution() -> None:
    """A frozen model splits its decoder's weight once (ConvLSTMCell._prescale) and passes the split in."""
    coarse, skip, weight, bias = _inputs((6, 8))
    split = split_weights(weight, coarse.shape[1])
    with torch.no_grad():
        assert torch.equal(conv_of_upsampled(coarse, skip, weight, bias, (1, 1), split),
                           _assert_as_built(coarse, skip, weight, bias))

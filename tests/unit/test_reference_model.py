"""The benchmark's reference ConvLSTM U-Net computes the same function as ``ConvLSTMUNet``.

``benchmarks/reference_model.py`` is the yardstick of ``benchmarks/bench_model.py``; a speed
comparison only means something if both models, with mapped weights, give the same outputs and the
same input gradients.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from convlstm.model import ConvLSTMUNet

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_model.py"
_spec = importlib.util.spec_from_file_location("benchmarks_reference_model", _PATH)
reference_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference_model)

ATOL = 1e-5
RTOL = 1e-4

HIDDEN_BY_DEPTH = {1: [5], 2: [4, 6], 3: [3, 5, 4]}


def _pair(hidden: list[int], channels: int, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    fast = ConvLSTMUNet(input_channels=channels, hidden_channels=hidden, output_channels=2)
    # Distinct per-channel head biases around the default +0.5, so a swapped or missing bias shows
    # while most cells stay on the active side of the ReLU (which would otherwise hide differences).
    with torch.no_grad():
        fast.head.bias.uniform_(0.3, 0.7)
    reference = reference_model.ReferenceConvLSTMUNet(channels, hidden, output_channels=2)
    reference_model.load_from_fast(reference, fast)
    return fast, reference


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("grid", [(7, 13), (5, 4)])
def test_same_outputs_and_input_gradients(depth: int, steps: int, grid: tuple[int, int]) -> None:
    channels = 3
    fast, reference = _pair(HIDDEN_BY_DEPTH[depth], channels, seed=10 * depth + steps)
    x = torch.randn(2, steps, channels, *grid, generator=torch.Generator().manual_seed(steps))

    x_fast = x.clone().requires_grad_(True)
    x_ref = x.clone().requires_grad_(True)
    y_fast = fast(x_fast)
    y_ref = reference(x_ref)

    assert y_fast.shape == y_ref.shape == (2, 2, *grid)
    assert (y_fast > 0).float().mean() > 0.5, "the ReLU head must pass most cells, or the comparison is vacuous"
    torch.testing.assert_close(y_ref, y_fast, atol=ATOL, rtol=RTOL)

    # A fixed random cotangent, so every output cell contributes a different weight.
    cotangent = torch.randn(y_fast.shape, generator=torch.Generator().manual_seed(99))
    (grad_fast,) = torch.autograd.grad(y_fast, x_fast, cotangent)
    (grad_ref,) = torch.autograd.grad(y_ref, x_ref, cotangent)
    assert grad_fast.abs().max() > 0
    # The input gradient of the first timestep must also be non-zero for T > 1 (it flows through time).
    assert grad_fast[:, 0].abs().max() > 0
    torch.testing.assert_close(grad_ref, grad_fast, atol=ATOL, rtol=RTOL)


def test_weight_mapping_layout() -> None:
    """Fused weight = cat([input_conv.weight, hidden_conv.weight], dim=1); bias = input_conv.bias."""
    fast, reference = _pair([4, 6], channels=3, seed=0)
    pairs = zip([*reference.encoders, *reference.decoders], [*fast.encoders, *fast.decoders], strict=True)
    for ref_cell, fast_cell in pairs:
        in_dim = fast_cell.input_dim
        assert torch.equal(ref_cell.conv.weight[:, :in_dim], fast_cell.input_conv.weight)
        assert torch.equal(ref_cell.conv.weight[:, in_dim:], fast_cell.hidden_conv.weight)
        assert torch.equal(ref_cell.conv.bias, fast_cell.input_conv.bias)
    # The forget-gate bias initialisation (1.0) travels with the mapping.
    assert torch.all(reference.encoders[0].conv.bias[4:8] == 1.0)


def test_mismatched_architecture_is_refused() -> None:
    fast = ConvLSTMUNet(input_channels=3, hidden_channels=[4, 6])
    with pytest.raises(ValueError):
        reference_model.load_from_fast(reference_model.ReferenceConvLSTMUNet(3, [4]), fast)
    with pytest.raises(ValueError):
        reference_model.load_from_fast(reference_model.ReferenceConvLSTMUNet(3, [4, 8]), fast)

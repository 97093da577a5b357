"""Tests for convlstm.model: the ConvLSTM cell and the ConvLSTM U-Net."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from convlstm.errors import ModelError
from convlstm.model import ConvLSTMCell, ConvLSTMUNet

DEPTH_HIDDEN = {1: [4], 2: [4, 6], 3: [4, 6, 8]}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- cell


def test_init_hidden_shapes_zeros_dtype_and_device() -> None:
    cell = ConvLSTMCell(3, 5)
    h, c = cell.init_hidden(2, 7, 9, device=torch.device("cpu"))
    for t in (h, c):
        assert t.shape == (2, 5, 7, 9)
        assert t.device.type == "cpu"
        assert t.dtype == torch.float32
        assert torch.count_nonzero(t) == 0
    # Device is honoured (meta needs no allocation) and dtype follows the parameters.
    h_meta, c_meta = cell.init_hidden(1, 2, 3, device="meta")
    assert h_meta.device.type == "meta" and c_meta.device.type == "meta"
    h64, _ = cell.double().init_hidden(1, 2, 3, device="cpu")
    assert h64.dtype == torch.float64


def test_cell_forward_one_step_shapes() -> None:
    cell = ConvLSTMCell(3, 5, kernel_size=5)
    x = torch.randn(2, 3, 6, 7)
    h, c = cell(x, cell.init_hidden(2, 6, 7, device=x.device))
    assert h.shape == (2, 5, 6, 7)
    assert c.shape == (2, 5, 6, 7)
    # h = o * tanh(c) is bounded by 1 in magnitude.
    assert h.abs().max() <= 1.0


def test_cell_conv_layout_and_forget_bias() -> None:
    cell = ConvLSTMCell(3, 5, kernel_size=3)
    assert cell.input_conv.in_channels == 3 and cell.input_conv.out_channels == 20
    assert cell.hidden_conv.in_channels == 5 and cell.hidden_conv.out_channels == 20
    assert cell.input_conv.bias is not None
    assert cell.hidden_conv.bias is None
    assert cell.input_conv.padding == (1, 1)
    # Gate order i, f, o, g: only the forget slice is initialised to 1.
    assert torch.all(cell.input_conv.bias[5:10] == 1.0)
    assert not torch.all(cell.input_conv.bias[:5] == 1.0)


def test_cell_gate_math_matches_reference() -> None:
    cell = ConvLSTMCell(2, 3)
    x = torch.randn(1, 2, 4, 4)
    h0, c0 = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    gates = cell.input_conv(x) + cell.hidden_conv(h0)
    i, f, o, g = gates[:, 0:3], gates[:, 3:6], gates[:, 6:9], gates[:, 9:12]
    c_ref = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
    h_ref = torch.sigmoid(o) * torch.tanh(c_ref)
    h, c = cell(x, (h0, c0))
    torch.testing.assert_close(c, c_ref)
    torch.testing.assert_close(h, h_ref)


def test_forward_sequence_matches_step_loop() -> None:
    cell = ConvLSTMCell(3, 4)
    x_seq = torch.randn(2, 5, 3, 6, 7)
    outputs, (h_last, c_last) = cell.forward_sequence(x_seq)

    state = cell.init_hidden(2, 6, 7, device=x_seq.device)
    expected = []
    for t in range(x_seq.shape[1]):
        state = cell(x_seq[:, t], state)
        expected.append(state[0])
    expected_seq = torch.stack(expected, dim=1)

    assert outputs.shape == (2, 5, 4, 6, 7)
    torch.testing.assert_close(outputs, expected_seq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_last, state[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_last, state[1], atol=1e-5, rtol=1e-5)


def test_forward_sequence_with_initial_state_continues_sequence() -> None:
    cell = ConvLSTMCell(2, 3)
    x_seq = torch.randn(1, 6, 2, 5, 5)
    full, full_state = cell.forward_sequence(x_seq)
    first, mid_state = cell.forward_sequence(x_seq[:, :3])
    second, end_state = cell.forward_sequence(x_seq[:, 3:], mid_state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(end_state[1], full_state[1], atol=1e-5, rtol=1e-5)


class _ConvCalls(TorchDispatchMode):
    """Counts the convolutions a cell runs, told apart by their weight (however the library calls them)."""

    def __init__(self, cell: ConvLSTMCell) -> None:
        super().__init__()
        self.weights = {"input": cell.input_conv.weight, "hidden": cell.hidden_conv.weight}
        self.calls = {"input": 0, "hidden": 0}
        self.frames: dict[str, list[int]] = {"input": [], "hidden": []}  # each call's number of frames

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            for name, weight in self.weights.items():
                if args[1] is weight:
                    self.calls[name] += 1
                    self.frames[name].append(args[0].shape[0])
        return func(*args, **(kwargs or {}))


def test_forward_sequence_projects_inputs_once_and_skips_the_zero_state_convolution() -> None:
    cell = ConvLSTMCell(2, 3)
    with _ConvCalls(cell) as counter:
        cell.forward_sequence(torch.randn(2, 4, 2, 5, 5))
        # From the zero state, step 0 has nothing to convolve: 3 state convolutions for 4 steps.
        assert counter.calls == {"input": 1, "hidden": 3}
        cell.forward_sequence(torch.randn(2, 4, 2, 5, 5), cell.init_hidden(2, 5, 5))
    assert counter.calls == {"input": 2, "hidden": 7}


def test_cpu_projection_is_chunked_by_bytes_with_identical_results(monkeypatch: pytest.MonkeyPatch) -> None:
    cell = ConvLSTMCell(2, 3)
    x_seq = torch.randn(2, 5, 2, 4, 4)
    whole, _ = cell.forward_sequence(x_seq)
    frame_bytes = 2 * 4 * 3 * 4 * 4 * 4  # B * 4 * hidden * H * W * sizeof(float32)
    monkeypatch.setattr("convlstm.model._CPU_PROJECTION_BYTES", 2 * frame_bytes)
    with _ConvCalls(cell) as counter:
        chunked, _ = cell.forward_sequence(x_seq)
    assert counter.calls["input"] == 3  # 5 steps in chunks of 2, 2, 1
    torch.testing.assert_close(chunked, whole)


@pytest.mark.parametrize("amd", [True, False], ids=["amd", "other"])
def test_a_single_sequence_on_a_cpu_gives_the_same_outputs_and_gradients_whichever_state_kernel(
        monkeypatch: pytest.MonkeyPatch, amd: bool) -> None:
    """On an AMD CPU a batch of one convolves its state with oneDNN's kernel, not PyTorch's choice (im2col)."""
    monkeypatch.setattr("convlstm.kernels._onednn_beats_im2col", lambda: amd)
    calls = []
    original = torch.ops.aten.mkldnn_convolution
    monkeypatch.setattr(torch.ops.aten, "mkldnn_convolution", lambda *args: calls.append(1) or original(*args))
    torch.manual_seed(0)
    model = ConvLSTMUNet(3, (8, 16))
    x = torch.randn(1, 4, 3, 20, 20, requires_grad=True)
    ours = model(x)
    ours.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert len(calls) == (3 * 3 if amd else 0)  # 3 levels, 3 steps each from the zero state
    monkeypatch.setattr("convlstm.kernels._onednn_beats_im2col", lambda: not amd)
    model.zero_grad()
    theirs = model(x)
    theirs.sum().backward()
    torch.testing.assert_close(ours, theirs)
    for mine, other in zip(grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(mine, other)


def test_sequences_stay_channels_last() -> None:
    cell = ConvLSTMCell(3, 4)
    outputs, _ = cell.forward_sequence(torch.randn(2, 3, 3, 5, 6))
    assert outputs.permute(1, 0, 3, 4, 2).is_contiguous()  # [T, B, H, W, C] memory


def test_projected_steps_are_contiguous_channels_last_frames() -> None:
    cell = ConvLSTMCell(2, 3).to(memory_format=torch.channels_last)
    steps = list(cell.projected_steps(torch.randn(2, 4, 2, 5, 6)))
    assert len(steps) == 4
    assert all(s.shape == (2, 12, 5, 6) and s.is_contiguous(memory_format=torch.channels_last) for s in steps)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"input_dim": 0, "hidden_dim": 4}, "input_dim"),
        ({"input_dim": -1, "hidden_dim": 4}, "input_dim"),
        ({"input_dim": 2.0, "hidden_dim": 4}, "input_dim"),
        ({"input_dim": 2, "hidden_dim": 0}, "hidden_dim"),
        ({"input_dim": 2, "hidden_dim": True}, "hidden_dim"),
        ({"input_dim": 2, "hidden_dim": 4, "kernel_size": 2}, "kernel_size"),
        ({"input_dim": 2, "hidden_dim": 4, "kernel_size": 0}, "kernel_size"),
    ],
)
def test_cell_invalid_args_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ConvLSTMCell(**kwargs)


# --------------------------------------------------------------------------- U-Net


def test_unet_spec_example_shape() -> None:
    model = ConvLSTMUNet(56, hidden_channels=[8, 16])
    out = model(torch.randn(2, 3, 56, 20, 20))
    assert out.shape == (2, 1, 20, 20)
    assert torch.all(out >= 0)


def test_unet_stores_config_and_builds_levels() -> None:
    model = ConvLSTMUNet(5, hidden_channels=(4, 6, 8), output_channels=2, kernel_size=5)
    assert model.input_channels == 5
    assert model.hidden_channels == [4, 6, 8]
    assert isinstance(model.hidden_channels, list)
    assert model.output_channels == 2
    assert model.kernel_size == 5
    assert [(c.input_dim, c.hidden_dim) for c in model.encoders] == [(5, 4), (4, 6), (6, 8)]
    assert [(c.input_dim, c.hidden_dim) for c in model.decoders] == [(10, 4), (14, 6)]
    out = model(torch.randn(1, 2, 5, 9, 9))
    assert out.shape == (1, 2, 9, 9)


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize(("height", "width"), [(21, 37), (1, 1), (3, 5)])
def test_unet_odd_and_tiny_grids(depth: int, height: int, width: int) -> None:
    model = ConvLSTMUNet(3, hidden_channels=DEPTH_HIDDEN[depth])
    out = model(torch.randn(2, 2, 3, height, width))
    assert out.shape == (2, 1, height, width)
    assert torch.all(out >= 0)
    assert torch.isfinite(out).all()


@settings(max_examples=15, deadline=None)
@given(
    height=st.integers(1, 24),
    width=st.integers(1, 24),
    depth=st.integers(1, 3),
    steps=st.integers(1, 4),
    batch=st.integers(1, 2),
)
def test_unet_shape_and_nonnegativity_property(height: int, width: int, depth: int, steps: int, batch: int) -> None:
    model = ConvLSTMUNet(2, hidden_channels=DEPTH_HIDDEN[depth])
    # A negative head bias makes many pre-ReLU outputs negative, so the ReLU is exercised.
    with torch.no_grad():
        model.head.bias.fill_(-0.05)
        out = model(torch.randn(batch, steps, 2, height, width))
    assert out.shape == (batch, 1, height, width)
    assert torch.all(out >= 0)


@pytest.mark.parametrize(
    "shape",
    [
        (3, 4, 8, 8),  # missing time axis
        (1, 2, 3, 4, 8, 8),  # one axis too many
        (2, 3, 4, 8, 8),  # wrong channel count
        (2, 0, 3, 8, 8),  # no timesteps
    ],
)
def test_unet_bad_input_shape_raises(shape: tuple[int, ...]) -> None:
    model = ConvLSTMUNet(3, hidden_channels=[4])
    with pytest.raises(ValueError, match=r"expected input of shape \[B, T, 3, H, W\]") as info:
        model(torch.randn(shape))
    assert str(list(shape)) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"input_channels": 0}, "input_channels"),
        ({"input_channels": 2, "hidden_channels": []}, "hidden_channels"),
        ({"input_channels": 2, "hidden_channels": ()}, "hidden_channels"),
        ({"input_channels": 2, "hidden_channels": 8}, "hidden_channels"),
        ({"input_channels": 2, "hidden_channels": [8, 0]}, r"hidden_channels\[1\]"),
        ({"input_channels": 2, "hidden_channels": [8, 2.5]}, r"hidden_channels\[1\]"),
        ({"input_channels": 2, "output_channels": 0}, "output_channels"),
        ({"input_channels": 2, "kernel_size": 4}, "kernel_size"),
    ],
)
def test_unet_invalid_args_raise(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ConvLSTMUNet(**kwargs)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_unet_gradients_reach_every_parameter(depth: int) -> None:
    model = ConvLSTMUNet(2, hidden_channels=DEPTH_HIDDEN[depth])
    with torch.no_grad():
        model.head.bias.fill_(1.0)  # keep the ReLU open so gradients flow everywhere
    out = model(torch.randn(2, 3, 2, 9, 11))
    out.sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(param.grad).all(), f"non-finite gradient for {name}"
        assert param.grad.abs().sum() > 0, f"zero gradient for {name}"


def test_unet_deterministic_for_fixed_seed() -> None:
    x = torch.randn(2, 3, 2, 10, 12)
    torch.manual_seed(123)
    first_model = ConvLSTMUNet(2, hidden_channels=[4, 6])
    torch.manual_seed(123)
    second_model = ConvLSTMUNet(2, hidden_channels=[4, 6])
    first = first_model(x)
    torch.testing.assert_close(second_model(x), first, rtol=0, atol=0)
    torch.testing.assert_close(first_model(x), first, rtol=0, atol=0)


def test_unet_last_timestep_depends_on_history() -> None:
    model = ConvLSTMUNet(2, hidden_channels=[4, 6])
    with torch.no_grad():
        model.head.bias.fill_(1.0)
    x = torch.randn(1, 3, 2, 8, 8)
    x_changed = x.clone()
    x_changed[:, 0] += 1.0  # perturb only the first timestep
    assert not torch.allclose(model(x), model(x_changed))


def test_unet_follows_parameter_dtype() -> None:
    model = ConvLSTMUNet(2, hidden_channels=[4, 6]).double()
    out = model(torch.randn(1, 2, 2, 7, 5, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert out.shape == (1, 1, 7, 5)


def test_unet_runs_under_autocast() -> None:
    model = ConvLSTMUNet(2, hidden_channels=[4, 6])
    x = torch.randn(1, 2, 2, 9, 7)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (1, 1, 9, 7)
    assert torch.isfinite(out).all()
    assert torch.all(out >= 0)
    torch.testing.assert_close(out.float(), model(x), atol=5e-2, rtol=5e-2)


def test_cell_state_stays_in_the_parameters_dtype_under_autocast() -> None:
    # Low-precision convolutions, full-precision memory: the cell state accumulates over the window.
    cell = ConvLSTMCell(2, 3)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        for state in (None, cell.init_hidden(1, 5, 5)):
            _, (h, c) = cell.forward_sequence(torch.randn(1, 3, 2, 5, 5), state)
            assert c.dtype == torch.float32 and h.dtype == torch.float32


@pytest.mark.parametrize("hidden", [[8], [8, 16], [8, 16, 32]])
def test_head_starts_active_so_relu_passes_gradient(hidden: list[int]) -> None:
    """Regression: a head that starts negative everywhere outputs zeros and never learns."""
    torch.manual_seed(0)
    model = ConvLSTMUNet(input_channels=5, hidden_channels=hidden)
    out = model(torch.randn(2, 3, 5, 12, 20))
    assert (out > 0).float().mean() > 0.9
    out.mean().backward()
    assert model.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("starts", [[0, 1, 2, 3], [5, 0, 2, 2], [4]])
def test_forward_windows_equals_forward_of_the_stacked_windows(starts: list[int]) -> None:
    model = ConvLSTMUNet(input_channels=5, hidden_channels=[4, 6, 8]).eval()
    frames = torch.randn(9, 5, 7, 10)
    expected = model(torch.stack([frames[s:s + 4] for s in starts]))
    torch.testing.assert_close(model.forward_windows(frames, torch.tensor(starts), 4), expected, rtol=1e-5, atol=1e-6)


def test_forward_windows_projects_each_frame_once() -> None:
    model = ConvLSTMUNet(input_channels=3, hidden_channels=[4, 6])
    with _ConvCalls(model.encoders[0]) as counter:
        model.forward_windows(torch.randn(10, 3, 6, 6), torch.arange(5), 6)
    seen = counter.frames["input"]
    assert seen == [10]  # 5 windows of 6 steps: 10 distinct frames, not 30


@pytest.mark.parametrize(
    ("frames", "starts", "window", "match"),
    [
        ((9, 4, 5, 5), [0], 3, "frames of shape"),
        ((9, 5, 5), [0], 3, "frames of shape"),
        ((9, 5, 5, 5), [7], 3, "window start"),
        ((9, 5, 5, 5), [-1], 3, "window start"),
        ((9, 5, 5, 5), [], 3, "window start"),
        ((9, 5, 5, 5), [0], 0, "window_size"),
    ],
)
def test_forward_windows_refuses_bad_arguments(
        frames: tuple[int, ...], starts: list[int], window: int, match: str) -> None:
    model = ConvLSTMUNet(input_channels=5, hidden_channels=[4])
    with pytest.raises(ValueError, match=match):
        model.forward_windows(torch.randn(frames), torch.tensor(starts, dtype=torch.long), window)


# --------------------------------------------------------------------------- the frozen copy forecasts use


def _forecasts(model: ConvLSTMUNet, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sliding windows that share frames (forward_windows), and the same windows collated (forward)."""
    starts = torch.arange(len(frames) - 3)
    return model.forward_windows(frames, starts, 4), model(torch.stack([frames[s:s + 4] for s in starts]))


@pytest.mark.parametrize("grid", [(8, 12), (7, 9)], ids=["even", "odd"])
def test_a_frozen_copy_forecasts_the_same_to_the_bit(grid: tuple[int, int]) -> None:
    model = ConvLSTMUNet(input_channels=5, hidden_channels=[4, 6, 8])
    frozen = model.frozen()
    frames = torch.randn(9, 5, *grid)
    with torch.no_grad():
        for ours, theirs in zip(_forecasts(frozen, frames), _forecasts(model, frames), strict=True):
            assert torch.equal(ours, theirs)
    assert frozen.is_frozen and not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    # the model it was made from is left as it was
    assert not model.is_frozen and model.training and all(p.requires_grad for p in model.parameters())
    assert frozen.state_dict().keys() == model.state_dict().keys()


def test_a_frozen_copy_uses_its_prescaled_weights_only_in_full_precision_inference() -> None:
    model = ConvLSTMUNet(input_channels=5, hidden_channels=[4, 6]).eval()
    frozen = model.frozen()
    for cell in frozen.cells:  # spoiled: forecasts that read them can no longer match
        cell.prescaled.hidden_weight.zero_()
    frames = torch.randn(7, 5, 8, 8)
    with torch.no_grad():
        assert not torch.equal(_forecasts(frozen, frames)[0], _forecasts(model, frames)[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(_forecasts(frozen, frames)[0], _forecasts(model, frames)[0])
    # with autograd: a saliency map of the input, say
    leaves = [frames.clone().requires_grad_() for _ in range(2)]
    outputs = [m.forward_windows(x, torch.arange(4), 4) for m, x in zip((frozen, model), leaves, strict=True)]
    assert torch.equal(*outputs)
    for out in outputs:
        out.sum().backward()
    assert torch.equal(leaves[0].grad, leaves[1].grad)


def test_a_frozen_copy_follows_load_state_dict_and_dtype_and_refuses_training() -> None:
    frozen = ConvLSTMUNet(input_channels=5, hidden_channels=[4, 6]).frozen()
    other = ConvLSTMUNet(input_channels=5, hidden_channels=[4, 6]).eval()
    frozen.load_state_dict(other.state_dict())
    frames = torch.randn(7, 5, 8, 8)
    with torch.no_grad():
        assert torch.equal(_forecasts(frozen, frames)[0], _forecasts(other, frames)[0])
        frozen.double()
        assert frozen.encoders[0].prescaled.hidden_weight.dtype == torch.float64
        assert torch.equal(_forecasts(frozen, frames.double())[0], _forecasts(other.double(), frames.double())[0])
    with pytest.raises(ModelError, match="frozen copy"):
        frozen.train()

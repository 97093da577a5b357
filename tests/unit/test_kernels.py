"""Tests for convlstm.kernels (the model's CPU kernel choices) and the cell's hand-written gate backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convlstm import kernels
from convlstm.device import parse_cpuinfo
from convlstm.model import ConvLSTMUNet, _Gates, _gates_forward

CL = torch.channels_last


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _grads(fn, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The output of ``fn(*tensors)`` and the gradients of a fixed random projection of it."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    torch.manual_seed(1)
    sum(o.mul(torch.randn_like(o)).sum() for o in outs).backward()
    return outs, [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_the_plain_weight_gradient_convolution_gives_the_conv2d_outputs_and_gradients(with_bias: bool) -> None:
    x = torch.randn(3, 5, 9, 11).contiguous(memory_format=CL)
    weight = torch.randn(8, 5, 3, 3).contiguous(memory_format=CL)
    bias = torch.randn(8) if with_bias else None
    args = (x, weight) + ((bias,) if with_bias else ())

    def plain(x, w, b=None):
        return kernels._PlainWeightGradConv.apply(x, w, b, (1, 1))

    def reference(x, w, b=None):
        return F.conv2d(x, w, b, padding=1)

    (ours,), our_grads = _grads(plain, *args)
    (theirs,), their_grads = _grads(reference, *args)
    torch.testing.assert_close(ours, theirs)
    assert ours.is_contiguous(memory_format=CL)  # the forward is F.conv2d's, in the frames' layout
    for mine, other in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-4)


def test_the_plain_weight_gradient_needs_no_input_gradient() -> None:
    x = torch.randn(2, 3, 6, 6)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    kernels._PlainWeightGradConv.apply(x, weight, None, (1, 1)).sum().backward()
    assert x.grad is None and weight.grad is not None


@pytest.mark.parametrize(("avx2", "grad", "size", "expected"), [
    (True, True, 64, 1), (False, True, 64, 0), (True, False, 64, 0), (True, True, 8, 0)],
    ids=["avx2-training-large", "avx512", "inference", "small-frames"])
def test_conv_takes_the_plain_weight_gradient_only_for_large_training_frames_on_avx2(
        monkeypatch: pytest.MonkeyPatch, avx2: bool, grad: bool, size: int, expected: int) -> None:
    monkeypatch.setattr(kernels, "_onednn_avx2_at_most", lambda: avx2)
    calls = []
    original = kernels._PlainWeightGradConv.apply
    monkeypatch.setattr(kernels._PlainWeightGradConv, "apply", lambda *args: calls.append(1) or original(*args))
    weight = torch.randn(4, 2, 3, 3, requires_grad=True)
    x = torch.randn(1, 2, size, size)  # 64 x 64: the threshold
    with torch.set_grad_enabled(grad):
        kernels.conv(x, weight, None, (1, 1))
    assert len(calls) == expected


def test_a_model_trained_with_the_plain_weight_gradient_gets_the_same_gradients(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = ConvLSTMUNet(3, (4, 6))
    x = torch.randn(2, 3, 3, 12, 10)
    grads = {}
    for plain in (True, False):
        monkeypatch.setattr(kernels, "_onednn_avx2_at_most", lambda plain=plain: plain)
        monkeypatch.setattr(kernels, "_PLAIN_WEIGHT_GRAD_PIXELS", 0)
        model.zero_grad()
        model(x).sum().backward()
        grads[plain] = [p.grad.clone() for p in model.parameters()]
    for mine, other in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(mine, other, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("limit", "expected"), [("AVX2", True), ("avx2_vnni", True), ("AVX512_CORE", False)])
def test_onednn_limited_below_avx512_counts_as_avx2(
        monkeypatch: pytest.MonkeyPatch, limit: str, expected: bool) -> None:
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    kernels._onednn_avx2_at_most.cache_clear()
    try:
        assert kernels._onednn_avx2_at_most() is (expected and torch.backends.mkldnn.is_available())
    finally:
        kernels._onednn_avx2_at_most.cache_clear()


# --------------------------------------------------------------------------- the cell's gates


@pytest.mark.parametrize("zero_state", [True, False], ids=["zero-state", "state"])
def test_the_gates_backward_is_autograds_of_the_same_arithmetic(zero_state: bool) -> None:
    gates = torch.randn(2, 4 * 3, 5, 4, dtype=torch.float64).contiguous(memory_format=CL)
    c = None if zero_state else torch.randn(2, 3, 5, 4, dtype=torch.float64)
    tensors = (gates,) if zero_state else (gates, c)

    def ours(gates, c=None):
        return _Gates.apply(gates, c, torch.float64)

    def autograds(gates, c=None):
        return _gates_forward(gates, c, torch.float64)[:2]

    assert torch.autograd.gradcheck(ours, tuple(t.detach().requires_grad_() for t in tensors))
    our_out, our_grads = _grads(ours, *tensors)
    their_out, their_grads = _grads(autograds, *tensors)
    for mine, other in zip(our_out + tuple(our_grads), their_out + tuple(their_grads), strict=True):
        torch.testing.assert_close(mine, other)
    assert our_grads[0].is_contiguous(memory_format=CL)  # the gates' gradient in the gates' layout


def test_the_gates_backward_under_autocast_keeps_each_gradient_in_its_tensors_dtype() -> None:
    gates = torch.randn(1, 8, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    c = torch.randn(1, 2, 3, 3, requires_grad=True)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        h, c_next = _Gates.apply(gates, c, torch.float32)
    assert h.dtype == c_next.dtype == torch.float32
    (h.sum() + c_next.sum()).backward()
    assert gates.grad.dtype == torch.bfloat16 and c.grad.dtype == torch.float32
    assert torch.isfinite(gates.grad.float()).all() and torch.isfinite(c.grad).all()


# --------------------------------------------------------------------------- the tanh through the sigmoid


def _torch_tanh_gates(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate arithmetic with ``torch.tanh``, as on a GPU."""
    monkeypatch.setattr("convlstm.model.tanh_through_sigmoid", lambda x: False)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 5e-7), (torch.float64, 1e-15)])
@pytest.mark.parametrize("zero_state", [True, False], ids=["zero-state", "state"])
def test_the_gates_through_the_sigmoid_match_torch_tanh(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype,
                                                        atol: float, zero_state: bool) -> None:
    """From -30 to 30, at 0 and at +-inf, in float32 and float64: within a few roundings of the arithmetic with
    ``torch.tanh``, never outside tanh's range; a NaN stays a NaN."""
    values = torch.cat([torch.linspace(-30, 30, 25_982, dtype=dtype), torch.logspace(-30, 1, 2_000, dtype=dtype),
                        torch.tensor([0.0, -0.0, 1e4, -1e4, float("inf"), float("-inf")] * 3, dtype=dtype)])
    gates = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))].reshape(2, 4 * 7, 10, 50)
    gates = gates.contiguous(memory_format=CL)
    c = None if zero_state else torch.linspace(-3, 3, 2 * 7 * 10 * 50, dtype=dtype).reshape(2, 7, 10, 50)
    h, c_next, _ = _gates_forward(gates, c, dtype)
    with monkeypatch.context() as patch:
        _torch_tanh_gates(patch)
        h_torch, c_torch, _ = _gates_forward(gates, c, dtype)
    torch.testing.assert_close(c_next, c_torch, atol=atol * 4, rtol=0)
    torch.testing.assert_close(h, h_torch, atol=atol, rtol=0)
    assert h.abs().max() <= 1 and h.is_contiguous(memory_format=CL) and c_next.is_contiguous(memory_format=CL)
    gates[0, 0, 0, 0] = float("nan")
    assert _gates_forward(gates, c, dtype)[0][0, 0, 0, 0].isnan()


def test_the_gates_keep_the_tanh_values_for_the_backward() -> None:
    gates = torch.randn(2, 4 * 3, 5, 4).contiguous(memory_format=CL)
    c = torch.randn(2, 3, 5, 4)
    h, c_next, (ifo, g, tanh_c) = _gates_forward(gates, c, torch.float32, keep=True)
    torch.testing.assert_close(ifo, torch.sigmoid(gates[:, :9]), atol=3e-7, rtol=0)
    torch.testing.assert_close(g, torch.tanh(gates[:, 9:]), atol=5e-7, rtol=0)
    torch.testing.assert_close(tanh_c, torch.tanh(c_next), atol=5e-7, rtol=0)
    torch.testing.assert_close(h, torch.sigmoid(gates[:, 6:9]) * torch.tanh(c_next), atol=5e-7, rtol=0)


def test_half_precision_and_compiled_gates_keep_torch_tanh() -> None:
    """In half precision ``1 - 2 s`` would lose the small values' digits; ``torch.compile`` fuses its own tanh."""
    assert not kernels.tanh_through_sigmoid(torch.randn(3, dtype=torch.bfloat16))
    assert kernels.tanh_through_sigmoid(torch.randn(3)) and kernels.tanh_through_sigmoid(torch.randn(3).double())
    assert not torch.compile(kernels.tanh_through_sigmoid, backend="eager")(torch.randn(3))


@pytest.mark.parametrize("avx2", [True, False], ids=["avx2", "avx512"])
def test_a_batch_of_one_goes_to_onednn_only_above_avx2(monkeypatch: pytest.MonkeyPatch, avx2: bool) -> None:
    """Under AVX2, PyTorch's im2col kernel convolves a one-window forecast's state faster than oneDNN's, even on an
    AMD CPU; above it, on an AMD CPU, oneDNN's is the faster."""
    monkeypatch.setattr(kernels, "_onednn_avx2_at_most", lambda: avx2)
    monkeypatch.setattr(kernels, "cpu_info", lambda: parse_cpuinfo(["vendor_id\t: AuthenticAMD\n"]))
    kernels._onednn_beats_im2col.cache_clear()
    try:
        assert kernels._onednn_beats_im2col() is (not avx2 and torch.backends.mkldnn.is_available())
    finally:
        kernels._onednn_beats_im2col.cache_clear()


def test_cpuinfo_keeps_each_fields_first_value() -> None:
    """Every processor repeats its fields in ``/proc/cpuinfo``; the first processor's are the machine's."""
    text = ["processor\t: 0\n", "vendor_id\t: AuthenticAMD\n", "model name\t: AMD EPYC\n", "\n",
            "processor\t: 1\n", "vendor_id\t: GenuineIntel\n", "flags\t\t: fpu avx2\n"]
    assert parse_cpuinfo(text) == {"processor": "0", "vendor_id": "AuthenticAMD", "model name": "AMD EPYC",
                                   "flags": "fpu avx2"}

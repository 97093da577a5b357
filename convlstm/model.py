"""ConvLSTM U-Net for precipitation nowcasting.

The model reads a sequence of gridded fields ``[B, T, C, H, W]`` and predicts a
single non-negative field ``[B, output_channels, H, W]`` (e.g. the next
precipitation map).

What makes it faster than the textbook cell (one convolution over ``cat([x_t, h])`` per
timestep), measured in ``benchmarks/``, with the same outputs:

* the input-to-state convolution has no recurrence, so it runs over many timesteps in one
  batched ``Conv2d``; only the state-to-state convolution and the gate arithmetic run in the loop
  over ``T``. On a CPU the batch is capped in bytes (see ``_CPU_PROJECTION_BYTES``);
* sequences are kept channels-last and time-major (``[B, T, C, H, W]`` indexing over
  ``[T, B, H, W, C]`` memory): frames in the layout oneDNN and cuDNN convolve fastest, and any
  stretch of timesteps a view; the input is converted once;
* from the zero initial state the first step needs no state-to-state convolution (it would
  convolve zeros) and no forget term (``f * c0 = 0``);
* the input-to-state gradient of the raw input is never computed: the input needs none, and the
  split keeps it apart from the state convolution, whose gradient is needed;
* a decoder's input, the coarser level upsampled (nearest) beside the skip, is never built: the upsampled part's
  convolution is one 2 x 2 convolution at the coarse grid, 4/9 of the FLOPs (``convlstm.upsampled_conv``);
* ``forward_windows`` forecasts overlapping (sliding) windows from the frames they share, so the
  first level projects each frame once, not once per window it appears in;
* at small batches a step's cost is mostly operator overhead and memory traffic, so a step makes few
  calls, works in place where autograd allows, and intermediates are released as soon as used;
* in training, the gates' backward is written out (:class:`_Gates`): it fills one gradient of the gates in
  place where autograd's joins the gates' gradients with two concatenations per step, and every gradient
  stays channels-last, so no convolution's backward copies its input into that layout;
* on some CPUs PyTorch's kernel choice is not the fastest for these convolutions, and on every CPU its tanh
  is four times slower than its sigmoid: see ``convlstm.kernels``;
* a forecast's model is :meth:`ConvLSTMUNet.frozen`: its cells keep their weights with the candidate gate's rows
  times -2, the scale the gates' sigmoid wants (``convlstm.kernels.tanh_through_sigmoid``), so a step scales
  nothing and works in place;
* with :meth:`ConvLSTMUNet.compile_gates` a step's gate arithmetic, a dozen small operations, is compiled by
  ``torch.compile`` into a few fused kernels (meant for GPUs, where each operation is a kernel launch; off by
  default, since it was slower where measured).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache, partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convlstm.checks import require_odd_kernel, require_positive_int
from convlstm.errors import ConfigError, DataError, ModelError
from convlstm.kernels import conv, tanh_through_sigmoid
from convlstm.upsampled_conv import conv_of_upsampled, split_weights

__all__ = ["ConvLSTMCell", "ConvLSTMUNet"]

State = tuple[Tensor, Tensor]

HEAD_BIAS_INIT = 0.5

# glibc serves allocations above 32 MiB (its largest mmap threshold) with fresh mmaps that the
# kernel zero-fills page by page on every use, so on a CPU an input projection batched over many
# timesteps is only worth it up to that size; beyond it each chunk costs more in page faults than
# batching gains (benchmarks/README.md). CUDA's caching allocator has no such cost.
_CPU_PROJECTION_BYTES = 32 * 2**20


class ConvLSTMCell(nn.Module):
    """A convolutional LSTM cell (Shi et al., 2015) without peephole connections.

    Gates are stacked along the channel axis in the order input, forget,
    output, candidate (i, f, o, g).

    Parameters
    ----------
    input_dim : int
        Channels of the input.
    hidden_dim : int
        Channels of the hidden and cell states.
    kernel_size : int
        Odd size of both convolutions ('same' padding).
    """

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        require_positive_int("input_dim", input_dim)
        require_positive_int("hidden_dim", hidden_dim)
        require_odd_kernel("kernel_size", kernel_size)
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.kernel_size = kernel_size
        padding = kernel_size // 2
        self.input_conv = nn.Conv2d(input_dim, 4 * hidden_dim, kernel_size, padding=padding, bias=True)
        # The input convolution already carries the bias; a second one would be redundant, and without
        # it the state convolution of a zero state is exactly zero (the first step skips it).
        self.hidden_conv = nn.Conv2d(hidden_dim, 4 * hidden_dim, kernel_size, padding=padding, bias=False)
        # Forget-gate bias of 1.0 keeps the cell state flowing early in training,
        # which avoids vanishing gradients through time (Jozefowicz et al., 2015).
        with torch.no_grad():
            self.input_conv.bias[hidden_dim : 2 * hidden_dim].fill_(1.0)
        # the gate arithmetic by torch.compile (ConvLSTMUNet.compile_gates); a plain attribute, not in the state dict
        self.gates_compiled = False
        self.padding = self.input_conv.padding  # both convolutions': a plain attribute, read at every step
        # a frozen copy's (ConvLSTMUNet.frozen): plain attributes, not in the state dict, read at every step, where an
        # nn.Module's attribute lookup costs microseconds
        self.is_frozen = False
        self.up_channels = 0  # a frozen decoder's upsampled input channels (freeze)
        self.prescaled: _Prescaled | None = None

    def init_hidden(self, batch_size: int, height: int, width: int, device: torch.device | str | None = None) -> State:
        """Return zero ``(h, c)`` of shape ``[B, hidden_dim, H, W]`` in the parameters' dtype.

        Parameters
        ----------
        batch_size, height, width, device : int, int, int, torch.device or str (optional)
            ``B``, ``H``, ``W``, and where the state lives (default: the current default device).

        Returns
        -------
        tuple of torch.Tensor
            Hidden and cell state.
        """
        shape, dtype = (batch_size, self.hidden_dim, height, width), self.input_conv.weight.dtype
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    def project(self, frames: Tensor) -> Tensor:
        """The input-to-state convolution of ``[N, input_dim, H, W]`` frames (any number of timesteps at once),
        by :func:`convlstm.kernels.conv`: every path into the cell gets the same kernel choice."""
        weight, bias, _ = self._input_weights()
        return conv(frames, weight, bias, self.padding)

    def project_upsampled(self, coarse: Tensor, skip: Tensor) -> Tensor:
        """:meth:`project` of a decoder's input frames, ``coarse`` upsampled (nearest) to the grid of ``skip`` and
        followed by ``skip`` along C, without building them (:func:`convlstm.upsampled_conv.conv_of_upsampled`)."""
        weight, bias, split = self._input_weights()
        return conv_of_upsampled(coarse, skip, weight, bias, self.padding, split)

    def freeze(self, up_channels: int = 0) -> None:
        """Keep the weights prescaled (:meth:`_prescale`) from now on, after ``.to()`` and ``load_state_dict`` too:
        :meth:`ConvLSTMUNet.frozen`'s cells. Once: a copy of a frozen model is frozen already.

        Parameters
        ----------
        up_channels : int
            For a decoder, how many of its input channels are the coarser level upsampled: the weights of
            :meth:`project_upsampled`'s phases are then made with the prescaled ones, not at every call.
        """
        if self.is_frozen:
            return
        self.is_frozen = True
        self.up_channels = up_channels
        self._prescale()
        self.register_load_state_dict_post_hook(_prescale_again)

    def _prescale(self) -> None:
        """Keep the convolutions' weights with the candidate gate's rows times -2, where the gates go through the
        sigmoid (a CPU, full precision: :func:`convlstm.kernels.tanh_through_sigmoid`); elsewhere none.

        The sigmoid takes the candidate's pre-activation times -2 (``tanh(g) = 1 - 2 sigmoid(-2 g)``), which a step
        otherwise makes with a multiplication into a new tensor. Scaling by a power of two is exact, so the forecasts
        are the same to the bit.
        """
        weight = self.input_conv.weight
        if not tanh_through_sigmoid(weight):
            self.prescaled = None
            return
        with torch.no_grad():
            scale = _gate_scale(4 * self.hidden_dim, weight.dtype).view(-1, 1, 1, 1)
            input_weight = (weight * scale).contiguous(memory_format=torch.channels_last)
            split = None if not self.up_channels else tuple(
                w.contiguous(memory_format=torch.channels_last) for w in split_weights(input_weight, self.up_channels))
            self.prescaled = _Prescaled(input_weight, self.input_conv.bias * scale.view(-1),
                                        (self.hidden_conv.weight * scale).contiguous(memory_format=torch.channels_last),
                                        split)

    def _apply(self, fn: Callable, recurse: bool = True) -> ConvLSTMCell:
        """``nn.Module._apply`` (``.to()``, ``.double()``, ...), and a frozen cell's weights prescaled again from the
        parameters it gives."""
        super()._apply(fn, recurse)
        if self.is_frozen:
            self._prescale()
        return self

    def _uses_prescaled(self) -> bool:
        """Whether a projection or step uses the prescaled weights: where there are some and neither autograd,
        autocast nor compiled gates are at work. None of that changes within a forward, so its projections and steps
        agree."""
        return (self.prescaled is not None and not torch.is_grad_enabled() and not self.gates_compiled
                and not torch.is_autocast_enabled("cpu"))

    def _input_weights(self) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """The input convolution's weight and bias, and its split for the phases where made beforehand: prescaled
        where :meth:`_uses_prescaled`."""
        if self._uses_prescaled():
            prescaled = self.prescaled
            return prescaled.input_weight, prescaled.input_bias, prescaled.split
        return self.input_conv.weight, self.input_conv.bias, None

    def step(self, projected_t: Tensor, state: State | None) -> State:
        """Advance one timestep given an already-projected input.

        Parameters
        ----------
        projected_t : torch.Tensor
            ``[B, 4*hidden_dim, H, W]`` from ``input_conv`` (:meth:`project`); read, not overwritten: consecutive
            windows share their frames' projections (``ConvLSTMUNet.forward_windows``).
        state : tuple of torch.Tensor or None
            ``(h, c)``; None is the zero state: ``hidden_conv(0) = 0`` and ``f * 0 = 0`` are skipped.

        Returns
        -------
        tuple of torch.Tensor
            The next ``(h, c)``, each ``[B, hidden_dim, H, W]``.
        """
        prescaled = self._uses_prescaled()
        hidden_weight = self.prescaled.hidden_weight if prescaled else self.hidden_conv.weight
        # in place where autograd allows it: neither the convolution's nor the sum's backward needs its output
        gates = projected_t if state is None else conv(state[0], hidden_weight, None, self.padding).add_(projected_t)
        c = None if state is None else state[1]
        dtype = hidden_weight.dtype
        if prescaled:
            return _gate_outputs(gates, c, dtype, prescaled=True)
        if self.gates_compiled:
            return _compiled_gates()(gates, c, dtype)
        if torch.is_grad_enabled() and (gates.requires_grad or (c is not None and c.requires_grad)):
            return _Gates.apply(gates, c, dtype)
        return _gate_outputs(gates, c, dtype)

    def forward(self, input_tensor: Tensor, cur_state: State) -> State:
        """Advance one timestep from a raw input (the textbook interface; sequences use :meth:`forward_sequence`).

        Parameters
        ----------
        input_tensor, cur_state : torch.Tensor, tuple of torch.Tensor
            ``[B, input_dim, H, W]``, and ``(h, c)``, each ``[B, hidden_dim, H, W]``.

        Returns
        -------
        tuple of torch.Tensor
            The next ``(h, c)``.
        """
        return self.step(self.project(input_tensor), cur_state)

    def forward_sequence(self, x_seq: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Run the cell over a whole sequence: :meth:`recur` of :meth:`projected_steps`.

        Parameters
        ----------
        x_seq : torch.Tensor
            ``[B, T, input_dim, H, W]``.
        state : tuple of torch.Tensor, optional
            The initial ``(h, c)``; None starts from zeros.

        Returns
        -------
        tuple
            Every hidden state ``[B, T, hidden_dim, H, W]`` (``[T, B, H, W, C]`` memory), and the last ``(h, c)``.
        """
        return self.recur(self.projected_steps(x_seq), state)

    def recur(self, projections: Iterable[Tensor], state: State | None = None) -> tuple[Tensor, State]:
        """Run the recurrence over inputs already projected, e.g. by :meth:`projected_steps`.

        Parameters
        ----------
        projections : iterable of torch.Tensor
            One ``[B, 4*hidden_dim, H, W]`` per step, at least one.
        state : tuple of torch.Tensor, optional
            The initial ``(h, c)``; None starts from zeros.

        Returns
        -------
        tuple
            Every hidden state ``[B, T, hidden_dim, H, W]``, and the last ``(h, c)``.
        """
        outputs = []
        for projected_t in projections:
            state = self.step(projected_t, state)
            outputs.append(state[0])
        if state is None:
            raise DataError("A sequence needs at least one time step.")
        return _stack_time(outputs), state

    def projected_steps(self, x_seq: Tensor, skip: Tensor | None = None) -> Iterator[Tensor]:
        """Projected inputs step by step, computed in as few batched calls as pay (on a CPU, capped in bytes).

        Parameters
        ----------
        x_seq : torch.Tensor
            ``[B, T, input_dim, H, W]``; with ``skip``, a decoder's coarser sequence ``[B, T, C_up, h, w]``.
        skip : torch.Tensor, optional
            ``[B, T, input_dim - C_up, H, W]``: the input is then ``x_seq`` upsampled (nearest) to ``H x W`` and
            followed by ``skip`` along C, projected by :meth:`project_upsampled`.

        Yields
        ------
        torch.Tensor
            ``[B, 4*hidden_dim, H, W]``, one per step.
        """
        b, t, _, h, w = (x_seq if skip is None else skip).shape
        chunk = t
        if x_seq.device.type == "cpu":
            frame_bytes = b * 4 * self.hidden_dim * h * w * x_seq.element_size()
            chunk = max(1, min(t, _CPU_PROJECTION_BYTES // frame_bytes))
        # split, not indexing: backward then joins the gradients once instead of zero-filling a full-size
        # gradient per chunk and per step; and split over the frames' leading axis, so that each step is a
        # contiguous channels-last slice and the joined gradient is already in the layout the convolution wants
        parts = _frames(x_seq).split(chunk * b)
        projections = (map(self.project, parts) if skip is None
                       else map(self.project_upsampled, parts, _frames(skip).split(chunk * b)))
        for projected in projections:
            yield from projected.split(b)


class _Prescaled(NamedTuple):
    """A frozen cell's convolution weights with the candidate gate's rows times -2 (:meth:`ConvLSTMCell._prescale`)."""
    input_weight: Tensor
    input_bias: Tensor
    hidden_weight: Tensor
    # a decoder's input weight split for its phases (convlstm.upsampled_conv.split_weights), which a live model makes
    # at every call; None for an encoder
    split: tuple[Tensor, Tensor] | None


def _prescale_again(cell: ConvLSTMCell, _incompatible_keys: object) -> None:
    """A frozen cell's hook after ``load_state_dict``: the weights prescaled from the parameters loaded."""
    cell._prescale()


# Tensors, not Python numbers: a number operand is made a tensor at every call (4 us, a quarter of a small step's op)
_MINUS_TWO, _ONE = torch.tensor(-2.0), torch.tensor(1.0)


def _gates_forward(gates: Tensor, c: Tensor | None, state_dtype: torch.dtype,
                   keep: bool = False, prescaled: bool = False) -> tuple[Tensor, Tensor, tuple]:
    """The gate arithmetic of a step: ``(h, c_next)`` from the gates' pre-activations and the cell state.

    ``c`` None is the zero state, whose forget term ``f * 0`` is skipped; the new cell state is then made in
    ``state_dtype``, as the zero state would have been: under autocast the cell state stays in full precision
    while the convolutions run in low precision. With ``keep``, also returns what :class:`_Gates` keeps for its
    backward: the sigmoid of the i, f, o gates, the tanh of g and of ``c_next``.

    On a CPU in full precision the tanh go through the sigmoid (:func:`convlstm.kernels.tanh_through_sigmoid`),
    ``tanh(x) = 1 - 2 sigmoid(-2x)``: one sigmoid of the gates scaled per channel gives i, f, o and the candidate,
    and the sums fold into ``addcmul``. That is 8 calls a step, as many as with ``torch.tanh`` but without its two
    slow tanh; each tanh through the sigmoid on its own made 14 (benchmarks/README.md: *The gates through one
    sigmoid*). With ``prescaled`` (a frozen copy's, :meth:`ConvLSTMCell._prescale`) the gates come scaled already,
    and past the first step, where they are a new tensor, the sigmoid overwrites them; from the zero state they are
    the projection, which other windows may share.
    """
    if not prescaled and not tanh_through_sigmoid(gates):
        hd = gates.shape[1] // 4
        # the C++ methods: ``Tensor.split``'s Python wrapper costs as much as a small gate op
        ifo, g = gates.split_with_sizes([3 * hd, hd], dim=1)
        ifo, g = torch.sigmoid(ifo), torch.tanh(g)  # i, f, o in one call
        i, f, o = ifo.chunk(3, dim=1)
        c_next = (i * g).to(state_dtype) if c is None else (f * c).addcmul_(i, g)
        tanh_c = torch.tanh(c_next)
        return o * tanh_c, c_next, (ifo, g, tanh_c)
    if not prescaled:
        s = torch.mul(gates, _gate_scale(gates.shape[1], gates.dtype)).sigmoid_()
    else:
        s = torch.sigmoid(gates) if c is None else gates.sigmoid_()
    i, f, o, s_g = s.chunk(4, dim=1)  # s_g = sigmoid(-2 g): tanh(g) = 1 - 2 s_g
    # f c + i tanh(g); in place past the first step, where the first sum is a new tensor
    c_next = i.addcmul(i, s_g, value=-2) if c is None else torch.addcmul(i, f, c).addcmul_(i, s_g, value=-2)
    u = torch.mul(c_next, _MINUS_TWO).sigmoid_()  # tanh(c_next) = 1 - 2 u
    h = torch.addcmul(o, o, u, value=-2)
    if not keep:
        return h, c_next, ()
    # the tanh values in place: the backward keeps the memory autograd's arithmetic would
    return h, c_next, (s[:, :3 * i.shape[1]], s_g.mul_(_MINUS_TWO).add_(_ONE), u.mul_(_MINUS_TWO).add_(_ONE))


@cache
def _gate_scale(channels: int, dtype: torch.dtype) -> Tensor:
    """``[channels, 1, 1]``: 1 for the i, f, o gates and -2 for the candidate, so that one sigmoid of the scaled
    pre-activations gives the three gates and ``sigmoid(-2 g)``."""
    scale = torch.ones(channels, 1, 1, dtype=dtype)
    scale[3 * channels // 4:] = -2
    return scale


def _gate_outputs(gates: Tensor, c: Tensor | None, state_dtype: torch.dtype, prescaled: bool = False) -> State:
    """``(h, c_next)`` of :func:`_gates_forward`: inference's gates, and what ``torch.compile`` compiles (differentiated
    by autograd)."""
    h, c_next, _ = _gates_forward(gates, c, state_dtype, prescaled=prescaled)
    return h, c_next


@cache
def _compiled_gates() -> Callable[[Tensor, Tensor | None, torch.dtype], State]:
    """:func:`_gate_outputs` compiled, made at first use. Shapes are dynamic: a compiled graph serves every level,
    batch size and grid, and a run compiles a few (from the zero state or not, training or inference), where static
    shapes would compile once for each shape, beyond Dynamo's limit of recompilations, and then fall back to eager
    mode."""
    return torch.compile(_gate_outputs, dynamic=True)


class _Gates(torch.autograd.Function):
    """:func:`_gates_forward` with a backward written out, that fills one gradient of the gates in place.

    Autograd's own backward of the same arithmetic joins the four gates' gradients with two concatenations
    per step (of the sigmoid's chunks, then of the split), each a full copy of the gates; in channels-last
    memory a channel concatenation is a strided copy, and a gate left unused (the forget gate from the zero
    state) gets a zero gradient in the default layout, which the convolutions' backward then copies back.
    """

    @staticmethod
    def forward(ctx, gates: Tensor, c: Tensor | None, state_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        h, c_next, (ifo, g, tanh_c) = _gates_forward(gates, c, state_dtype, keep=True)
        ctx.save_for_backward(ifo, g, c, tanh_c)
        ctx.layout = (gates.shape, gates.dtype, torch.channels_last
                      if gates.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        return h, c_next

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh: Tensor, dc_next: Tensor) -> tuple[Tensor, Tensor | None, None]:
        ifo, g, c, tanh_c = ctx.saved_tensors
        shape, dtype, memory_format = ctx.layout
        d_gates = torch.empty(shape, dtype=dtype, device=g.device, memory_format=memory_format)
        d_i, d_f, d_o, d_g = d_gates.chunk(4, dim=1)
        i, f, o = ifo.chunk(3, dim=1)
        # h = o * tanh(c_next); c_next = f * c + i * g
        d_c = torch.ops.aten.tanh_backward(dh * o, tanh_c).add_(dc_next)
        torch.ops.aten.sigmoid_backward(dh * tanh_c, o, grad_input=d_o)
        torch.ops.aten.sigmoid_backward(d_c * g, i, grad_input=d_i)
        torch.ops.aten.tanh_backward(d_c * i, g, grad_input=d_g)
        if c is None:
            d_f.zero_()
            return d_gates, None, None
        torch.ops.aten.sigmoid_backward(d_c * c, f, grad_input=d_f)
        return d_gates, d_c.mul_(f) if ctx.needs_input_grad[1] else None, None


def _frames(seq: Tensor) -> Tensor:
    """The frames of ``[B, T, C, H, W]`` as ``[T * B, C, H, W]``, time-major.

    The library's sequences are laid out ``[T, B, H, W, C]`` in memory, so the frames of a whole
    sequence, or of any stretch of its timesteps, are a view, not a copy.
    """
    return seq.transpose(0, 1).flatten(0, 1)


def _map_frames(fn: Callable[[Tensor], Tensor], seq: Tensor) -> Tensor:
    """Apply a 4-D spatial op to every frame of ``[B, T, C, H, W]`` in one call."""
    b, t = seq.shape[:2]
    out = fn(_frames(seq))
    return out.reshape(t, b, *out.shape[1:]).transpose(0, 1)


def _window_steps(projected: Tensor, starts: Tensor, window_size: int) -> Iterator[Tensor]:
    """Step ``k`` of the windows starting at ``starts``: ``projected[starts + k]``, from projected frames ``[N, ...]``.

    A generator, so that it holds the only reference to ``projected``: the projection is freed as soon
    as the first level's recurrence has consumed it, not at the end of the forward.
    """
    first, count = int(starts[0]), len(starts)
    if torch.equal(starts, torch.arange(first, first + count, device=starts.device)):
        # consecutive windows (the usual batch): each step's inputs are one slice, a view
        for step in range(window_size):
            yield projected[first + step:first + step + count]
    else:
        for step in range(window_size):
            yield projected[starts + step]


def _channels_last(seq: Tensor) -> Tensor:
    """``[B, T, C, H, W]`` with ``[T, B, H, W, C]`` memory: every frame a channels-last image, time outermost."""
    return seq.permute(1, 0, 3, 4, 2).contiguous().permute(1, 0, 4, 2, 3)


def _stack_time(frames: list[Tensor]) -> Tensor:
    """Stack ``[B, C, H, W]`` channels-last frames into a ``[B, T, C, H, W]`` sequence, laid out as above."""
    return torch.stack([f.permute(0, 2, 3, 1) for f in frames]).permute(1, 0, 4, 2, 3)


class ConvLSTMUNet(nn.Module):
    """U-Net whose encoder and decoder levels are ConvLSTM layers.

    Each encoder level halves the grid (ceil, so odd sizes work); each decoder
    level upsamples to the matching skip level's exact size and fuses it with
    the skip sequence. The last timestep of the top decoder level is mapped to
    ``output_channels`` by a 1x1 convolution followed by ReLU, because
    precipitation is non-negative.

    Parameters
    ----------
    input_channels : int
        Channels of each input frame (``5 × levels + 1`` for the stacked data).
    hidden_channels : sequence of int
        Hidden channels per level, from the full grid down; a single entry gives one ConvLSTM layer, no decoder.
    output_channels : int
        Channels of the forecast.
    kernel_size : int
        Odd kernel size of every ConvLSTM convolution.
    """

    def __init__(
        self,
        input_channels: int,
        hidden_channels: Sequence[int] = (32, 64),
        output_channels: int = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        require_positive_int("input_channels", input_channels)
        require_positive_int("output_channels", output_channels)
        require_odd_kernel("kernel_size", kernel_size)
        hidden = [] if isinstance(hidden_channels, (int, str, bytes)) else list(hidden_channels)
        if not hidden:
            raise ConfigError(f"hidden_channels must list one or more ints, one per level, e.g. (32, 64); "
                              f"got {hidden_channels!r}.", "hidden_channels")
        for idx, ch in enumerate(hidden):
            require_positive_int(f"hidden_channels[{idx}]", ch)

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
        # Weights in the layout of the activations: no conversion on every call.
        self.to(memory_format=torch.channels_last)

    def frozen(self) -> ConvLSTMUNet:
        """A copy to forecast with: the same forecasts (to the bit), sooner on a CPU.

        Its cells keep their weights prescaled (:meth:`ConvLSTMCell._prescale`), which no-grad forecasts on a CPU in
        full precision use; anything else (autograd, autocast, a GPU) takes the parameters, as this model does. The
        prescaled weights are a snapshot of the parameters, so the copy's parameters take no gradient and it refuses
        ``train()``; ``load_state_dict`` makes them again. Every forecast path loads its model frozen
        (``convlstm.forecast.load_forecast_model``).

        Returns
        -------
        ConvLSTMUNet
            A new model in eval mode; this one is left as it is.
        """
        model = copy.deepcopy(self).eval().requires_grad_(False)
        for encoder in model.encoders:
            encoder.freeze()
        for level, decoder in enumerate(model.decoders):  # decoders[k] reads level k + 1 upsampled
            decoder.freeze(up_channels=self.hidden_channels[level + 1])
        return model

    @property
    def cells(self) -> tuple[ConvLSTMCell, ...]:
        """Every ConvLSTM cell, the encoders' then the decoders'."""
        return (*self.encoders, *self.decoders)

    @property
    def is_frozen(self) -> bool:
        """Whether this model is a :meth:`frozen` copy."""
        return self.encoders[0].is_frozen

    def train(self, mode: bool = True) -> ConvLSTMUNet:
        """``nn.Module.train``, refused for a :meth:`frozen` copy, whose prescaled weights would no longer follow
        its parameters."""
        if mode and self.is_frozen:
            raise ModelError("This model is a frozen copy for forecasting (ConvLSTMUNet.frozen, as load_model and "
                             "load_forecast_model give it); train the model it was made from, or resume training "
                             "from the checkpoint with --resume.")
        return super().train(mode)

    def compile_gates(self, enabled: bool = True) -> None:
        """Run every cell's gate arithmetic compiled by ``torch.compile`` from now on (``--compile-gates``).

        A step's gate arithmetic is a dozen elementwise operations; on a GPU each is a kernel launch, and compiled
        they become a few fused kernels, forward and backward. The convolutions stay PyTorch's (cuDNN's), and the
        time loop stays Python: a compiled U-Net would unroll it into one graph per sequence length. The first
        steps take seconds to compile. Measured, the eager arithmetic was faster on a CPU (a training step ran at
        0.85x compiled on a 2-core AMD EPYC) and on an NVIDIA H200 (0.75x on an ERA5 0.25° grid), so it is off by
        default (README: *On a GPU*).

        Parameters
        ----------
        enabled : bool
            False returns to the eager arithmetic.
        """
        for cell in self.cells:
            cell.gates_compiled = enabled

    def forward(self, x: Tensor) -> Tensor:
        """Forecast from a batch of sequences.

        Parameters
        ----------
        x : torch.Tensor
            ``[B, T, input_channels, H, W]``, ``T >= 1``.

        Returns
        -------
        torch.Tensor
            Non-negative ``[B, output_channels, H, W]``.
        """
        if x.dim() != 5 or x.shape[2] != self.input_channels or x.shape[1] < 1:
            raise DataError(f"expected input of shape [B, T, {self.input_channels}, H, W] "
                            f"(batch, time >= 1, channels, height, width), got {list(x.shape)}")
        return self._run(self.encoders[0].projected_steps(_channels_last(x)))

    def forward_windows(self, frames: Tensor, starts: Tensor, window_size: int) -> Tensor:
        """``forward`` of the windows ``frames[s : s + window_size]`` for each ``s`` in ``starts``.

        Sliding windows overlap: consecutive ones share all but one frame. The first level's input
        convolution has no recurrence, so it runs once per distinct frame here instead of once per
        frame of every window; the recurrences still start afresh in each window.

        Parameters
        ----------
        frames : torch.Tensor
            ``[N, input_channels, H, W]``.
        starts : torch.Tensor
            ``[B]`` integers, each in ``0 .. N - window_size``.
        window_size : int
            Frames per window.

        Returns
        -------
        torch.Tensor
            ``[B, output_channels, H, W]``, as ``forward`` gives for the stacked windows.
        """
        require_positive_int("window_size", window_size)
        if frames.dim() != 4 or frames.shape[1] != self.input_channels:
            raise DataError(f"expected frames of shape [N, {self.input_channels}, H, W], got {list(frames.shape)}")
        starts = torch.as_tensor(starts, dtype=torch.long, device=frames.device)
        if starts.dim() != 1 or len(starts) == 0 or starts.min() < 0 or starts.max() + window_size > len(frames):
            raise DataError(f"every window start must lie in 0..{len(frames) - window_size} "
                             f"({len(frames)} frames, windows of {window_size}), got {starts.tolist()}")
        # not bound to a name here: the generator then holds the projection's only reference
        return self._run(_window_steps(
            self.encoders[0].project(frames.contiguous(memory_format=torch.channels_last)), starts, window_size))

    def _run(self, first_projections: Iterable[Tensor]) -> Tensor:
        """The U-Net from the first level's projected inputs (one ``[B, 4*hidden, H, W]`` per step)."""
        seq, (last, _) = self.encoders[0].recur(first_projections)
        skips = []
        for encoder in self.encoders[1:]:
            skips.append(seq)
            seq, (last, _) = encoder.forward_sequence(
                _map_frames(partial(F.max_pool2d, kernel_size=2, ceil_mode=True), seq))
        # Each intermediate is released as soon as it is used (a smaller working set is faster on a CPU): the skips
        # are popped, and a decoder's input, the coarser sequence upsampled beside the skip, is never built.
        for decoder in reversed(self.decoders):
            seq, (last, _) = decoder.recur(decoder.projected_steps(seq, skips.pop()))
        # the last hidden state itself, not the sequence's last step: its gradient then stays channels-last, where
        # a step selected from the sequence gets a gradient zero-filled in the default layout, which every
        # convolution's backward would copy into channels-last
        return F.relu(self.head(last))

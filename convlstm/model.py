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
* ``forward_windows`` forecasts overlapping (sliding) windows from the frames they share, so the
  first level projects each frame once, not once per window it appears in;
* at small batches a step's cost is mostly operator overhead and memory traffic, so a step makes few
  calls, works in place where autograd allows, and intermediates are released as soon as used;
* on an AMD CPU a single sequence's state convolution runs on oneDNN, where PyTorch would pick its
  im2col kernel, whose MKL matrix product is slower there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache, partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convlstm.checks import require_odd_kernel, require_positive_int
from convlstm.errors import ConfigError, DataError

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

    def project_inputs(self, x_seq: Tensor) -> Tensor:
        """Apply the input-to-state convolution to all timesteps in one batched call.

        Parameters
        ----------
        x_seq : torch.Tensor
            ``[B, T, input_dim, H, W]``.

        Returns
        -------
        torch.Tensor
            ``[B, T, 4*hidden_dim, H, W]``, the gates' input terms.
        """
        return _map_frames(self.input_conv, x_seq)

    def step(self, projected_t: Tensor, state: State | None) -> State:
        """Advance one timestep given an already-projected input.

        Parameters
        ----------
        projected_t : torch.Tensor
            ``[B, 4*hidden_dim, H, W]`` from ``input_conv``; may be overwritten.
        state : tuple of torch.Tensor or None
            ``(h, c)``; None is the zero state: ``hidden_conv(0) = 0`` and ``f * 0 = 0`` are skipped.

        Returns
        -------
        tuple of torch.Tensor
            The next ``(h, c)``, each ``[B, hidden_dim, H, W]``.
        """
        hd = self.hidden_dim
        # in place where autograd allows it: neither the convolution's nor the product's backward needs its output
        gates = projected_t if state is None else _state_conv(
            state[0], self.hidden_conv.weight, self.hidden_conv.padding).add_(projected_t)
        # split, not slicing: backward joins the pieces' gradients in one cat instead of zero-filling
        # a full-size gradient per slice
        # (the C++ methods: ``Tensor.split``'s Python wrapper costs as much as a small gate op)
        ifo, g = gates.split_with_sizes([3 * hd, hd], dim=1)
        i, f, o = torch.sigmoid(ifo).chunk(3, dim=1)  # i, f, o in one call
        g = torch.tanh(g)
        if state is None:
            # In the parameters' dtype, as the zero state would have been: under autocast the cell state
            # stays in full precision while the convolutions run in low precision.
            c_next = (i * g).to(self.input_conv.weight.dtype)
        else:
            c_next = (f * state[1]).addcmul_(i, g)
        return o * torch.tanh(c_next), c_next

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
        return self.step(self.input_conv(input_tensor), cur_state)

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

    def projected_steps(self, x_seq: Tensor) -> Iterator[Tensor]:
        """Projected inputs step by step, computed in as few batched calls as pay (on a CPU, capped in bytes).

        Parameters
        ----------
        x_seq : torch.Tensor
            ``[B, T, input_dim, H, W]``.

        Yields
        ------
        torch.Tensor
            ``[B, 4*hidden_dim, H, W]``, one per step.
        """
        b, t, _, h, w = x_seq.shape
        chunk = t
        if x_seq.device.type == "cpu":
            frame_bytes = b * 4 * self.hidden_dim * h * w * x_seq.element_size()
            chunk = max(1, min(t, _CPU_PROJECTION_BYTES // frame_bytes))
        # split and unbind, not indexing: backward then joins the gradients once instead of
        # zero-filling a full-size gradient per chunk and per step.
        for part in x_seq.split(chunk, dim=1):
            yield from self.project_inputs(part).unbind(1)


def _state_conv(h: Tensor, weight: Tensor, padding: tuple[int, ...]) -> Tensor:
    """The state-to-state convolution; for a single sequence on an AMD CPU, by oneDNN.

    PyTorch sends a float32 CPU convolution of a batch of one and under 20480 input values (the state of a
    one-window forecast, 32 x 20 x 20, at every step) to its im2col kernel, whose matrix product is MKL's
    (``use_mkldnn`` in ATen's ``Convolution.cpp``). That is the faster kernel on Intel CPUs; on AMD ones MKL
    runs slower code, and oneDNN's kernel, with the same result, took the one-window forecast from 1.09-1.14x
    to 1.33-1.38x the textbook model on an AMD EPYC (benchmarks/README.md).
    """
    # torch.backends.mkldnn.enabled is asked each time: torch.backends.mkldnn.flags may change it at run time
    if (h.size(0) == 1 and _onednn_beats_im2col() and h.device.type == "cpu"
            and h.dtype == weight.dtype == torch.float32 and torch.backends.mkldnn.enabled):
        return torch.ops.aten.mkldnn_convolution(h, weight, None, padding, (1, 1), (1, 1), 1)
    return F.conv2d(h, weight, None, padding=padding)


@cache
def _onednn_beats_im2col() -> bool:
    """Whether this machine has oneDNN and an AMD CPU (Linux's ``/proc/cpuinfo``; elsewhere, taken as not): asked
    once, not at every step of the time loop."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            return any(line.startswith("vendor_id") and "AuthenticAMD" in line for line in cpuinfo)
    except OSError:
        return False


def _map_frames(fn: Callable[[Tensor], Tensor], seq: Tensor) -> Tensor:
    """Apply a 4-D spatial op to every frame of ``[B, T, C, H, W]`` in one call.

    The library's sequences are laid out ``[T, B, H, W, C]`` in memory, so the frames of a whole
    sequence, or of any stretch of its timesteps, are a view, not a copy.
    """
    frames = seq.transpose(0, 1)
    t, b = frames.shape[:2]
    out = fn(frames.reshape(t * b, *frames.shape[2:]))
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


def _cat_channels(*seqs: Tensor) -> Tensor:
    """Concatenate ``[B, T, C_k, H, W]`` sequences along C, laid out as above."""
    return torch.cat([s.permute(1, 0, 3, 4, 2) for s in seqs], dim=-1).permute(1, 0, 4, 2, 3)


def _upsample_onto(coarse: Tensor, skip: Tensor) -> Tensor:
    """The decoder's input: ``coarse`` upsampled (nearest) to the skip's grid, then the skip, along C."""
    up = _map_frames(partial(F.interpolate, size=skip.shape[-2:], mode="nearest"), coarse)
    return _cat_channels(up, skip)


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
            self.encoders[0].input_conv(frames.contiguous(memory_format=torch.channels_last)), starts, window_size))

    def _run(self, first_projections: Iterable[Tensor]) -> Tensor:
        """The U-Net from the first level's projected inputs (one ``[B, 4*hidden, H, W]`` per step)."""
        seq, _ = self.encoders[0].recur(first_projections)
        skips = []
        for encoder in self.encoders[1:]:
            skips.append(seq)
            seq, _ = encoder.forward_sequence(_map_frames(partial(F.max_pool2d, kernel_size=2, ceil_mode=True), seq))
        # Each intermediate is released as soon as it is used (a smaller working set is faster on a CPU):
        # the skips are popped, and the upsampled sequence lives only until it is concatenated.
        for decoder in reversed(self.decoders):
            seq, _ = decoder.forward_sequence(_upsample_onto(seq, skips.pop()))
        return F.relu(self.head(seq[:, -1]))

"""Why the model's CPU speed against the textbook ConvLSTM U-Net depends on the CPU: the ``bench_model.py``
training step (the 64 x 128 grid) and one-window inference, each as the fast/ref ratio of one run, under the
choices the library makes for a CPU, one changed at a time:

* ``oneDNN off`` - convolutions by PyTorch's own kernels instead of oneDNN's (``torch.backends.mkldnn``), for both
  models;
* ``projection N MiB`` - the cap on the input projection batched over timesteps (``convlstm.model``'s
  ``_CPU_PROJECTION_BYTES``, 32 MiB: glibc's largest mmap threshold);
* ``contiguous`` - the library's activations and weights in PyTorch's default (NCHW) layout instead of channels-last;
* ``state kernel PyTorch's`` - a batch of one (a single sequence's state, at every step) convolved by the kernel
  PyTorch picks (im2col) also on an AMD CPU with oneDNN kernels above AVX2, where the library asks for oneDNN's
  (``convlstm.kernels._onednn_beats_im2col``; the same as shipped elsewhere);
* ``weight gradient channels-last`` / ``weight gradient NCHW`` - training convolutions' weight gradients always
  from the channels-last frames, or from NCHW copies whatever the CPU and frame size (as shipped: NCHW where
  oneDNN is AVX2 at most and frames have 4096 pixels or more, ``convlstm.kernels.conv``);
* ``gates by autograd`` - the cell's gate arithmetic differentiated by autograd instead of the hand-written
  backward (``convlstm.model._Gates``);
* ``decoder input built`` - a decoder's input upsampled and concatenated, then convolved, instead of convolved
  by phases at the coarse grid (``convlstm.upsampled_conv``);
* ``tanh PyTorch's`` - the gates' tanh by ``torch.tanh`` instead of through one sigmoid of all four gates
  (``convlstm.model._gates_forward``);
* ``not frozen`` - inference by the model itself in eval mode instead of its frozen copy, whose weights are
  prescaled for the gates' sigmoid (``ConvLSTMUNet.frozen``, as every forecast path loads a model).

A second table times the choices that are switches on the same model (every variant above but ``oneDNN off``,
which changes the reference too, ``contiguous``, which builds another model, and ``not frozen``, which changes only
inference) alternated step by step with
each other and the reference, for the 64 x 128 and 20 x 20 training steps: on a machine whose speed wanders, as
a shared VM's does, only alternation separates effects of a few per cent.

Run from the repository root::

    python benchmarks/bench_cpu_variants.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
from bench_model import CASES, bench_inference, bench_training, build_models, train_step, training_inputs
from harness import fmt_table, print_header, set_threads, time_interleaved

import convlstm.kernels as kernels_module
import convlstm.model as model_module
import convlstm.upsampled_conv as upsampled_module

TRAIN_CASE = CASES[-1]  # the 64 x 128 grid, the one below target on AMD EPYC


def projection_cap(mib: float) -> contextlib.AbstractContextManager[object]:
    """The input projection batched over at most ``mib`` MiB of timesteps."""
    return mock.patch.object(model_module, "_CPU_PROJECTION_BYTES", int(mib * 2**20))


@contextlib.contextmanager
def contiguous_layout() -> Iterator[None]:
    """The library's model in NCHW memory: sequences laid out ``[B, T, C, H, W]``, weights contiguous."""
    original_init = model_module.ConvLSTMUNet.__init__

    def init(self: model_module.ConvLSTMUNet, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)
        self.to(memory_format=torch.contiguous_format)

    with (mock.patch.multiple(model_module, _channels_last=lambda seq: seq.contiguous(),
                              _stack_time=lambda frames: torch.stack([f.contiguous() for f in frames], dim=1)),
          mock.patch.object(model_module.ConvLSTMUNet, "__init__", init)):
        yield


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "as shipped": contextlib.nullcontext,
    "oneDNN off": lambda: torch.backends.mkldnn.flags(enabled=False),
    "projection 8 MiB": lambda: projection_cap(8),
    "projection 128 MiB": lambda: projection_cap(128),
    "projection unlimited": lambda: projection_cap(2**20),
    "contiguous": contiguous_layout,
    "state kernel PyTorch's": lambda: mock.patch.object(kernels_module, "_onednn_beats_im2col", lambda: False),
    "weight gradient channels-last": lambda: mock.patch.object(kernels_module, "_onednn_avx2_at_most", lambda: False),
    "weight gradient NCHW": lambda: mock.patch.multiple(
        kernels_module, _onednn_avx2_at_most=lambda: True, _PLAIN_WEIGHT_GRAD_PIXELS=0),
    "gates by autograd": lambda: mock.patch.object(model_module._Gates, "apply", model_module._gate_outputs),
    "decoder input built": lambda: mock.patch.object(upsampled_module, "_by_phases", lambda *args: False),
    "tanh PyTorch's": lambda: mock.patch.object(model_module, "tanh_through_sigmoid", lambda x: False),
    "not frozen": lambda: mock.patch.object(model_module.ConvLSTMUNet, "frozen", lambda self: self.eval()),
}


def measure(repeats: int) -> list[list[str]]:
    """One row a variant: training samples/s of both models and their ratio; one-window latency and ratio."""
    rows = []
    for name, variant in VARIANTS.items():
        with variant():
            train = bench_training(TRAIN_CASE, repeats)
            infer = bench_inference({"1 window": 20 * repeats})["1 window"]
        rows.append([name, f"{train.samples_per_s['fast']:.1f}", f"{train.samples_per_s['ref']:.1f}",
                     f"{train.speedup:.2f}x", f"{1e3 * infer['fast_s']:.1f}", f"{1e3 * infer['ref_s']:.1f}",
                     f"{infer['ref_s'] / infer['fast_s']:.2f}x"])
        print(f"  {name}: training {train.speedup:.2f}x, inference {infer['ref_s'] / infer['fast_s']:.2f}x", flush=True)
    return rows


SWITCHES = [name for name in VARIANTS if name not in ("oneDNN off", "contiguous", "not frozen")]


def alternated(repeats: int) -> list[list[str]]:
    """One row a grid and switch: the library's training step with the switch, alternated with every other
    switch and the reference step by step, as the reference's time over the variant's."""
    rows = []
    for case, rounds in ((TRAIN_CASE, repeats), (CASES[0], 12 * repeats)):
        models = build_models(case.hidden)
        x, target = training_inputs(case)
        optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}

        def step(name: str, variant: Callable[[], contextlib.AbstractContextManager[object]]) -> None:
            with variant():
                train_step(models[name], optimizers[name], x, target)

        fns = {name: (lambda variant=VARIANTS[name]: step("fast", variant)) for name in SWITCHES}
        fns["reference"] = lambda: step("ref", contextlib.nullcontext)
        medians = {name: statistics.median(times) for name, times in time_interleaved(fns, rounds).items()}
        for name in SWITCHES:
            rows.append([case.name, name, f"{1e3 * medians[name]:.0f}", f"{1e3 * medians['reference']:.0f}",
                         f"{medians['reference'] / medians[name]:.2f}x"])
        print(f"  {case.name}: " + ", ".join(f"{row[1]} {row[-1]}" for row in rows[-len(SWITCHES):]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="training steps timed per model and variant")
    parser.add_argument("--json", type=Path, help="also write the table to this JSON file")
    args = parser.parse_args(argv)
    set_threads(None)
    info = print_header("ConvLSTMUNet on this CPU: the library's CPU choices, one at a time (fast/ref of one run)")
    headers = ["variant", "train fast/s", "train ref/s", "fast/ref", "1 window fast ms", "ref ms", "ref/fast"]
    rows = measure(args.repeats)
    print()
    print(fmt_table(headers, rows))
    print("\nThe switches alternated step by step (training, median ms), fast/ref = reference ms / variant ms")
    switch_headers = ["grid", "variant", "fast ms", "ref ms", "fast/ref"]
    switch_rows = alternated(args.repeats)
    print()
    print(fmt_table(switch_headers, switch_rows))
    if args.json is not None:
        import json

        args.json.write_text(json.dumps({"machine": info, "headers": headers, "rows": rows,
                                         "alternated": {"headers": switch_headers, "rows": switch_rows}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

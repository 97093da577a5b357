"""The training loop: epochs, validation, early stopping, checkpoints and resume.

It imports no MLflow: after each epoch and each checkpoint it calls its callbacks, and
``convlstm.tracking`` turns those events into MLflow metrics and artifacts. Loss and metrics are
computed on the downstream columns only, so the baseline and the upstream experiment are scored on
the same cells.

The same loop trains in several processes (DDP under ``torchrun``; ``convlstm.training.distributed``): each
process takes its share of every batch (``EpochBatches``) and of the validation windows, gradients are averaged
by DDP with each process's loss weighted by its share (so a step equals one process's step on the whole batch),
losses and scores are summed over the processes before they are divided, rank 0 decides the best epoch and
early stopping and shares them, and only rank 0 writes checkpoints and calls the callbacks. With one process
all of that is the identity.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from convlstm.config import ConvLSTMConfig
from convlstm.data.dataset import WindowBatch, WindowDataset
from convlstm.data.epoch_order import EpochBatches
from convlstm.data.normalizer import ConvLSTMNormalizer
from convlstm.errors import DataError, Interrupted, TrainingDiverged
from convlstm.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint, periodic_name, save_checkpoint
from convlstm.device import amp_dtype
from convlstm.evaluation.scores import ContinuousScores, rmse_mae_from_totals
from convlstm.forecast import forward_downstream
from convlstm.interrupt import SignalCatcher, catching_signals
from convlstm.training.distributed import DistributedContext
from convlstm.training.loss import WeightedPrecipitationLoss
from convlstm.training.progress import PROGRESS_INTERVAL_S, ProgressLog

logger = logging.getLogger(__name__)

EVAL_BATCH_FACTOR = 4  # evaluation batches hold this many times the training batch size


def _numpy_batch(windows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """A DataLoader worker's batch as numpy arrays, which reach the trainer pickled through the worker's pipe.

    Tensors would be handed over as shared memory, whose file descriptors torch passes through a Unix
    socket made under ``$TMPDIR`` (its ``file_system`` strategy too, through ``torch_shm_manager``): where
    that path is longer than the 107 characters a socket name may have, the hand-over fails inside a
    background thread and training waits forever for the batch (it did under pytest's deep temporary
    folders). The copy through the pipe costs far less than reading the windows.
    """
    return np.stack([window.numpy() for window, _ in windows]), np.stack([target.numpy() for _, target in windows])


class TrainingCallback:
    """Receives the trainer's events; the default does nothing, subclasses override what they need."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Called after validation and after the epoch's checkpoints are written.

        Parameters
        ----------
        epoch : int
            The epoch just finished, from 1.
        metrics : dict of str to float
            ``train_loss``, ``val_loss``, ``val_rmse_mm``, ``val_mae_mm``, ``lr`` and timings (s).
        """

    def on_checkpoint(self, path: Path) -> None:
        """Called after a checkpoint file has been written (atomically).

        Parameters
        ----------
        path : pathlib.Path
            The file: ``best_model.pt``, ``checkpoint_epoch_N.pt`` or ``last.pt``.
        """


@dataclass
class TrainingState:
    """What survives an interruption: saved in every checkpoint, restored on resume.

    Parameters
    ----------
    epoch : int
        Epochs completed.
    global_step : int
        Optimizer steps taken.
    best_val_loss : float
        Lowest validation loss so far (normalized space; inf before the first epoch).
    best_epoch : int
        The epoch that reached it (0: none yet).
    epochs_without_improvement : int
        Epochs since then, counted against ``early_stopping_patience``.
    stopped_early : bool
        Whether early stopping ended training.
    history : list of dict
        One row per epoch: ``epoch`` and the metrics the callbacks received.
    """

    epoch: int = 0
    global_step: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)

    def ended(self, num_epochs: int) -> bool:
        """Whether training has nothing left to do: ``num_epochs`` reached, or stopped early (the loop's
        condition, and what a resume without more epochs is refused for).

        Parameters
        ----------
        num_epochs : int
            The epochs the run trains in all.

        Returns
        -------
        bool
            True once the run's training ended.
        """
        return self.epoch >= num_epochs or self.stopped_early


class Trainer:
    """Trains a model on windows whose targets are the downstream columns of the model's output.

    Parameters
    ----------
    model : torch.nn.Module
        The network, moved to ``device``.
    config : ConvLSTMConfig
        Optimizer, schedule, loss, AMP, accumulation, clipping, early stopping and checkpoint settings.
    normalizer : ConvLSTMNormalizer
        Fitted statistics: the loss threshold and the mm scores are derived with them.
    downstream_columns : slice
        Columns of the model's output that hold the target region.
    device : torch.device
        Where the model trains.
    output_dir : pathlib.Path
        Where checkpoints are written.
    metadata : dict
        Plain values stored in every checkpoint (configs, normalizer, input grid, ...).
    callbacks : sequence of TrainingCallback
        Receive the epoch and checkpoint events.
    num_workers : int
        DataLoader worker processes.
    pin_memory : bool
        Pinned host memory for the batches (used on CUDA only).
    progress_interval_s : float
        Seconds between progress lines within an epoch when no progress bar is shown (not a terminal).
    distributed : DistributedContext, optional
        This process among the training processes (default: the process group joined, else one process).
        ``config.batch_size`` is each step's batch over all processes.

    Attributes
    ----------
    state : TrainingState
        Progress so far, fresh or restored.
    amp_dtype : torch.dtype or None
        The autocast dtype, None in full precision.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: ConvLSTMConfig,
        normalizer: ConvLSTMNormalizer,
        downstream_columns: slice,
        device: torch.device,
        output_dir: Path,
        metadata: dict[str, Any],
        callbacks: Sequence[TrainingCallback] = (),
        num_workers: int = 0,
        pin_memory: bool = False,
        progress_interval_s: float = PROGRESS_INTERVAL_S,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.dist = distributed or DistributedContext.current()
        self.model = model.to(device)
        if config.compile_gates:
            self.model.compile_gates()
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = config.cudnn_benchmark
        self.train_model = self.dist.wrap(self.model)  # what the training steps call: DDP with several processes
        self.config = config
        self.normalizer = normalizer
        self.downstream_columns = downstream_columns
        self.device = device
        self.output_dir = Path(output_dir)
        self.metadata = metadata  # configs, normalizer, regions ...: stored in every checkpoint
        self.callbacks = list(callbacks)
        self.num_workers = num_workers
        self.pin_memory = pin_memory and device.type == "cuda"
        self.progress_interval_s = progress_interval_s
        self.criterion = WeightedPrecipitationLoss(
            float(normalizer.normalize_precipitation(config.high_precip_threshold)), config.high_precip_weight
        )
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=config.num_epochs, eta_min=config.learning_rate * 0.01
        )
        self.amp_dtype = amp_dtype(device) if config.use_amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.state = TrainingState()

    # ---- public API -------------------------------------------------------------------------
    def fit(self, train_data: Dataset, val_data: WindowDataset) -> TrainingState:
        """Train until ``num_epochs`` or early stopping, from the current state (fresh or resumed).

        SIGTERM or SIGINT stops it at the next safe point (after an optimizer step, or at the end of an
        epoch) with ``last.pt`` written; a second signal stops at once.

        Parameters
        ----------
        train_data : torch.utils.data.Dataset
            Training windows (shuffled each epoch with the seeded generator).
        val_data : WindowDataset
            Validation windows, scored after every epoch.

        Returns
        -------
        TrainingState
            The final state (also ``self.state``).

        Raises
        ------
        TrainingDiverged
            When the training or validation loss stops being finite; ``last.pt`` keeps the last good epoch.
        Interrupted
            On SIGTERM or SIGINT, once ``last.pt`` is written.
        """
        if len(train_data) == 0:  # type: ignore[arg-type]
            raise DataError("The training split has no windows; use more data or a smaller --window-size.")
        loader = self._loader(train_data, shuffle=True)
        with catching_signals(defer=True) as stop:
            while not self.state.ended(self.config.num_epochs):
                self._fit_epoch(loader, val_data, stop)
        return self.state

    @property
    def process_batch_size(self) -> int:
        """The most windows a process takes of a batch: ``batch_size`` split among the processes."""
        return -(-self.config.batch_size // self.dist.world_size)

    def _fit_epoch(self, loader: DataLoader, val_data: WindowDataset, stop: SignalCatcher) -> None:
        """Train, validate, checkpoint and report one epoch; stop after it if a signal came."""
        epoch = self.state.epoch + 1
        started = time.perf_counter()
        train_loss, step_time = self._train_epoch(loader, epoch, stop)
        validation_started = time.perf_counter()
        scores = self.evaluate(val_data)
        validation_time = time.perf_counter() - validation_started
        if len(val_data) and not math.isfinite(scores["loss"]):  # type: ignore[arg-type]
            # The last optimizer step of the epoch can leave non-finite weights that no training batch
            # saw; refuse them here, before they overwrite last.pt (the "last good checkpoint").
            raise TrainingDiverged(
                f"The validation loss became {scores['loss']} at epoch {epoch} (training loss {train_loss:.4g}). "
                f"Training stopped; the last good checkpoint is {self.output_dir / LAST_NAME} (if an epoch completed). "
                "Lower --learning-rate or --gradient-clip-norm, or check the data for extreme values."
            )
        metrics = {
            "train_loss": train_loss,
            "val_loss": scores["loss"],
            "val_rmse_mm": scores["rmse_mm"],
            "val_mae_mm": scores["mae_mm"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - started,
            # where an epoch goes: the model's own steps, and validation (the rest is loading and upkeep)
            "train_step_time_s": step_time,
            "val_time_s": validation_time,
        }
        self.scheduler.step()
        self._end_epoch(epoch, metrics)
        logger.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_rmse %.3f mm  val_mae %.3f mm  (%.1f s)",
            epoch, self.config.num_epochs, train_loss, metrics["val_loss"], metrics["val_rmse_mm"],
            metrics["val_mae_mm"], metrics["epoch_time_s"],
        )
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, metrics)
        signum = self._agreed_stop(stop)
        if signum:
            self._stop(signum, f"after epoch {epoch}/{self.config.num_epochs}", save=False)

    @torch.no_grad()
    def evaluate(self, data: WindowDataset) -> dict[str, float]:
        """Weighted loss (normalized space) and RMSE / MAE in mm on the downstream cells.

        Each of several processes scores a consecutive part of the windows; the sums are added up over the
        processes before they are divided, so every process returns the scores of all the windows.

        Parameters
        ----------
        data : WindowDataset
            The windows to score, ``EVAL_BATCH_FACTOR`` times a process's training batch at a time.

        Returns
        -------
        dict of str to float
            ``loss``, ``rmse_mm`` and ``mae_mm``; NaN without windows.
        """
        self.model.eval()
        loss_sum, n_windows, scores = 0.0, 0, ContinuousScores()
        # No activations are kept for backward here, so a larger batch fits in a training batch's memory.
        for inputs, targets in data.window_batches(EVAL_BATCH_FACTOR * self.process_batch_size, self.dist.part):
            inputs, targets = self._to_device(inputs, targets)
            prediction = self._forward(inputs)
            loss_sum += float(self.criterion(prediction, targets)) * len(targets)
            scores.accumulate(*(self.normalizer.denormalize_precipitation(x).float().cpu().numpy() for x in (prediction, targets)))
            n_windows += len(targets)
        loss_sum, n_windows, *errors = self.dist.sum([loss_sum, n_windows, *scores.error_totals()])
        return {"loss": loss_sum / n_windows if n_windows else math.nan, **rmse_mae_from_totals(errors)}

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume or to rebuild the model, as plain values and tensors.

        Returns
        -------
        dict
            The metadata, model / optimizer / scheduler / scaler state, RNG states and ``training_state``.
        """
        return {
            **self.metadata,
            "model_state_dict": self.model.state_dict(),
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "generator_state": self.generator.get_state(),
            "torch_rng_state": torch.get_rng_state(),
            "training_state": vars(self.state).copy(),
        }

    def restore(self, path: Path, state: dict[str, Any] | None = None) -> None:
        """Continue from a checkpoint written by this trainer (weights, optimizer, schedule, RNG, history).

        Parameters
        ----------
        path : pathlib.Path
            A checkpoint a trainer wrote (``last.pt`` to continue where a run stopped).
        state : dict, optional
            Its content, already read (by rank 0, and shared with the other processes, which may not see the file).
        """
        state = load_checkpoint(path, map_location=self.device) if state is None else state
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        self.scaler.load_state_dict(state["scaler_state_dict"])
        self.generator.set_state(state["generator_state"].cpu())
        torch.set_rng_state(state["torch_rng_state"].cpu())
        self.state = TrainingState(**state["training_state"])
        logger.info("Resumed from %s at epoch %d (best val_loss %.4f at epoch %d).", path, self.state.epoch,
                    self.state.best_val_loss, self.state.best_epoch)

    def extend(self) -> None:
        """Let a restored run train on to ``config.num_epochs``, a total asked for on resume.

        The cosine schedule is stretched over the new total (the learning rate continues as if that had
        been the plan from the start, instead of staying at its floor), and a run that had stopped early
        gets a fresh patience window: with the old count it would stop again after one epoch.
        """
        scheduler, total = self.scheduler, self.config.num_epochs
        scheduler.T_max = total
        progress = (1 + math.cos(math.pi * scheduler.last_epoch / total)) / 2
        for group, base in zip(self.optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * progress
        if self.state.stopped_early:
            self.state.stopped_early, self.state.epochs_without_improvement = False, 0
        logger.info("Continuing to %d epochs (learning rate now %.3g).", total, self.optimizer.param_groups[0]["lr"])

    # ---- internals --------------------------------------------------------------------------
    def _loader(self, data: Dataset, shuffle: bool) -> DataLoader:
        """This process's share of each batch of ``data``, each epoch in an order drawn in this process from the
        seeded generator (the same with worker processes or without, after a resume, and in every one of several
        processes; see ``EpochBatches``). Worker processes, when asked for, live as long as the loader and each
        reads whole batches. By default there are none, from memory as from a store: in the epoch's order a
        store's windows come from cached blocks, and a worker's hand-over of a batch through its pipe
        (``_numpy_batch``) cost more than reading it (0.25°: 18 against 60–80 windows/s)."""
        batches = EpochBatches(len(data), self.config.batch_size,  # type: ignore[arg-type]
                               self.generator if shuffle else None, *self.dist.part)
        return DataLoader(
            data, batch_sampler=batches, num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=bool(self.num_workers), collate_fn=_numpy_batch if self.num_workers else None,
        )

    def _to_device(self, inputs: torch.Tensor | WindowBatch | np.ndarray, targets: torch.Tensor | np.ndarray
                   ) -> tuple[torch.Tensor | WindowBatch, torch.Tensor]:
        if isinstance(inputs, np.ndarray):  # from a DataLoader worker (see _numpy_batch)
            inputs, targets = torch.from_numpy(inputs), torch.from_numpy(targets)
        non_blocking = self.pin_memory
        return inputs.to(self.device, non_blocking=non_blocking), targets.to(self.device, non_blocking=non_blocking)

    def _forward(self, inputs: torch.Tensor | WindowBatch, module: torch.nn.Module | None = None) -> torch.Tensor:
        return forward_downstream(module or self.model, inputs, self.downstream_columns, self.amp_dtype)

    def _agree(self, loss_value: float, counts: bool, stop: SignalCatcher) -> tuple[bool, int | None]:
        """Whether the loss of any process stopped being finite, and the stop signal any process received: asked
        of all processes at each step before the backward pass, so that all raise, or stop, at the same step
        (one process stopping alone would leave the others waiting in the next collective)."""
        diverged, sigterm, sigint = self.dist.sum([counts and not math.isfinite(loss_value),
                                                   stop.received == signal.SIGTERM, stop.received == signal.SIGINT])
        return diverged > 0, signal.SIGINT if sigint else signal.SIGTERM if sigterm else None

    def _agreed_stop(self, stop: SignalCatcher) -> int | None:
        """The stop signal any process received (this process's own with one process)."""
        if not self.dist.is_distributed:
            return stop.received
        return self._agree(0.0, False, stop)[1]

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager[None]:
        """DDP's averaging of gradients is needed at the last batch of an optimizer step only (accumulation)."""
        if sync or not self.dist.is_distributed:
            return contextlib.nullcontext()
        return self.train_model.no_sync()  # type: ignore[operator]

    def _train_epoch(self, loader: DataLoader, epoch: int, stop: SignalCatcher) -> tuple[float, float]:
        """One pass of optimizer steps over ``loader``: the mean loss, and the seconds spent in the steps
        themselves (forward, backward, optimizer; not loading batches). A progress bar on a terminal,
        else a progress line every ``progress_interval_s``; stops after the step during which a signal came."""
        self.model.train()
        accumulate = self.config.gradient_accumulation_steps
        batches: EpochBatches = loader.batch_sampler  # type: ignore[assignment]
        distributed, world = self.dist.is_distributed, self.dist.world_size
        total, count, step_time = 0.0, 0, 0.0
        self.optimizer.zero_grad(set_to_none=True)
        label = f"epoch {epoch}/{self.config.num_epochs}"
        # One iterator, made here: tqdm.auto would call iter(loader) twice, and a loader with worker processes
        # starts reading (and draws the epoch's order) on each call. Progress is rank 0's to show.
        progress = tqdm(iter(loader), total=len(loader), desc=label, leave=False, dynamic_ncols=True,
                        disable=None if self.dist.is_main else True)
        progress_log = (ProgressLog(label, len(loader), self.progress_interval_s)
                        if progress.disable and self.dist.is_main else None)
        for batch_index, (inputs, targets) in enumerate(progress):
            inputs, targets = self._to_device(inputs, targets)
            mine, batch_windows = batches.shares(batch_index)  # with one process: len(targets), twice
            steps = (batch_index + 1) % accumulate == 0 or batch_index + 1 == len(loader)
            step_started = time.perf_counter()
            with self._gradient_sync(steps):
                loss = self.criterion(self._forward(inputs, self.train_model), targets)
                loss_value = float(loss.detach())
                diverged, agreed_stop = self._agree(loss_value, mine > 0, stop)
                if diverged:
                    value = loss_value if not math.isfinite(loss_value) else "non-finite (in another training process)"
                    raise TrainingDiverged(
                        f"The loss became {value} at epoch {epoch}, batch {batch_index + 1}. Training stopped; the "
                        f"last good checkpoint is {self.output_dir / LAST_NAME} (if an epoch completed). Lower "
                        "--learning-rate or --gradient-clip-norm, or check the data for extreme values."
                    )
                if distributed:  # DDP averages over the processes: weigh each by its share, for the whole batch's mean
                    loss = loss * (mine * world / batch_windows)
                self.scaler.scale(loss / accumulate).backward()
            if steps:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.gradient_clip_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.global_step += 1
                signum = agreed_stop if distributed else stop.received
                if signum:
                    self._stop(signum, f"in epoch {epoch}, batch {batch_index + 1}/{len(loader)}", save=True)
            # Each step ends in float(loss), which waits for the device, so on a GPU too the sum is right
            # to within the last step's backward.
            step_time += time.perf_counter() - step_started
            total += loss_value * mine
            count += mine
            progress.set_postfix(loss=f"{total / max(count, 1):.4f}")
            if progress_log is not None:
                progress_log.update(batch_index + 1, count, total / max(count, 1))
        total, count = self.dist.sum([total, count])
        return total / count, step_time

    def _stop(self, signum: int, where: str, save: bool) -> NoReturn:
        """Write ``last.pt`` (unless the epoch just wrote it) and raise :class:`Interrupted` saying how to go on.

        Mid-epoch, ``last.pt`` keeps the weights after the step just taken with the state of the last
        completed epoch: a resume starts that epoch over from those weights, so no step is lost.
        """
        path = self.output_dir / LAST_NAME
        error = Interrupted(signum, f"training stopped {where}; {path} holds the progress (epoch {self.state.epoch} "
                                    f"completed). Continue with: convlstm-train --resume {path}")
        logger.warning("%s received %s: %s.", error.signal_name, where,
                       f"writing {path}" if save and self.dist.is_main else "stopping")
        if save and self.dist.is_main:
            save_checkpoint(path, self.checkpoint_state())
            for callback in self.callbacks:
                callback.on_checkpoint(path)
        raise error

    def _end_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Update the state and write checkpoints: best (on improvement), periodic, and last.

        Rank 0 decides (best epoch, early stopping) and shares its state, so every process goes on alike; only rank
        0 writes the checkpoints.
        """
        state, improved = self.state, False
        if self.dist.is_main:
            improved = self._update_state(state, epoch, metrics)
        improved, self.state = self.dist.share((improved, state))
        if not self.dist.is_main:
            return
        periodic = epoch % self.config.checkpoint_frequency == 0
        names = ([BEST_NAME] if improved else []) + ([periodic_name(epoch)] if periodic else [])
        checkpoint = self.checkpoint_state()
        for name in [*names, LAST_NAME]:  # last.pt last: once it says epoch N, the others for N exist
            path = save_checkpoint(self.output_dir / name, checkpoint)
            for callback in self.callbacks:
                callback.on_checkpoint(path)

    def _update_state(self, state: TrainingState, epoch: int, metrics: dict[str, float]) -> bool:
        """Record the epoch in ``state``: best validation loss, patience, early stopping; whether it improved."""
        state.epoch = epoch
        state.history.append({"epoch": epoch, **metrics})
        improved = metrics["val_loss"] < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_epoch, state.epochs_without_improvement = metrics["val_loss"], epoch, 0
        else:
            state.epochs_without_improvement += 1
        patience = self.config.early_stopping_patience
        if patience and state.epochs_without_improvement >= patience:
            state.stopped_early = True
            logger.info("Early stopping: val_loss has not improved for %d epochs (best %.4f at epoch %d).",
                        patience, state.best_val_loss, state.best_epoch)
        return improved

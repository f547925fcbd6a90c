"""What a training run carries: the state every epoch needs (`TrainState`), the progress
a checkpoint saves (`Progress`), the stop request a signal sets, an epoch's running sums,
and what an epoch and a whole run return."""

from __future__ import annotations

import dataclasses
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from train import distributed, tracking
from train.config import TrainConfig
from train.formats import BadImages


class StopRequest:
    """Set from the SIGTERM handler (spot interruption, StopTrainingJob); the loop
    checks it between steps, saves a checkpoint and returns."""

    def __init__(self):
        self._event = threading.Event()
        self.signal_name = ""

    def set(self, name: str) -> None:
        self.signal_name = name
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def agreed(self, process: distributed.Process) -> bool:
        """Whether any rank was asked to stop, decided together so that all ranks leave
        at the same step (one collective per call)."""
        return self.vote(process, False)[0]

    def vote(self, process: distributed.Process, out_of_data: bool) -> tuple[bool, bool]:
        """(stop, out of data) on every rank when true on any, in one collective: a step
        is taken by all ranks or by none. A rank whose stream ran short (undecodable
        images at the end of its Pipe-mode share) ends the epoch for every rank instead
        of leaving the others waiting in a collective it never joins."""
        stop, exhausted = distributed.any_ranks((self.requested, out_of_data), process)
        if stop and not self.requested:
            self.set("a stop request on another rank")
        return stop, exhausted


@dataclass
class Progress:
    """Everything the epoch loop carries from one epoch to the next (and a checkpoint
    carries across restarts, as plain data: see `to_dict`)."""

    epoch: int = 0  # epochs completed
    step: int = 0  # steps already done in epoch `epoch` (mid-epoch resume)
    best_value: float | None = None
    best_epoch: int = -1
    best_weights: dict | None = None
    epochs_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)
    # (loss sum, correct, seen) of epoch `epoch` up to `step`, over all ranks, so a
    # mid-epoch resume reports train_loss/train_acc over the whole epoch.
    partial: tuple[float, float, float] | None = None

    def record(self, row: dict, value: float, model: nn.Module) -> None:
        """A finished epoch: its metrics, and its weights if `value` (higher is better)
        is the best so far."""
        self.history.append(row)
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_epoch = value, row["epoch"]
            self.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        self.epoch, self.step, self.partial = row["epoch"], 0, None

    def to_dict(self) -> dict:
        # Shallow on purpose: dataclasses.asdict would deep-copy the best weights.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict) -> Progress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class TrainState:
    """What train_one_epoch, evaluate and the checkpoints need, built once by fit."""

    config: TrainConfig
    process: distributed.Process
    stop: StopRequest
    model: nn.Module  # DDP-wrapped when distributed: run steps through it
    model_without_ddp: nn.Module  # the same weights: save and load through it
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast_dtype: torch.dtype | None
    classes: list[str]
    checkpoint_dir: Path
    train_images: int
    tracker: tracking.Tracker
    bad_images: BadImages  # undecodable images this rank's loaders skipped (train.formats)
    multi_label: bool = False
    progress: Progress = field(default_factory=Progress)

    def autocast(self) -> AbstractContextManager:
        dtype = self.autocast_dtype
        return torch.autocast(self.process.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def to_device(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.process.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.process.device, non_blocking=True)


class EpochSums:
    """This rank's running train loss sum, correct and seen counts in one epoch."""

    def __init__(self, process: distributed.Process, carried: tuple[float, float, float] | None = None):
        # Sums carried over a restart are global: only rank 0 adds them, once.
        loss, correct, seen = carried if carried and process.is_main else (0.0, 0, 0)
        self.loss = torch.tensor(float(loss), dtype=torch.float64, device=process.device)
        self.correct = torch.tensor(int(correct), dtype=torch.int64, device=process.device)
        self.seen = torch.tensor(int(seen), dtype=torch.int64, device=process.device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss += loss.detach().to(torch.float64) * targets.shape[0]
        if targets.ndim == 2:  # multi-label (0/1 per class): every class's decision right
            self.correct += ((logits > 0) == (targets > 0.5)).all(1).sum()
        else:
            self.correct += (logits.argmax(1) == targets).sum()
        self.seen += targets.shape[0]

    def reduced(self, process: distributed.Process) -> tuple[float, float, float]:
        """The sums over all ranks (a collective: every rank calls it)."""
        totals = torch.stack([self.loss, self.correct.to(torch.float64), self.seen.to(torch.float64)])
        distributed.all_reduce_sum(totals, process)
        loss, correct, seen = totals.tolist()
        return loss, correct, seen


@dataclass
class EpochResult:
    step: int  # steps done in the epoch
    metrics: dict = field(default_factory=dict)  # train_loss, train_acc (a finished epoch)
    stopped: bool = False  # left early: every rank agreed to stop
    checkpoint: str | None = None  # saved on the way out (rank 0)


@dataclass
class Outcome:
    stopped: bool
    epoch: int
    step: int
    checkpoint: str | None = None
    final: dict | None = None

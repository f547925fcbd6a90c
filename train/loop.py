"""One training run, read top to bottom in `fit`: data, model, loss, optimizer,
schedule, resume, the epoch loop, then the final evaluation and outputs (as in
torchvision's references/classification/train.py). `TrainState` carries what an epoch
needs, so `train_one_epoch` and `evaluate` take it and a loader. Every process of a DDP
job runs `fit`; only the main process writes files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from container import ConfigError, SageMakerPaths, read_input_data_config
from train import checkpoint, data, distributed, metrics, plots, tracking
from train.config import TrainConfig
from train.progress import ProgressBar
from train.reporting import format_metrics
from vision import models, precision, presets
from vision.artifact import WEIGHTS_FILE, ModelSpec

log = logging.getLogger(__name__)


def fit(config: TrainConfig, paths: SageMakerPaths, info: distributed.DistInfo, stop: StopRequest) -> Outcome:
    dirs = OutputDirs.resolve(config, paths)
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    # --- data ---
    dataset = load_data(config, paths)
    loaders = make_loaders(config, dataset, info)

    # --- model (DDP-wrapped for the steps; saved and loaded unwrapped, keys without "module.") ---
    model_without_ddp = make_model(config, len(dataset.classes), pretrained_weights_path(config, paths), info.device)
    model = model_without_ddp
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)

    # --- loss, optimizer, schedule ---
    optimizer = make_optimizer(config, model_without_ddp)
    autocast_dtype = amp_dtype(config, info.device)
    if info.is_main:
        chosen = "off" if autocast_dtype is None else str(autocast_dtype).removeprefix("torch.")
        log.info("mixed precision: %s (amp=%s on %s)", chosen, config.amp, info.device)
    state = TrainState(
        config=config,
        info=info,
        stop=stop,
        model=model,
        model_without_ddp=model_without_ddp,
        criterion=make_criterion(config, dataset, info.device),
        optimizer=optimizer,
        scheduler=make_scheduler(config, optimizer, loaders.steps_per_epoch),
        scaler=torch.amp.GradScaler(info.device.type, enabled=autocast_dtype == torch.float16),
        autocast_dtype=autocast_dtype,
        classes=dataset.classes,
        checkpoint_dir=dirs.checkpoints,
        train_images=len(dataset.train),
        tracker=tracking.start(config, info, paths),  # MLflow / TensorBoard, main process only
    )

    # --- resume ---
    if config.resume:
        resume(state)
    progress = state.progress

    # --- epochs ---
    for epoch in range(progress.epoch, config.epochs):
        start = time.perf_counter()
        # Per-(seed, epoch, rank) RNG: augmentation is reproducible across restarts.
        # (Tuples of ints hash the same in every process; no two ranks or epochs share.)
        torch.manual_seed(hash((config.seed, epoch, info.rank)) & 0x7FFF_FFFF_FFFF_FFFF)
        loaders.train.sampler.set_epoch(epoch, skip=progress.step * config.batch_size)
        trained = train_one_epoch(state, loaders.train, epoch)
        if trained.stopped:  # every rank agreed to stop mid-epoch; a checkpoint is saved
            return Outcome(True, epoch, trained.step, trained.checkpoint)
        val_loss, confusion = evaluate(state, loaders.valid)
        row = epoch_row(epoch, trained.metrics, val_loss, metrics.summarize(confusion, dataset.classes), optimizer, start)
        report_epoch(state, row)
        progress.record(row, objective_value(config, row), model_without_ddp)
        saved = save_checkpoint(state, epoch + 1, 0)
        if stop.agreed(info):
            return Outcome(True, epoch + 1, 0, saved)
        if should_stop_early(config, progress, info):
            break

    # --- final evaluation with the best weights, outputs ---
    model_without_ddp.load_state_dict(progress.best_weights)
    final_split = "valid" if loaders.test is None else "test"
    final_loss, final_confusion = evaluate(state, loaders.valid if loaders.test is None else loaders.test)
    final = {**metrics.summarize(final_confusion, dataset.classes), "loss": final_loss}
    if info.is_main:
        report_final(config, progress, final_split, final)
        write_outputs(config, dataset, progress, final_split, final, final_confusion, dirs, state.tracker.summary())
        state.tracker.finish({"split": final_split, **final}, dirs.output, dirs.model)
    # Other ranks wait here until the main process has written the model: SageMaker
    # local mode stops every container as soon as the first one exits.
    distributed.barrier(info)
    return Outcome(False, progress.epoch, 0, final={"split": final_split, **final})


# --- what the epoch loop carries ----------------------------------------------------


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

    def agreed(self, info: distributed.DistInfo) -> bool:
        """Whether any rank was asked to stop, decided together so that all ranks leave
        at the same step (one collective per call)."""
        if distributed.any_rank(self.requested, info):
            if not self.requested:
                self.set("a stop request on another rank")
            return True
        return False


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
    """What train_one_epoch and evaluate need, built once by fit."""

    config: TrainConfig
    info: distributed.DistInfo
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
    progress: Progress = field(default_factory=Progress)

    def autocast(self) -> AbstractContextManager:
        dtype = self.autocast_dtype
        return torch.autocast(self.info.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def to_device(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.info.device, non_blocking=True)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.info.device, non_blocking=True)


class EpochSums:
    """This rank's running train loss sum, correct and seen counts in one epoch."""

    def __init__(self, info: distributed.DistInfo, carried: tuple[float, float, float] | None = None):
        # Sums carried over a restart are global: only rank 0 adds them, once.
        loss, correct, seen = carried if carried and info.is_main else (0.0, 0, 0)
        self.loss = torch.tensor(float(loss), dtype=torch.float64, device=info.device)
        self.correct = torch.tensor(int(correct), dtype=torch.int64, device=info.device)
        self.seen = torch.tensor(int(seen), dtype=torch.int64, device=info.device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss += loss.detach().to(torch.float64) * targets.shape[0]
        self.correct += (logits.argmax(1) == targets).sum()
        self.seen += targets.shape[0]

    def reduced(self, info: distributed.DistInfo) -> tuple[float, float, float]:
        """The sums over all ranks (a collective: every rank calls it)."""
        totals = torch.stack([self.loss, self.correct.to(torch.float64), self.seen.to(torch.float64)])
        distributed.all_reduce_sum(totals, info)
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


# --- one epoch ------------------------------------------------------------------------


def train_one_epoch(state: TrainState, loader: DataLoader, epoch: int) -> EpochResult:
    config, info = state.config, state.info
    state.model.train()
    step = state.progress.step  # > 0 when resuming mid-epoch
    sums = EpochSums(info, state.progress.partial if step else None)
    steps = step + len(loader)
    window_start, window_images = time.perf_counter(), 0
    # A terminal (docker run -t on EC2) gets a progress bar; logs keep a line per event.
    bar = ProgressBar.for_terminal(f"epoch {epoch + 1}", steps, step) if info.is_main else None
    for images, targets in loader:
        if state.stop.agreed(info):
            if bar is not None:
                bar.close()
            return EpochResult(step, stopped=True, checkpoint=save_checkpoint(state, epoch, step, sums.reduced(info)))
        images, targets = state.to_device(images, targets)
        with state.autocast():
            logits = state.model(images)
            loss = state.criterion(logits, targets)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        step += 1
        sums.add(loss, logits, targets)
        window_images += targets.shape[0]
        if info.is_main and (step % config.log_interval == 0 or step == steps):
            rate = window_images * info.world_size / max(time.perf_counter() - window_start, 1e-9)
            line = format_metrics({"epoch": epoch + 1, "step": f"{step}/{steps}"}, {"step_loss": loss.item(), "images_per_s": rate})
            if bar is not None:
                bar.note(line, step)
            else:
                log.info(line)
            window_start, window_images = time.perf_counter(), 0
        if bar is not None:
            bar.update(step)
        if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and step < steps:
            save_checkpoint(state, epoch, step, sums.reduced(info))
    if bar is not None:
        bar.close()
    loss, correct, seen = sums.reduced(info)
    return EpochResult(step, {"train_loss": loss / max(1.0, seen), "train_acc": correct / max(1.0, seen)})


@torch.inference_mode()
def evaluate(state: TrainState, loader: DataLoader) -> tuple[float, torch.Tensor]:
    """Loss and confusion matrix over the whole split, summed across ranks."""
    state.model.eval()
    device, num_classes = state.info.device, len(state.classes)
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for images, targets in loader:
        images, targets = state.to_device(images, targets)
        with state.autocast():
            logits = state.model(images)
        # Plain cross-entropy (no smoothing or class weights): comparable across runs.
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").to(torch.float64)
        metrics.update_confusion(confusion, logits, targets)
    distributed.all_reduce_sum(confusion, state.info)
    distributed.all_reduce_sum(loss_sum, state.info)
    return loss_sum.item() / max(1, int(confusion.sum())), confusion.cpu()


def epoch_row(epoch: int, train_metrics: dict, val_loss: float, summary: dict, optimizer, start: float) -> dict:
    return {
        "epoch": epoch + 1,
        **train_metrics,
        "val_loss": val_loss,
        "val_acc": summary["acc"],
        "val_macro_f1": summary["macro_f1"],
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_time_s": time.perf_counter() - start,
        "val_per_class": summary["per_class"],  # precision/recall/F1/support per class
    }


def report_epoch(state: TrainState, row: dict) -> None:
    """One finished epoch's metrics, once per epoch on every rank (the main process
    reports). The single place where per-epoch metrics leave the loop: the log line
    SageMaker's metric definitions parse, and any other metrics sink."""
    if state.info.is_main:
        keys = ("train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "epoch_time_s")
        log.info(format_metrics({"epoch": row["epoch"]}, {k: row[k] for k in keys}))
    state.tracker.log_epoch(row, state.train_images)


def objective_value(config: TrainConfig, row: dict) -> float:
    # Higher is better for every objective: negate the loss.
    value = row[config.objective]
    return -value if config.objective == "val_loss" else value


def should_stop_early(config: TrainConfig, progress: Progress, info: distributed.DistInfo) -> bool:
    if not config.early_stopping_patience or progress.epochs_without_improvement < config.early_stopping_patience:
        return False
    if info.is_main:
        log.info(
            "early stopping: %s has not improved for %d epochs (best at epoch %d)",
            config.objective,
            progress.epochs_without_improvement,
            progress.best_epoch,
        )
    return True


def report_final(config: TrainConfig, progress: Progress, final_split: str, final: dict) -> None:
    # SageMaker tuning scores a job by the *last* value of its objective metric:
    # repeat the best epoch's validation metrics so that value is the saved model's.
    best_row = next(row for row in progress.history if row["epoch"] == progress.best_epoch)
    log.info(format_metrics({"best_epoch": progress.best_epoch}, {k: best_row[k] for k in ("val_loss", "val_acc", "val_macro_f1")}))
    if final_split == "test":
        log.info(format_metrics({}, {"test_loss": final["loss"], "test_acc": final["acc"], "test_macro_f1": final["macro_f1"]}))


# --- checkpoints ------------------------------------------------------------------------


def save_checkpoint(state: TrainState, epoch: int, step: int, partial: tuple[float, float, float] | None = None) -> str | None:
    """Rank 0 writes everything a restart needs, as plain data (see train.checkpoint);
    `partial` is the epoch's sums so far when stopping mid-epoch."""
    if not state.info.is_main:
        return None
    progress = dataclasses.replace(state.progress, epoch=epoch, step=step, partial=partial)
    snapshot = {
        "arch": state.config.arch,
        "classes": list(state.classes),
        "model": state.model_without_ddp.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "progress": progress.to_dict(),
        "config": state.config.to_dict(),
    }
    return str(checkpoint.save_checkpoint(snapshot, state.checkpoint_dir, epoch, step, state.config.keep_checkpoints))


def resume(state: TrainState) -> None:
    """Continue from the newest checkpoint of this run, if any: rank 0 reads it (only
    the master host has the checkpoint folder) and every rank gets the same state."""
    info = state.info
    found = checkpoint.load_latest(state.checkpoint_dir, state.config.arch, state.classes) if info.is_main else None
    found = distributed.broadcast_from_main(found, info)
    if found is None:
        return
    state.model_without_ddp.load_state_dict(found["model"])
    state.optimizer.load_state_dict(found["optimizer"])
    state.scheduler.load_state_dict(found["scheduler"])
    state.scaler.load_state_dict(found["scaler"])
    state.progress = Progress.from_dict(found["progress"])
    if info.is_main:
        log.info("resumed at epoch %d step %d from %s", state.progress.epoch + 1, state.progress.step, found["path"])


# --- building blocks --------------------------------------------------------------------


@dataclass(frozen=True)
class OutputDirs:
    model: Path
    output: Path
    checkpoints: Path

    @classmethod
    def resolve(cls, config: TrainConfig, paths: SageMakerPaths) -> OutputDirs:
        """Flags win; the defaults are the /opt/ml contract's."""
        return cls(
            Path(config.model_dir) if config.model_dir else paths.model_dir,
            Path(config.output_data_dir) if config.output_data_dir else paths.output_data_dir,
            Path(config.checkpoint_dir) if config.checkpoint_dir else paths.checkpoint_dir,
        )


@dataclass
class Loaders:
    train: DataLoader
    valid: DataLoader
    test: DataLoader | None
    steps_per_epoch: int  # of a whole epoch, before any mid-epoch skip


def make_loaders(config: TrainConfig, dataset: Data, info: distributed.DistInfo) -> Loaders:
    """Each rank's shard of every split: training shuffled and padded so all ranks take
    the same number of steps; evaluation unpadded, so every image counts once."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = config.num_workers if config.num_workers >= 0 else data.default_num_workers(local_processes)
    pin = info.device.type == "cuda"

    def loader(split, shuffle: bool) -> DataLoader:
        sampler = data.ShardSampler(len(split), info.rank, info.world_size, config.seed, shuffle=shuffle, pad=shuffle)
        return data.make_loader(split, sampler, config.batch_size, workers, pin)

    train = loader(dataset.train, shuffle=True)
    test = loader(dataset.test, shuffle=False) if dataset.test is not None else None
    return Loaders(train, loader(dataset.valid, shuffle=False), test, math.ceil(len(train.sampler) / config.batch_size))


def make_model(config: TrainConfig, num_classes: int, weights_path: Path | None, device: torch.device) -> nn.Module:
    model = models.build_model(config.arch, num_classes, weights_path)
    if config.freeze_backbone:
        models.freeze_backbone(model)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def make_criterion(config: TrainConfig, dataset: Data, device: torch.device) -> nn.Module:
    class_weight = None
    if config.class_weighted_loss:
        num_classes = len(dataset.classes)
        counts = torch.bincount(torch.tensor([label for _, label in dataset.train.samples]), minlength=num_classes).float()
        class_weight = (counts.sum() / (num_classes * counts.clamp(min=1))).to(device)
    return nn.CrossEntropyLoss(weight=class_weight, label_smoothing=config.label_smoothing)


@dataclass
class Data:
    classes: list[str]
    train: data.ImageSamples
    valid: data.ImageSamples
    test: data.ImageSamples | None
    bad_files: list[str]


def load_data(config: TrainConfig, paths: SageMakerPaths) -> Data:
    channels = read_input_data_config(paths)
    splits = data.find_split_dirs(channels, config.train_dir, config.valid_dir, config.test_dir)
    classes, train_samples, train_report = data.scan_image_folder(splits.train)
    bad = list(train_report.bad)
    if splits.valid is not None:
        _, valid_samples, report = data.scan_image_folder(splits.valid, classes)
        bad += report.bad
    else:
        train_samples, valid_samples = data.holdout_split(train_samples, config.val_fraction, config.seed)
        log.info("no validation split found: holding out %.0f%% of %s", 100 * config.val_fraction, splits.train)
    test_samples = None
    if splits.test is not None:
        _, test_samples, report = data.scan_image_folder(splits.test, classes)
        bad += report.bad
    if len(classes) < 2:
        raise ConfigError(f"{splits.train} has {len(classes)} class folder(s); classification needs at least 2")
    if not valid_samples:
        raise ConfigError("the validation split is empty: add images to valid/ or raise val_fraction")
    total = len(train_samples) + len(valid_samples) + len(test_samples or []) + len(bad)
    if bad:
        log.warning("skipped %d unreadable or non-image files, e.g. %s", len(bad), bad[:3])
        if len(bad) / total > config.max_bad_fraction:
            raise ConfigError(
                f"{len(bad)} of {total} files ({100 * len(bad) / total:.1f}%) are not readable images, more than "
                f"max_bad_fraction={config.max_bad_fraction}; first: {bad[:3]}"
            )
    mean, std = presets.IMAGENET_MEAN, presets.IMAGENET_STD
    train_tf = presets.train_transform(config.image_size, mean, std)
    eval_tf = presets.eval_transform(config.image_size, None, mean, std)
    log.info(
        "data: %d classes, %d train / %d valid / %s test images from %s",
        len(classes),
        len(train_samples),
        len(valid_samples),
        len(test_samples) if test_samples else "no",
        splits.train,
    )
    return Data(
        classes,
        data.ImageSamples(train_samples, train_tf),
        data.ImageSamples(valid_samples, eval_tf),
        data.ImageSamples(test_samples, eval_tf) if test_samples else None,
        bad,
    )


def pretrained_weights_path(config: TrainConfig, paths: SageMakerPaths) -> Path | None:
    if config.pretrained_weights:
        return Path(config.pretrained_weights)
    channel = paths.channel_dir("pretrained")
    if not channel.is_dir():
        return None
    files = sorted(p for p in channel.rglob("*") if p.suffix in (".pth", ".pt"))
    if len(files) != 1:
        raise ConfigError(f"the 'pretrained' channel must hold exactly one .pth/.pt file, found {[p.name for p in files]}")
    return files[0]


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off":
        return None
    if config.amp == "auto" and device.type != "cuda":
        # bf16 only where the CPU runs it natively (AVX-512 BF16 or AMX): 1.83x img/s at
        # equal test accuracy measured there (docs/benchmarks.md); emulated, it is slower.
        return torch.bfloat16 if precision.cpu_has_native_bf16() else None
    if config.amp == "fp16":
        return torch.float16
    # including_emulation=False: a T4 (g4dn) or V100 "supports" bf16 by emulation, slowly.
    if config.amp == "bf16" or torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16  # auto on a GPU without bf16 (T4, V100)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """Per-step multiplier: linear warm-up from lr/10, then cosine to 0, step decay or flat."""
    warmup = config.warmup_epochs * steps_per_epoch
    total = config.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        if config.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if config.scheduler == "step":
            return config.gamma ** ((step // steps_per_epoch) // config.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def write_outputs(config, dataset: Data, progress: Progress, final_split, final, confusion, dirs: OutputDirs, tracking_info=None) -> None:
    model_dir, output_dir = dirs.model, dirs.output
    model_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_save(progress.best_weights, model_dir / WEIGHTS_FILE)

    spec = ModelSpec(
        arch=config.arch,
        classes=tuple(dataset.classes),
        image_size=config.image_size,
        resize_size=presets.eval_resize_size(config.image_size),
        mean=presets.IMAGENET_MEAN,
        std=presets.IMAGENET_STD,
        versions={"torch": torch.__version__, "torchvision": torchvision.__version__},
    )
    spec.save(model_dir)
    report = {
        "objective": config.objective,
        "best_epoch": progress.best_epoch,
        "epochs": progress.history,
        "final": {"split": final_split, **final},
        "data": {
            "classes": dataset.classes,
            "train_images": len(dataset.train),
            "valid_images": len(dataset.valid),
            "test_images": len(dataset.test) if dataset.test else 0,
            "skipped_files": len(dataset.bad_files),
            "skipped_examples": dataset.bad_files[:20],
        },
        "config": config.to_dict(),
        "tracking": tracking_info or {},  # e.g. the MLflow run id
    }
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "classification_report.txt").write_text(
        f"{final_split} split, best epoch {progress.best_epoch} by {config.objective}\n\n" + metrics.per_class_report(final)
    )
    plots.plot_confusion(
        confusion,
        dataset.classes,
        output_dir / "confusion_matrix.png",
        f"confusion matrix ({final_split}, best epoch {progress.best_epoch})",
    )
    plots.plot_learning_curves(progress.history, output_dir / "learning_curves.png")
    log.info(
        "wrote model to %s and metrics/plots to %s (best epoch %d, %s macro-F1 %.4f)",
        model_dir,
        output_dir,
        progress.best_epoch,
        final_split,
        final["macro_f1"],
    )

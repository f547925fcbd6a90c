"""One training run, read top to bottom: data, model, loss, optimizer, schedule,
resume, the epoch loop, then the final evaluation and outputs (as in torchvision's
references/classification/train.py). Every process of a DDP job runs `fit`; only the
main process writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from container import ConfigError, SageMakerPaths, read_input_data_config
from train import data, distributed, metrics, models, plots, presets, tracking
from train.artifact import WEIGHTS_FILE, ModelSpec
from train.checkpoint import atomic_save, load_latest, save_checkpoint
from train.config import TrainConfig
from train.progress import ProgressBar
from train.reporting import format_metrics

log = logging.getLogger(__name__)


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
    carries across restarts)."""

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


class EpochSums:
    """This rank's running train loss sum, correct and seen counts in one epoch."""

    def __init__(self, info: distributed.DistInfo, carried: tuple[float, float, float] | None = None):
        # Sums carried over a restart are global: only rank 0 adds them, once.
        loss, correct, seen = carried if carried and info.is_main else (0.0, 0, 0)
        self.loss = torch.tensor(float(loss), dtype=torch.float64, device=info.device)
        self.correct = torch.tensor(int(correct), dtype=torch.int64, device=info.device)
        self.seen = torch.tensor(int(seen), dtype=torch.int64, device=info.device)

    def reduced(self, info: distributed.DistInfo) -> tuple[float, float, float]:
        """The sums over all ranks (a collective: every rank calls it)."""
        totals = torch.stack([self.loss, self.correct.to(torch.float64), self.seen.to(torch.float64)])
        distributed.all_reduce_sum(totals, info)
        loss, correct, seen = totals.tolist()
        return loss, correct, seen


@dataclass
class Outcome:
    stopped: bool
    epoch: int
    step: int
    checkpoint: str | None = None
    final: dict | None = None


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
    if config.amp == "off" or (config.amp == "auto" and device.type != "cuda"):
        return None
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


def train_one_epoch(
    model, criterion, optimizer, scheduler, scaler, loader, config, info, epoch, start_step, stop, autocast_dtype, on_step, sums=None
):
    model.train()
    device = info.device
    sums = sums or EpochSums(info)
    steps = start_step + len(loader)
    window_start, window_images = time.perf_counter(), 0
    step = start_step
    bar = ProgressBar.for_terminal(f"epoch {epoch + 1}", steps, start_step) if info.is_main else None
    for images, targets in loader:
        if stop.agreed(info):
            break
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(images)
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        sums.loss += loss.detach().to(torch.float64) * targets.shape[0]
        sums.correct += (logits.argmax(1) == targets).sum()
        sums.seen += targets.shape[0]
        window_images += targets.shape[0]
        if info.is_main and (step % config.log_interval == 0 or step == steps):
            elapsed = time.perf_counter() - window_start
            rate = window_images * info.world_size / max(elapsed, 1e-9)
            line = format_metrics({"epoch": epoch + 1, "step": f"{step}/{steps}"}, {"step_loss": loss.item(), "images_per_s": rate})
            if bar is not None:
                bar.note(line, step)
            else:
                log.info(line)
            window_start, window_images = time.perf_counter(), 0
        if bar is not None:
            bar.update(step)
        on_step(step)
    if bar is not None:
        bar.close()
    loss, correct, seen = sums.reduced(info)
    n = max(1.0, seen)
    return {"train_loss": loss / n, "train_acc": correct / n}, step


@torch.inference_mode()
def evaluate(model, criterion, loader, num_classes, info, autocast_dtype, channels_last):
    """Loss and confusion matrix over the whole split, summed across ranks."""
    model.eval()
    device = info.device
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(images)
        loss_sum += criterion(logits.float(), targets).to(torch.float64) * targets.shape[0]
        metrics.update_confusion(confusion, logits, targets)
    distributed.all_reduce_sum(confusion, info)
    distributed.all_reduce_sum(loss_sum, info)
    count = max(1, int(confusion.sum()))
    return loss_sum.item() / count, confusion.cpu()


def objective_value(config: TrainConfig, row: dict) -> float:
    # Higher is better for every objective: negate the loss.
    value = row[config.objective]
    return -value if config.objective == "val_loss" else value


def fit(config: TrainConfig, paths: SageMakerPaths, info: distributed.DistInfo, stop: StopRequest) -> Outcome:
    model_dir = Path(config.model_dir) if config.model_dir else paths.model_dir
    output_dir = Path(config.output_data_dir) if config.output_data_dir else paths.output_data_dir
    checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else paths.checkpoint_dir
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    # --- data ---
    dataset = load_data(config, paths)
    num_classes = len(dataset.classes)
    workers = config.num_workers if config.num_workers >= 0 else data.default_num_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    pin = info.device.type == "cuda"
    train_sampler = data.ShardSampler(len(dataset.train), info.rank, info.world_size, config.seed, shuffle=True, pad=True)
    train_loader = data.make_loader(dataset.train, train_sampler, config.batch_size, workers, pin)
    valid_loader = data.make_loader(
        dataset.valid,
        data.ShardSampler(len(dataset.valid), info.rank, info.world_size, config.seed, False, False),
        config.batch_size,
        workers,
        pin,
    )
    steps_per_epoch = len(train_sampler) // config.batch_size + bool(len(train_sampler) % config.batch_size)

    # --- model ---
    model = models.build_model(config.arch, num_classes, pretrained_weights_path(config, paths))
    if config.freeze_backbone:
        models.freeze_backbone(model)
    model.to(info.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    model_without_ddp = model
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None)

    # --- loss, optimizer, schedule ---
    class_weight = None
    if config.class_weighted_loss:
        counts = torch.bincount(torch.tensor([label for _, label in dataset.train.samples]), minlength=num_classes).float()
        class_weight = (counts.sum() / (num_classes * counts.clamp(min=1))).to(info.device)
    criterion = nn.CrossEntropyLoss(weight=class_weight, label_smoothing=config.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss()
    optimizer = make_optimizer(config, model_without_ddp)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    autocast_dtype = amp_dtype(config, info.device)
    scaler = torch.amp.GradScaler(info.device.type, enabled=autocast_dtype == torch.float16)

    # --- resume ---
    progress = Progress()
    state = distributed.broadcast_from_main(load_latest(checkpoint_dir) if config.resume and info.is_main else None, info)
    if state is not None:
        if state["classes"] != dataset.classes:
            raise ConfigError(
                f"checkpoint {state['path']} was trained on classes {state['classes'][:5]}..., not this data's; clear {checkpoint_dir} or set resume=false"
            )
        model_without_ddp.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        progress = state["progress"]
        if info.is_main:
            log.info("resumed at epoch %d step %d from %s", progress.epoch + 1, progress.step, state["path"])
        del state

    def checkpoint(epoch: int, step: int, partial=None) -> str | None:
        if not info.is_main:
            return None
        snapshot = {
            "model": model_without_ddp.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "progress": Progress(
                epoch,
                step,
                progress.best_value,
                progress.best_epoch,
                progress.best_weights,
                progress.epochs_without_improvement,
                progress.history,
                partial,
            ),
            "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
            "classes": dataset.classes,
            "config": config.to_dict(),
        }
        return str(save_checkpoint(snapshot, checkpoint_dir, epoch, step, config.keep_checkpoints))

    tracker = tracking.start(config, info, paths)  # MLflow / TensorBoard, main process only

    # --- epochs ---
    for epoch in range(progress.epoch, config.epochs):
        start = time.perf_counter()
        # Per-(seed, epoch, rank) RNG: augmentation is reproducible across restarts.
        # (Tuples of ints hash the same in every process; no two ranks or epochs share.)
        torch.manual_seed(hash((config.seed, epoch, info.rank)) & 0x7FFF_FFFF_FFFF_FFFF)
        train_sampler.set_epoch(epoch, skip=progress.step * config.batch_size)

        sums = EpochSums(info, getattr(progress, "partial", None) if progress.step else None)

        def on_step(step, epoch=epoch, sums=sums):
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and step < steps_per_epoch:
                checkpoint(epoch, step, sums.reduced(info))

        train_row, step = train_one_epoch(
            model,
            criterion,
            optimizer,
            scheduler,
            scaler,
            train_loader,
            config,
            info,
            epoch,
            progress.step,
            stop,
            autocast_dtype,
            on_step,
            sums,
        )
        if step < steps_per_epoch:  # left early: every rank agreed to stop
            saved = checkpoint(epoch, step, sums.reduced(info))
            return Outcome(True, epoch, step, saved)
        progress.step, progress.partial = 0, None
        val_loss, confusion = evaluate(model, eval_criterion, valid_loader, num_classes, info, autocast_dtype, config.channels_last)
        summary = metrics.summarize(confusion, dataset.classes)
        row = {
            "epoch": epoch + 1,
            **train_row,
            "val_loss": val_loss,
            "val_acc": summary["acc"],
            "val_macro_f1": summary["macro_f1"],
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - start,
            "val_per_class": summary["per_class"],  # precision/recall/F1/support per class
        }
        progress.history.append(row)
        tracker.log_epoch(row, len(dataset.train))
        if info.is_main:
            log.info(
                format_metrics(
                    {"epoch": epoch + 1},
                    {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "epoch_time_s")},
                )
            )
        value = objective_value(config, row)
        if progress.best_value is None or value > progress.best_value:
            progress.best_value, progress.best_epoch = value, epoch + 1
            progress.best_weights = {k: v.detach().cpu().clone() for k, v in model_without_ddp.state_dict().items()}
            progress.epochs_without_improvement = 0
        else:
            progress.epochs_without_improvement += 1
        progress.epoch = epoch + 1
        saved = checkpoint(epoch + 1, 0)
        if stop.agreed(info):
            return Outcome(True, epoch + 1, 0, saved)
        if config.early_stopping_patience and progress.epochs_without_improvement >= config.early_stopping_patience:
            if info.is_main:
                log.info(
                    "early stopping: %s has not improved for %d epochs (best at epoch %d)",
                    config.objective,
                    progress.epochs_without_improvement,
                    progress.best_epoch,
                )
            break

    # SageMaker tuning scores a job by the *last* value of its objective metric:
    # repeat the best epoch's validation metrics so that value is the saved model's.
    best_row = next(row for row in progress.history if row["epoch"] == progress.best_epoch)
    if info.is_main:
        log.info(format_metrics({"best_epoch": progress.best_epoch}, {k: best_row[k] for k in ("val_loss", "val_acc", "val_macro_f1")}))

    # --- final evaluation with the best weights ---
    model_without_ddp.load_state_dict(progress.best_weights)
    if dataset.test is not None:
        final_split, final_set = "test", dataset.test
    else:
        final_split, final_set = "valid", dataset.valid
    final_loader = data.make_loader(
        final_set, data.ShardSampler(len(final_set), info.rank, info.world_size, config.seed, False, False), config.batch_size, workers, pin
    )
    final_loss, final_confusion = evaluate(model, eval_criterion, final_loader, num_classes, info, autocast_dtype, config.channels_last)
    final = metrics.summarize(final_confusion, dataset.classes)
    final["loss"] = final_loss
    if info.is_main:
        if final_split == "test":
            log.info(format_metrics({}, {"test_loss": final_loss, "test_acc": final["acc"], "test_macro_f1": final["macro_f1"]}))
        write_outputs(config, dataset, progress, final_split, final, final_confusion, model_dir, output_dir, tracker.summary())
        tracker.finish({"split": final_split, **final}, output_dir, model_dir)
    # Other ranks wait here until the main process has written the model: SageMaker
    # local mode stops every container as soon as the first one exits.
    distributed.barrier(info)
    return Outcome(False, progress.epoch, 0, final={"split": final_split, **final})


def write_outputs(
    config, dataset: Data, progress: Progress, final_split, final, confusion, model_dir: Path, output_dir: Path, tracking_info=None
) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(progress.best_weights, model_dir / WEIGHTS_FILE)

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

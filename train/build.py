"""Building a run from its config, one part per function, in the order fit calls them:
the split datasets, each rank's loaders, the model (from pretrained weights if given),
the loss, the mixed-precision dtype, the optimizer and the LR schedule."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from container import ConfigError, SageMakerPaths, read_input_data_config
from train import data, distributed
from train.config import TrainConfig
from vision import models, precision, presets

log = logging.getLogger(__name__)


@dataclass
class SplitDatasets:
    """The run's data: the class names (sorted training folders) and one dataset per split."""

    classes: list[str]
    train: data.ImageSamples
    valid: data.ImageSamples
    test: data.ImageSamples | None
    bad_files: list[str]  # skipped: not images, or unreadable


def load_datasets(config: TrainConfig, paths: SageMakerPaths) -> SplitDatasets:
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
    check_bad_files(config, bad, len(train_samples) + len(valid_samples) + len(test_samples or []) + len(bad))
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
    return SplitDatasets(
        classes,
        data.ImageSamples(train_samples, train_tf),
        data.ImageSamples(valid_samples, eval_tf),
        data.ImageSamples(test_samples, eval_tf) if test_samples else None,
        bad,
    )


def check_bad_files(config: TrainConfig, bad: list[str], total: int) -> None:
    """Warn about skipped files; fail when more than max_bad_fraction of them are bad."""
    if not bad:
        return
    log.warning("skipped %d unreadable or non-image files, e.g. %s", len(bad), bad[:3])
    if len(bad) / total > config.max_bad_fraction:
        raise ConfigError(
            f"{len(bad)} of {total} files ({100 * len(bad) / total:.1f}%) are not readable images, more than "
            f"max_bad_fraction={config.max_bad_fraction}; first: {bad[:3]}"
        )


@dataclass
class Loaders:
    train: DataLoader
    valid: DataLoader
    test: DataLoader | None
    steps_per_epoch: int  # of a whole epoch, before any mid-epoch skip


def make_loaders(config: TrainConfig, datasets: SplitDatasets, process: distributed.Process) -> Loaders:
    """Each rank's shard of every split: training shuffled and padded so all ranks take
    the same number of steps; evaluation unpadded, so every image counts once."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = config.num_workers if config.num_workers >= 0 else data.default_num_workers(local_processes)
    pin = process.device.type == "cuda"

    def loader(split, shuffle: bool) -> DataLoader:
        sampler = data.ShardSampler(len(split), process.rank, process.world_size, config.seed, shuffle=shuffle, pad=shuffle)
        return data.make_loader(split, sampler, config.batch_size, workers, pin)

    train = loader(datasets.train, shuffle=True)
    test = loader(datasets.test, shuffle=False) if datasets.test is not None else None
    return Loaders(train, loader(datasets.valid, shuffle=False), test, math.ceil(len(train.sampler) / config.batch_size))


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


def make_model(config: TrainConfig, num_classes: int, weights_path: Path | None, device: torch.device) -> nn.Module:
    model = models.build_model(config.arch, num_classes, weights_path)
    if config.freeze_backbone:
        models.freeze_backbone(model)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def make_criterion(config: TrainConfig, datasets: SplitDatasets, device: torch.device) -> nn.Module:
    class_weight = None
    if config.class_weighted_loss:
        num_classes = len(datasets.classes)
        counts = torch.bincount(torch.tensor([label for _, label in datasets.train.samples]), minlength=num_classes).float()
        class_weight = (counts.sum() / (num_classes * counts.clamp(min=1))).to(device)
    return nn.CrossEntropyLoss(weight=class_weight, label_smoothing=config.label_smoothing)


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


def report_precision(config: TrainConfig, autocast_dtype: torch.dtype | None, process: distributed.Process) -> None:
    if process.is_main:
        chosen = "off" if autocast_dtype is None else str(autocast_dtype).removeprefix("torch.")
        log.info("mixed precision: %s (amp=%s on %s)", chosen, config.amp, process.device)


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

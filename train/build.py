"""Building a run from its config, one part per function, in the order fit calls them
(after the data, train.datasets, and before the loaders, train.loaders): the model (from
pretrained weights if given), the loss, the mixed-precision dtype, the optimizer and the
LR schedule."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from container import SageMakerPaths
from train import distributed
from train.config import TrainConfig
from train.datasets import RunData
from vision import models, precision

log = logging.getLogger(__name__)


def pretrained_weights_path(config: TrainConfig, paths: SageMakerPaths) -> Path | None:
    """The flag's file, else the weights file in the 'pretrained' channel (.safetensors
    first, then .pth/.pt/.bin), else None: train from scratch."""
    if config.pretrained_weights:
        return Path(config.pretrained_weights)
    return models.find_pretrained_file(paths.channel_dir("pretrained"))


def make_model(config: TrainConfig, num_classes: int, weights_path: Path | None, device: torch.device) -> nn.Module:
    model = models.build_model(config.arch, num_classes, weights_path)
    if config.freeze_backbone:
        models.freeze_backbone(model)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def wrap_ddp(model: nn.Module, process: distributed.Process) -> nn.Module:
    """The model the steps run through: DDP-wrapped when there is more than one process."""
    if not process.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[process.local_rank] if process.device.type == "cuda" else None)


class MultiLabelLoss(nn.Module):
    """Binary cross-entropy per class on the logits (mean over images and classes);
    label smoothing pulls each 0/1 target towards 0.5."""

    def __init__(self, pos_weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.label_smoothing:
            targets = targets * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=self.pos_weight)


def make_criterion(config: TrainConfig, run_data: RunData, device: torch.device) -> nn.Module:
    """Cross-entropy (single-label) or per-class BCE (multi-label); class_weighted_loss
    weights each class by its inverse frequency (multi-label: positives by negatives/positives)."""
    counts = torch.tensor(run_data.class_counts(), dtype=torch.float32)
    if run_data.multi_label:
        pos_weight = ((run_data.train_census.images - counts) / counts.clamp(min=1)).clamp(min=1e-3).to(device)
        return MultiLabelLoss(pos_weight if config.class_weighted_loss else None, config.label_smoothing)
    class_weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device) if config.class_weighted_loss else None
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

"""One training run, read top to bottom in `fit`: data, model, loss, optimizer,
schedule, resume, the epoch loop, then the final evaluation and outputs (as in
torchvision's references/classification/train.py). The parts come from train.build,
what the loop carries from train.state, checkpoints from train.checkpoint and the
files a run leaves from train.outputs. Every process of a DDP job runs `fit`; only
the main process writes files.
"""

from __future__ import annotations

import logging
import random
import time

import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from container import SageMakerPaths
from train import build, calibration, distributed, metrics, outputs, tracking
from train.checkpoint import resume, save_checkpoint
from train.config import TrainConfig
from train.progress import ProgressBar
from train.reporting import format_metrics
from train.state import EpochResult, EpochSums, Outcome, Progress, StopRequest, TrainState

log = logging.getLogger(__name__)

Scores = tuple[torch.Tensor, torch.Tensor]  # a split's logits (N x classes, float32) and targets (N), on the main process


def fit(config: TrainConfig, paths: SageMakerPaths, process: distributed.Process, stop: StopRequest) -> Outcome:
    dirs = outputs.OutputDirs.resolve(config, paths)
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    # --- data ---
    datasets = build.load_datasets(config, paths)
    loaders = build.make_loaders(config, datasets, process)

    # --- model (DDP-wrapped for the steps; saved and loaded unwrapped, keys without "module.") ---
    weights = build.pretrained_weights_path(config, paths)
    model = model_without_ddp = build.make_model(config, len(datasets.classes), weights, process.device)
    if process.distributed:
        model = DistributedDataParallel(model, device_ids=[process.local_rank] if process.device.type == "cuda" else None)

    # --- loss, optimizer, schedule, precision; resume ---
    optimizer = build.make_optimizer(config, model_without_ddp)
    autocast_dtype = build.amp_dtype(config, process.device)
    build.report_precision(config, autocast_dtype, process)
    state = TrainState(
        config=config,
        process=process,
        stop=stop,
        model=model,
        model_without_ddp=model_without_ddp,
        criterion=build.make_criterion(config, datasets, process.device),
        optimizer=optimizer,
        scheduler=build.make_scheduler(config, optimizer, loaders.steps_per_epoch),
        scaler=torch.amp.GradScaler(process.device.type, enabled=autocast_dtype == torch.float16),
        autocast_dtype=autocast_dtype,
        classes=datasets.classes,
        checkpoint_dir=dirs.checkpoints,
        train_images=len(datasets.train),
        tracker=tracking.start(config, process, paths),  # MLflow / TensorBoard, main process only
    )
    if config.resume:  # from the newest checkpoint of this run
        resume(state)
    progress = state.progress

    # --- epochs ---
    for epoch in range(progress.epoch, config.epochs):
        start = time.perf_counter()
        seed_epoch(config, epoch, process)
        loaders.train.sampler.set_epoch(epoch, skip=progress.step * config.batch_size)
        trained = train_one_epoch(state, loaders.train, epoch)
        if trained.stopped:  # every rank agreed to stop mid-epoch; a checkpoint is saved
            return Outcome(True, epoch, trained.step, trained.checkpoint)
        val_loss, confusion, _ = evaluate(state, loaders.valid)
        row = epoch_row(epoch, trained.metrics, val_loss, metrics.summarize(confusion, datasets.classes), optimizer, start)
        report_epoch(state, row)
        progress.record(row, objective_value(config, row), model_without_ddp)
        saved = save_checkpoint(state, epoch + 1, 0)
        if stop.agreed(process):
            return Outcome(True, epoch + 1, 0, saved)
        if should_stop_early(config, progress, process):
            break

    return finish(state, datasets, loaders, dirs)  # the final evaluation with the best weights, outputs


def seed_epoch(config: TrainConfig, epoch: int, process: distributed.Process) -> None:
    """Per-(seed, epoch, rank) RNG: augmentation is reproducible across restarts.
    (Tuples of ints hash the same in every process; no two ranks or epochs share.)"""
    torch.manual_seed(hash((config.seed, epoch, process.rank)) & 0x7FFF_FFFF_FFFF_FFFF)


def train_one_epoch(state: TrainState, loader: DataLoader, epoch: int) -> EpochResult:
    config, process = state.config, state.process
    state.model.train()
    step = state.progress.step  # > 0 when resuming mid-epoch
    sums = EpochSums(process, state.progress.partial if step else None)
    steps = step + len(loader)
    window_start, window_images = time.perf_counter(), 0
    # A terminal (docker run -t on EC2) gets a progress bar; logs keep a line per event.
    bar = ProgressBar.for_terminal(f"epoch {epoch + 1}", steps, step) if process.is_main else None
    for images, targets in loader:
        if state.stop.agreed(process):
            if bar is not None:
                bar.close()
            return EpochResult(step, stopped=True, checkpoint=save_checkpoint(state, epoch, step, sums.reduced(process)))
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
        if process.is_main and (step % config.log_interval == 0 or step == steps):
            rate = window_images * process.world_size / max(time.perf_counter() - window_start, 1e-9)
            line = format_metrics({"epoch": epoch + 1, "step": f"{step}/{steps}"}, {"step_loss": loss.item(), "images_per_s": rate})
            if bar is not None:
                bar.note(line, step)
            else:
                log.info(line)
            window_start, window_images = time.perf_counter(), 0
        if bar is not None:
            bar.update(step)
        if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and step < steps:
            save_checkpoint(state, epoch, step, sums.reduced(process))
    if bar is not None:
        bar.close()
    loss, correct, seen = sums.reduced(process)
    return EpochResult(step, {"train_loss": loss / max(1.0, seen), "train_acc": correct / max(1.0, seen)})


@torch.inference_mode()
def evaluate(state: TrainState, loader: DataLoader, keep_logits: bool = False) -> tuple[float, torch.Tensor, Scores | None]:
    """Loss and confusion matrix over the whole split, summed across ranks; with
    keep_logits, also every image's logits and target, gathered on the main process."""
    state.model.eval()
    device, num_classes = state.process.device, len(state.classes)
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for images, targets in loader:
        images, targets = state.to_device(images, targets)
        with state.autocast():
            logits = state.model(images)
        # Plain cross-entropy (no smoothing or class weights): comparable across runs.
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").to(torch.float64)
        metrics.update_confusion(confusion, logits, targets)
        if keep_logits:
            kept.append((logits.float().cpu(), targets.cpu()))
    distributed.all_reduce_sum(confusion, state.process)
    distributed.all_reduce_sum(loss_sum, state.process)
    scores = gather_scores(kept, num_classes, state.process) if keep_logits else None
    return loss_sum.item() / max(1, int(confusion.sum())), confusion.cpu(), scores


def gather_scores(kept: list[tuple[torch.Tensor, torch.Tensor]], num_classes: int, process: distributed.Process) -> Scores | None:
    """Every rank's (logits, targets) concatenated on the main process (None elsewhere).
    Evaluation shards differ in size (ShardSampler does not pad them), so each rank sends
    its own rows rather than taking part in a fixed-size collective."""
    logits = torch.cat([row[0] for row in kept]) if kept else torch.zeros((0, num_classes))
    targets = torch.cat([row[1] for row in kept]) if kept else torch.zeros((0,), dtype=torch.int64)
    shards = distributed.gather_to_main((logits, targets), process)
    if shards is None:
        return None
    return torch.cat([shard[0] for shard in shards]), torch.cat([shard[1] for shard in shards])


def finish(state: TrainState, datasets: build.SplitDatasets, loaders: build.Loaders, dirs: outputs.OutputDirs) -> Outcome:
    """The best epoch's weights evaluated on the test split (the validation split when
    there is none) and, unless turned off, temperature scaling fitted on the validation
    split's logits (train.calibration); then the model, its monitoring baseline, metrics
    and plots written by the main process."""
    config, process, progress = state.config, state.process, state.progress
    state.model_without_ddp.load_state_dict(progress.best_weights)
    final_split, final_loader = ("valid", loaders.valid) if loaders.test is None else ("test", loaders.test)
    final_loss, final_confusion, final_scores = evaluate(state, final_loader, keep_logits=True)
    valid_scores = final_scores if final_split == "valid" else None
    if config.calibrate and valid_scores is None:
        valid_scores = evaluate(state, loaders.valid, keep_logits=True)[2]
    final = {**metrics.summarize(final_confusion, datasets.classes), "loss": final_loss}
    if process.is_main:
        calibrated = calibration.report(final_scores, final_split, valid_scores if config.calibrate else None)
        outputs.report_final(config, progress, final_split, final, calibrated)
        outputs.write_outputs(config, datasets, progress, final_split, final, final_confusion, dirs, state.tracker.summary(), calibrated)
        outputs.write_baseline(config, state.model_without_ddp, datasets.valid, dirs.model, process.device)
        state.tracker.finish({"split": final_split, **final, "calibration": calibrated.metrics()}, dirs.output, dirs.model)
    # Other ranks wait here until the main process has written the model: SageMaker
    # local mode stops every container as soon as the first one exits.
    distributed.barrier(process)
    return Outcome(False, progress.epoch, 0, final={"split": final_split, **final})


# --- after each epoch ----------------------------------------------------------------


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
    if state.process.is_main:
        keys = ("train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "lr", "epoch_time_s")
        log.info(format_metrics({"epoch": row["epoch"]}, {k: row[k] for k in keys}))
    state.tracker.log_epoch(row, state.train_images)


def objective_value(config: TrainConfig, row: dict) -> float:
    # Higher is better for every objective: negate the loss.
    value = row[config.objective]
    return -value if config.objective == "val_loss" else value


def should_stop_early(config: TrainConfig, progress: Progress, process: distributed.Process) -> bool:
    if not config.early_stopping_patience or progress.epochs_without_improvement < config.early_stopping_patience:
        return False
    if process.is_main:
        log.info(
            "early stopping: %s has not improved for %d epochs (best at epoch %d)",
            config.objective,
            progress.epochs_without_improvement,
            progress.best_epoch,
        )
    return True

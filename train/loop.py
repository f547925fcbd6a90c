"""One training run, read top to bottom in `fit`: data, model, loaders, loss, optimizer,
schedule, resume, the epoch loop, then the final evaluation and outputs (as in
torchvision's references/classification/train.py). The data comes from train.datasets,
the loaders from train.loaders, the other parts from train.build, what the loop carries
from train.state, checkpoints from train.checkpoint and the files a run leaves from
train.outputs. Every process of a DDP job runs `fit`; only
the main process writes files.
"""

from __future__ import annotations

import logging
import random
import time

import torch
from torch.nn import functional as F

from container import SageMakerPaths
from train import build, calibration, datasets, distributed, metrics, outputs, tracking
from train.checkpoint import resume, save_checkpoint
from train.config import TrainConfig
from train.datasets import RunData
from train.loaders import Loaders, SplitLoader, make_loaders
from train.progress import ProgressBar
from train.reporting import format_metrics
from train.state import EpochResult, EpochSums, Outcome, Progress, StopRequest, TrainState
from vision import presets
from vision.presets import Preprocessing

log = logging.getLogger(__name__)

Scores = tuple[torch.Tensor, torch.Tensor]  # a split's logits (N x classes, float32) and targets (N), on the main process


def fit(config: TrainConfig, paths: SageMakerPaths, process: distributed.Process, stop: StopRequest) -> Outcome:
    dirs = outputs.OutputDirs.resolve(config, paths)
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    # --- data: its format, the check, the classes every rank agrees on ---
    run_data = datasets.load(config, paths, process, dirs.output)

    # --- model (DDP-wrapped for the steps; saved and loaded unwrapped, keys without "module."),
    #     its preprocessing (timm's pretrained config, else the ImageNet presets), the loaders ---
    weights = build.pretrained_weights_path(config, paths)
    model_without_ddp = build.make_model(config, len(run_data.classes), weights, process.device)
    prep = presets.preprocessing_for(config.arch, model_without_ddp, config.image_size)
    loaders = make_loaders(config, run_data, prep, process)

    # --- loss, optimizer, schedule, precision; resume ---
    optimizer = build.make_optimizer(config, model_without_ddp)
    autocast_dtype = build.amp_dtype(config, process.device)
    build.report_precision(config, autocast_dtype, process)
    state = TrainState(
        config=config,
        process=process,
        stop=stop,
        model=build.wrap_ddp(model_without_ddp, process),
        model_without_ddp=model_without_ddp,
        criterion=build.make_criterion(config, run_data, process.device),
        optimizer=optimizer,
        scheduler=build.make_scheduler(config, optimizer, loaders.steps_per_epoch),
        scaler=torch.amp.GradScaler(process.device.type, enabled=autocast_dtype == torch.float16),
        autocast_dtype=autocast_dtype,
        classes=run_data.classes,
        checkpoint_dir=dirs.checkpoints,
        train_images=loaders.train_images,
        tracker=tracking.start(config, process, paths, run_data.summary()),  # MLflow / TensorBoard, main process only
        bad_images=loaders.bad,
        multi_label=run_data.multi_label,
    )
    if config.resume:  # from the newest checkpoint of this run
        resume(state)
    progress = state.progress

    # --- epochs ---
    for epoch in range(progress.epoch, config.epochs):
        start = time.perf_counter()
        seed_epoch(config, epoch, process)
        trained = train_one_epoch(state, loaders.train, epoch)
        if trained.stopped:  # every rank agreed to stop mid-epoch; a checkpoint is saved
            return Outcome(True, epoch, trained.step, trained.checkpoint)
        row = epoch_row(epoch, trained.metrics, evaluate(state, loaders.valid), run_data.classes, optimizer, start)
        report_epoch(state, row)
        progress.record(row, objective_value(config, row), model_without_ddp)
        saved = save_checkpoint(state, epoch + 1, 0)
        if stop.agreed(process):
            return Outcome(True, epoch + 1, 0, saved)
        if should_stop_early(config, progress, process):
            break

    return finish(state, run_data, loaders, dirs, prep)  # the final evaluation with the best weights, outputs


def seed_epoch(config: TrainConfig, epoch: int, process: distributed.Process) -> None:
    """Per-(seed, epoch, rank) RNG: augmentation is reproducible across restarts.
    (Tuples of ints hash the same in every process; no two ranks or epochs share.)"""
    torch.manual_seed(hash((config.seed, epoch, process.rank)) & 0x7FFF_FFFF_FFFF_FFFF)


def train_one_epoch(state: TrainState, split: SplitLoader, epoch: int) -> EpochResult:
    config, process = state.config, state.process
    state.model.train()
    step = state.progress.step  # > 0 when resuming mid-epoch
    sums = EpochSums(process, state.progress.partial if step else None)
    loader, steps = split.begin(epoch, skip_batches=step), split.steps
    window_start, window_images = time.perf_counter(), 0
    # A terminal (docker run -t on EC2) gets a progress bar; logs keep a line per event.
    bar = ProgressBar.for_terminal(f"epoch {epoch + 1}", steps, step) if process.is_main else None
    batches = iter(loader)
    while True:
        batch = next(batches, None)
        stop, out_of_data = state.stop.vote(process, batch is None)
        if stop:
            if bar is not None:
                bar.close()
            return EpochResult(step, stopped=True, checkpoint=save_checkpoint(state, epoch, step, sums.reduced(process)))
        if out_of_data:  # on any rank: every rank ends the epoch here
            break
        images, targets = state.to_device(*batch)
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
        if step % config.log_interval == 0:
            state.bad_images.check()  # too many undecodable images fail the job, naming the first few
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
    state.bad_images.check()
    loss, correct, seen = sums.reduced(process)
    return EpochResult(step, {"train_loss": loss / max(1.0, seen), "train_acc": correct / max(1.0, seen)})


@torch.inference_mode()
def evaluate(state: TrainState, split: SplitLoader, keep_logits: bool = False) -> metrics.Evaluation:
    """Loss and confusion matrix (multi-label: every image's scores) over the whole split,
    from all ranks. Through the unwrapped model: evaluation shards are not padded, so
    ranks may take different numbers of batches, and DDP's forward must not wait. With
    keep_logits (single-label), also every image's logits and target (for calibration)."""
    model, process, num_classes = state.model_without_ddp, state.process, len(state.classes)
    model.eval()
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=process.device)
    totals = torch.zeros(2, dtype=torch.float64, device=process.device)  # loss sum, terms
    scores, truths = [torch.zeros((0, num_classes))], [torch.zeros((0, num_classes))]
    kept, kept_targets = [torch.zeros((0, num_classes))], [torch.zeros((0,), dtype=torch.int64)]
    for images, targets in split.begin():
        images, targets = state.to_device(images, targets)
        with state.autocast():
            logits = model(images).float()
        # Plain losses (no smoothing or class weights): comparable across runs.
        if state.multi_label:
            totals[0] += F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").to(torch.float64)
            totals[1] += targets.numel()
            scores.append(torch.sigmoid(logits).cpu())
            truths.append(targets.cpu())
        else:
            totals[0] += F.cross_entropy(logits, targets, reduction="sum").to(torch.float64)
            totals[1] += targets.shape[0]
            metrics.update_confusion(confusion, logits, targets)
            if keep_logits:
                kept.append(logits.cpu())
                kept_targets.append(targets.cpu())
    distributed.all_reduce_sum(totals, process)
    loss = totals[0].item() / max(1.0, totals[1].item())
    if not state.multi_label:
        distributed.all_reduce_sum(confusion, process)
        logits = None
        if keep_logits:  # shards differ in size: every rank's own rows
            gathered = distributed.all_gather_objects((torch.cat(kept), torch.cat(kept_targets)), process)
            logits = (torch.cat([s for s, _ in gathered]), torch.cat([t for _, t in gathered]))
        return metrics.Evaluation(loss, confusion=confusion.cpu(), logits=logits)
    gathered = distributed.all_gather_objects((torch.cat(scores), torch.cat(truths)), process)
    return metrics.Evaluation(loss, scores=torch.cat([s for s, _ in gathered]), targets=torch.cat([t for _, t in gathered]))


def finish(state: TrainState, run_data: RunData, loaders: Loaders, dirs: outputs.OutputDirs, prep: Preprocessing) -> Outcome:
    """The best epoch's weights evaluated on the test split (the validation split when
    there is none) and, unless turned off, temperature scaling fitted on the validation
    split's logits (train.calibration; single-label only); then the model, its monitoring
    baseline, metrics and plots written by the main process. Multi-label: each class's
    threshold is chosen on the validation split first."""
    config, process, progress = state.config, state.process, state.progress
    state.model_without_ddp.load_state_dict(progress.best_weights)
    single = not state.multi_label
    calibrate = config.calibrate and single
    needs_valid = state.multi_label or loaders.test is None or calibrate
    validated = evaluate(state, loaders.valid, keep_logits=single) if needs_valid else None
    thresholds = metrics.tune_thresholds(validated.scores, validated.targets) if state.multi_label else None
    final_split, evaluation = ("valid", validated) if loaders.test is None else ("test", evaluate(state, loaders.test, keep_logits=single))
    final = {**evaluation.summary(run_data.classes, thresholds), "loss": evaluation.loss}
    undecodable = bad_image_counts(state)
    if process.is_main:
        calibrated = calibration.report(evaluation.logits, final_split, validated.logits if calibrate else None) if single else None
        outputs.report_final(config, progress, final_split, final, calibrated)
        result = outputs.Final(final_split, final, evaluation, thresholds, undecodable, calibrated)
        outputs.write_outputs(config, run_data, progress, result, dirs, prep, state.tracker.summary())
        outputs.write_baseline(config, state.model_without_ddp, run_data.samples.get("validation"), dirs.model, process.device)
        summary = {"split": final_split, **final, "calibration": calibrated.metrics() if calibrated is not None else None}
        state.tracker.finish(summary, dirs.output, dirs.model)
    # Other ranks wait here until the main process has written the model: SageMaker
    # local mode stops every container as soon as the first one exits.
    distributed.barrier(process)
    return Outcome(False, progress.epoch, 0, final={"split": final_split, **final})


def bad_image_counts(state: TrainState) -> dict:
    """Undecodable images skipped during the run, summed over the ranks (each counts its own)."""
    bad = state.bad_images
    totals = torch.tensor([bad.count, bad.seen], dtype=torch.float64, device=state.process.device)
    distributed.all_reduce_sum(totals, state.process)
    return {"undecodable_images": int(totals[0]), "images_decoded": int(totals[1]), "undecodable_examples": bad.examples()}


# --- after each epoch ----------------------------------------------------------------


def epoch_row(epoch: int, train_metrics: dict, validated: metrics.Evaluation, classes: list[str], optimizer, start: float) -> dict:
    summary = validated.summary(classes)  # multi-label: at threshold 0.5 (the tuned ones come at the end)
    return {
        "epoch": epoch + 1,
        **train_metrics,
        "val_loss": validated.loss,
        "val_acc": summary["acc"],
        "val_macro_f1": summary["macro_f1"],
        **({"val_map": summary["map"]} if "map" in summary else {}),
        "lr": optimizer.param_groups[0]["lr"],
        "epoch_time_s": time.perf_counter() - start,
        "val_per_class": summary["per_class"],  # precision/recall/F1/support per class
    }


def report_epoch(state: TrainState, row: dict) -> None:
    """One finished epoch's metrics, once per epoch on every rank (the main process
    reports). The single place where per-epoch metrics leave the loop: the log line
    SageMaker's metric definitions parse, and any other metrics sink."""
    if state.process.is_main:
        keys = ("train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "val_map", "lr", "epoch_time_s")
        log.info(format_metrics({"epoch": row["epoch"]}, {k: row[k] for k in keys if k in row}))
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

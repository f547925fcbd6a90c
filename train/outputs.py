"""What a finished run leaves behind (main process only): the model for serving
(weights and model_spec.json, the train -> serve contract), its monitoring baseline
(model/monitoring/, docs/monitoring.md), metrics.json, the classification report and
plots, and the final log lines that SageMaker's metric definitions and tuning read."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision
from torch import nn

from container import SageMakerPaths, training_job_name
from container.monitoring import MonitorSettings
from train import metrics, plots
from train.build import SplitDatasets
from train.calibration import Report as CalibrationReport
from train.checkpoint import atomic_save
from train.config import TrainConfig
from train.data import ImageSamples
from train.formats.base import image_source
from train.reporting import format_metrics
from train.state import Progress
from vision import images, imagestats, presets
from vision.artifact import MONITORING_DIR, WEIGHTS_FILE, ModelSpec
from vision.baseline import MIN_IMAGES
from vision.features import Embedder, compute_baseline

log = logging.getLogger(__name__)


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


def report_final(config: TrainConfig, progress: Progress, final_split: str, final: dict, calibrated: CalibrationReport) -> None:
    # SageMaker tuning scores a job by the *last* value of its objective metric:
    # repeat the best epoch's validation metrics so that value is the saved model's.
    best_row = next(row for row in progress.history if row["epoch"] == progress.best_epoch)
    log.info(format_metrics({"best_epoch": progress.best_epoch}, {k: best_row[k] for k in ("val_loss", "val_acc", "val_macro_f1")}))
    if final_split == "test":
        log.info(format_metrics({}, {"test_loss": final["loss"], "test_acc": final["acc"], "test_macro_f1": final["macro_f1"]}))
    # Expected calibration error on the final split, before and after the temperature.
    numbers = {key: value for key, value in calibrated.metrics().items() if key in ("temperature", "ece_before", "ece_after")}
    log.info(format_metrics({"calibration_split": final_split}, numbers))


def write_outputs(
    config,
    datasets: SplitDatasets,
    progress: Progress,
    final_split,
    final,
    confusion,
    dirs: OutputDirs,
    tracking_info=None,
    calibrated: CalibrationReport | None = None,
) -> None:
    model_dir, output_dir = dirs.model, dirs.output
    temperature = calibrated.temperature if calibrated is not None else 1.0
    save_model(config, datasets.classes, progress.best_weights, model_dir, temperature)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "objective": config.objective,
        "best_epoch": progress.best_epoch,
        "epochs": progress.history,
        "final": {"split": final_split, **final},
        "calibration": calibrated.metrics() if calibrated is not None else None,
        "data": {
            "classes": datasets.classes,
            "train_images": len(datasets.train),
            "valid_images": len(datasets.valid),
            "test_images": len(datasets.test) if datasets.test else 0,
            "skipped_files": len(datasets.bad_files),
            "skipped_examples": datasets.bad_files[:20],
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
        datasets.classes,
        output_dir / "confusion_matrix.png",
        f"confusion matrix ({final_split}, best epoch {progress.best_epoch})",
    )
    plots.plot_learning_curves(progress.history, output_dir / "learning_curves.png")
    if calibrated is not None:
        plots.plot_reliability(
            calibrated.before,
            calibrated.after,
            output_dir / "reliability_diagram.png",
            f"reliability ({final_split}, best epoch {progress.best_epoch}, temperature {calibrated.temperature:.3g})",
        )
    log.info(
        "wrote model to %s and metrics/plots to %s (best epoch %d, %s macro-F1 %.4f)",
        model_dir,
        output_dir,
        progress.best_epoch,
        final_split,
        final["macro_f1"],
    )


def save_model(config: TrainConfig, classes: list[str], weights: dict, model_dir: Path, temperature: float = 1.0) -> None:
    """The model serving loads: its weights and model_spec.json (vision.artifact), with the
    softmax temperature the served probabilities are divided by (train.calibration)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(weights, model_dir / WEIGHTS_FILE)
    spec = ModelSpec(
        arch=config.arch,
        classes=tuple(classes),
        image_size=config.image_size,
        resize_size=presets.eval_resize_size(config.image_size),
        mean=presets.IMAGENET_MEAN,
        std=presets.IMAGENET_STD,
        versions={"torch": torch.__version__, "torchvision": torchvision.__version__},
        temperature=temperature,
    )
    spec.save(model_dir)


def write_baseline(config: TrainConfig, model: nn.Module, valid: ImageSamples, model_dir: Path, device: torch.device) -> None:
    """The monitoring baseline of the saved model (vision.baseline, written to
    model_dir/monitoring/) from at most config.monitoring_baseline images of the
    validation split: one more fp32 forward pass over them, on the main process, after
    the model is saved. A baseline that cannot be made is logged and left out: the model
    is what the job is for, and `monitor baseline` can add one later."""
    if not config.monitoring_baseline:
        return
    indices = list(range(len(valid.samples)))
    if len(indices) < MIN_IMAGES:
        log.warning("no monitoring baseline: the validation split has %d images, a baseline needs %d", len(indices), MIN_IMAGES)
        return
    if len(indices) > config.monitoring_baseline:
        indices = sorted(random.Random(config.seed).sample(indices, config.monitoring_baseline))
    started, skipped = time.perf_counter(), []
    source = f"train: validation split of {training_job_name() or 'a local job'}"
    info = {"source": source, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    embedder = None
    try:
        embedder = Embedder(model.eval(), ModelSpec.load(model_dir), device, config.batch_size)
        samples = labelled_images([valid.samples[i] for i in indices], valid.limits, skipped)
        baseline = compute_baseline(embedder, samples, info, seed=config.seed)
        baseline.info["skipped_files"] = len(skipped)
        baseline_id = baseline.save(model_dir, MonitorSettings.from_env(os.environ).thresholds())
    except Exception:  # noqa: BLE001 - any failure here must not cost the trained model
        log.exception("no monitoring baseline (the model is saved; `monitor baseline` can make one)")
        return
    finally:
        if embedder is not None:
            embedder.tap.close()
    accuracy = baseline.info.get("accuracy")
    log.info(
        "wrote the monitoring baseline %s to %s: %d validation images%s in %.1f s",
        baseline_id,
        model_dir / MONITORING_DIR,
        baseline.size,
        f" (top-1 {accuracy['top1']:.3f})" if accuracy else "",
        time.perf_counter() - started,
    )


def labelled_images(samples, limits: images.ImageLimits, skipped: list[str]) -> Iterator:
    """(RGB image, container format, class index or None) per sample, decoded as the
    server decodes; a multi-label sample has no single class. Unreadable ones are skipped."""
    for source, label in samples:
        data = image_source(source)
        try:
            data = Path(data).read_bytes() if isinstance(data, str) else data
            image = images.load_rgb(data, limits)
        except (OSError, ValueError) as err:  # images.ImageRejected is a ValueError
            skipped.append(f"{source}: {err}")
            continue
        yield image, imagestats.container_format(data), label if isinstance(label, int) else None

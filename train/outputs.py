"""What a finished run leaves behind (main process only): the model for serving
(weights and model_spec.json, the train -> serve contract, plus the CPU engines' files),
its monitoring baseline (model/monitoring/, docs/monitoring.md), metrics.json, the
classification report and plots, and the final log lines that SageMaker's metric
definitions and tuning read. (The data check's full report, data_check.json, is written
when the check runs, at the start: train.datasets.)"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from container import SageMakerPaths, training_job_name
from container.monitoring import MonitorSettings
from train import metrics, plots
from train.calibration import Report as CalibrationReport
from train.checkpoint import atomic_save
from train.config import TrainConfig
from train.data import ImageSamples
from train.datasets import RunData
from train.formats import image_source
from train.metrics import Evaluation
from train.reporting import format_metrics
from train.state import Progress
from vision import images, imagestats, models
from vision.artifact import INT8_FILE, MONITORING_DIR, ONNX_FILE, WEIGHTS_FILE, ModelSpec
from vision.baseline import MIN_IMAGES
from vision.engines.calibration import CALIBRATION_FILE, DEFAULT_COUNT, save_calibration, stratified_indices
from vision.engines.preprocess import EvalPreprocess
from vision.features import Embedder, compute_baseline
from vision.presets import Preprocessing

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


@dataclass(frozen=True)
class Final:
    """The final evaluation: its split, its metrics, the evaluation itself (for the plots),
    the tuned thresholds (multi-label) and the undecodable images of the whole run."""

    split: str  # "test", else "valid"
    metrics: dict
    evaluation: Evaluation
    thresholds: list[float] | None
    undecodable: dict
    calibrated: CalibrationReport | None = None  # temperature scaling (single-label)


def report_final(
    config: TrainConfig, progress: Progress, final_split: str, final: dict, calibrated: CalibrationReport | None = None
) -> None:
    # SageMaker tuning scores a job by the *last* value of its objective metric:
    # repeat the best epoch's validation metrics so that value is the saved model's.
    best_row = next(row for row in progress.history if row["epoch"] == progress.best_epoch)
    keys = ("val_loss", "val_acc", "val_macro_f1", "val_map")
    log.info(format_metrics({"best_epoch": progress.best_epoch}, {k: best_row[k] for k in keys if k in best_row}))
    if final_split == "test":
        test = {"test_loss": final["loss"], "test_acc": final["acc"], "test_macro_f1": final["macro_f1"]}
        log.info(format_metrics({}, test | ({"test_map": final["map"]} if "map" in final else {})))
    if calibrated is not None:  # expected calibration error on the final split, before and after the temperature
        numbers = {key: value for key, value in calibrated.metrics().items() if key in ("temperature", "ece_before", "ece_after")}
        log.info(format_metrics({"calibration_split": final_split}, numbers))


def write_outputs(
    config, run_data: RunData, progress: Progress, final: Final, dirs: OutputDirs, prep: Preprocessing, tracking_info=None
) -> None:
    model_dir, output_dir = dirs.model, dirs.output
    calibrated = final.calibrated
    temperature = calibrated.temperature if calibrated is not None else 1.0
    save_model(config, run_data, progress.best_weights, model_dir, prep, final.thresholds, temperature)
    int8_check = save_engine_files(config, run_data.samples, model_dir) if config.export_onnx else None
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "objective": config.objective,
        "best_epoch": progress.best_epoch,
        "epochs": progress.history,
        "final": {"split": final.split, **final.metrics},
        "calibration": calibrated.metrics() if calibrated is not None else None,
        "int8_check": int8_check,  # None: not run (docs/serving.md, "Engines and precision")
        "data": data_summary(run_data, final.undecodable),
        "config": config.to_dict(),
        "tracking": tracking_info or {},  # e.g. the MLflow run id
    }
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "classification_report.txt").write_text(
        f"{final.split} split, best epoch {progress.best_epoch} by {config.objective}\n\n" + metrics.per_class_report(final.metrics)
    )
    if final.evaluation.confusion is not None:  # single-label; a multi-label run's per-class table is above
        plots.plot_confusion(
            final.evaluation.confusion,
            run_data.classes,
            output_dir / "confusion_matrix.png",
            f"confusion matrix ({final.split}, best epoch {progress.best_epoch})",
        )
    plots.plot_learning_curves(progress.history, output_dir / "learning_curves.png")
    if calibrated is not None:
        plots.plot_reliability(
            calibrated.before,
            calibrated.after,
            output_dir / "reliability_diagram.png",
            f"reliability ({final.split}, best epoch {progress.best_epoch}, temperature {calibrated.temperature:.3g})",
        )
    log.info(
        "wrote model to %s and metrics/plots to %s (best epoch %d, %s macro-F1 %.4f)",
        model_dir,
        output_dir,
        progress.best_epoch,
        final.split,
        final.metrics["macro_f1"],
    )


def data_summary(run_data: RunData, undecodable: dict) -> dict:
    """metrics.json's "data": each split's format and input mode, the classes and image
    counts, the check's summary (the dataset fingerprint and counts of each problem; the
    full report is data_check.json), the unreadable files left out, and the images
    skipped as undecodable while training."""
    splits, samples, streamed = run_data.plan.splits(), run_data.samples, run_data.stream_images
    summary = {
        "format": {name: source.format for name, source in splits.items()},
        "input_mode": {name: "Pipe" if source.pipe else "File" for name, source in splits.items()},
        "classes": run_data.classes,
        "multi_label": run_data.multi_label,
        **{f"{short}_images": streamed.get(name, len(samples.get(name, []))) for short, name in IMAGE_COUNTS},
        "fingerprint": None,
        "skipped_files": 0,
        "skipped_examples": [],
    }
    if run_data.report is not None:
        unreadable = [example for split in run_data.report.splits.values() for example in split.unreadable.examples]
        summary["fingerprint"] = run_data.report.fingerprint
        summary["check"] = run_data.report.summary()
        summary["skipped_files"] = summary["check"]["unreadable"]
        summary["skipped_examples"] = unreadable[:20]
    return {**summary, **undecodable}


IMAGE_COUNTS = (("train", "train"), ("valid", "validation"), ("test", "test"))


def save_model(
    config: TrainConfig, run_data: RunData, weights: dict, model_dir: Path, prep: Preprocessing, thresholds=None, temperature: float = 1.0
) -> None:
    """The model serving loads: its weights and model_spec.json (vision.artifact), with
    the model's preprocessing, the tuned thresholds (multi-label), the data's check summary
    and the softmax temperature the served probabilities are divided by (train.calibration)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(weights, model_dir / WEIGHTS_FILE)
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    if models.is_timm(config.arch):
        import timm

        versions["timm"] = timm.__version__
    spec = ModelSpec(
        arch=config.arch,
        classes=tuple(run_data.classes),
        **prep.spec_fields(),
        versions=versions,
        multi_label=run_data.multi_label,
        thresholds=tuple(thresholds or ()),
        dataset=run_data.summary(),
        temperature=temperature,
    )
    spec.save(model_dir)


def save_engine_files(config: TrainConfig, samples: dict[str, list[tuple]], model_dir: Path) -> dict | None:
    """calibration.npy (DEFAULT_COUNT training images, stratified by class, as the eval
    preprocessing crops them), model.onnx (checked against torch) and model.int8.onnx,
    each named in model_spec.json once written (vision/artifact.py). int8 is kept only if
    it passes its accuracy check on the validation split (vision/engines/accuracy.py);
    the check goes into the spec either way, and is returned (None when not run).
    `samples`: RunData.samples, File-mode splits -> [(source, label)].
    Whatever fails is logged and left out: serving then makes it at load or serves
    torch, and the job still succeeds."""
    train = samples.get("train")
    if train is None:
        log.info("no calibration sample or ONNX files in the model: the training split is streamed (Pipe mode)")
        return None
    started, spec = time.perf_counter(), ModelSpec.load(model_dir)
    try:
        preprocess = EvalPreprocess.from_spec(spec)
        picked = stratified_indices([_stratum(label) for _, label in train], DEFAULT_COUNT, config.seed)
        crops, _ = _crops([train[i] for i in picked], preprocess)
        save_calibration(crops, model_dir)
    except Exception as err:  # noqa: BLE001 - any failure leaves the artifact as it was
        log.warning("no calibration sample or ONNX files in the model (serving will use torch): %s", err)
        return None
    spec = dataclasses.replace(spec, calibration_file=CALIBRATION_FILE)
    spec.save(model_dir)
    try:
        from vision.engines.export import export_onnx, load_trained

        normalized = preprocess.normalize(crops)
        export_onnx(load_trained(model_dir)[1], spec.image_size, model_dir / ONNX_FILE, torch.from_numpy(normalized[:8]))
        spec = dataclasses.replace(spec, onnx_file=ONNX_FILE)
        spec.save(model_dir)
        check = quantize_checked(config, samples.get("validation"), spec, preprocess, model_dir, normalized)
        if check is None or check.passed:
            spec = dataclasses.replace(spec, int8_file=INT8_FILE)
        else:
            (model_dir / INT8_FILE).unlink()
            spec = dataclasses.replace(spec, int8_file="")
            log.warning("model.int8.onnx left out (it failed its accuracy check); serving `auto` runs ONNX Runtime fp32 (docs/serving.md)")
        spec = dataclasses.replace(spec, int8_check=check.to_dict() if check is not None else {})
        spec.save(model_dir)
    except Exception as err:  # noqa: BLE001 - the exporter's and the quantizer's failures have no common type
        log.warning("the model keeps %s only (serving exports what is missing at load): %s", ", ".join(_named(spec)), err)
        for name in (ONNX_FILE, INT8_FILE):
            if name not in _named(spec):
                (model_dir / name).unlink(missing_ok=True)
        return None
    sizes = ", ".join(f"{name} {(model_dir / name).stat().st_size / 1e6:.1f} MB" for name in _named(spec))
    log.info("wrote the CPU engines' files in %.1f s: %s", time.perf_counter() - started, sizes)
    return spec.int8_check or None


def quantize_checked(
    config: TrainConfig, valid: list[tuple] | None, spec: ModelSpec, preprocess: EvalPreprocess, model_dir: Path, normalized: np.ndarray
):
    """model.int8.onnx, checked against fp32 with labels on at most MAX_IMAGES validation
    images (vision/engines/accuracy.py). Returns the check, None without a validation
    split to check on."""
    from vision.engines.accuracy import MAX_IMAGES, check_int8
    from vision.engines.quantize import quantize_int8

    quantize_int8(model_dir / ONNX_FILE, model_dir / INT8_FILE, normalized)
    if not valid:
        log.info("int8 is not checked against labels: the validation split is %s", "streamed (Pipe mode)" if valid is None else "empty")
        return None
    if len(valid) > MAX_IMAGES:
        valid = random.Random(config.seed).sample(valid, MAX_IMAGES)
    crops, labels = _crops(valid, preprocess)
    if spec.multi_label:
        labels = [np.isin(np.arange(spec.num_classes), list(label)) for label in labels]
    check = check_int8(
        model_dir / ONNX_FILE,
        model_dir / INT8_FILE,
        crops,
        np.asarray(labels),
        preprocess.normalize,
        multi_label=spec.multi_label,
        thresholds=spec.thresholds,
        temperature=spec.temperature,
        max_drop=config.int8_max_drop,
    )
    log.info("%s: %s", check.summary(), "passed" if check.passed else "failed")
    return check


def _crops(samples: list[tuple], preprocess: EvalPreprocess) -> tuple[np.ndarray, list]:
    """The eval crops of `samples` (N x H x W x 3 uint8) and their labels, decoded as
    serving decodes (an unreadable image is replaced by the next readable, label and all)."""
    sample = ImageSamples(samples, preprocess.crop)
    pairs = [sample[i] for i in range(len(sample))]
    return np.stack([crop for crop, _ in pairs]), [label for _, label in pairs]


def _stratum(label) -> int:
    """The class a sample counts under for stratification: its label, or a multi-label
    sample's first class."""
    if isinstance(label, (tuple, list)):
        return int(label[0]) if label else -1
    return int(label)


def _named(spec: ModelSpec) -> list[str]:
    return [name for name in (spec.calibration_file, spec.onnx_file, spec.int8_file) if name]


def write_baseline(config: TrainConfig, model: nn.Module, valid: list[tuple] | None, model_dir: Path, device: torch.device) -> None:
    """The monitoring baseline of the saved model (vision.baseline, written to
    model_dir/monitoring/) from at most config.monitoring_baseline images of the
    validation split: one more fp32 forward pass over them, on the main process, after
    the model is saved. A baseline that cannot be made is logged and left out: the model
    is what the job is for, and `monitor baseline` can add one later."""
    if not config.monitoring_baseline:
        return
    if valid is None:
        log.info("no monitoring baseline: the validation split is streamed (Pipe mode); `monitor baseline` can make one")
        return
    indices = list(range(len(valid)))
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
        samples = labelled_images([valid[i] for i in indices], images.ImageLimits(), skipped)
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

"""One monitoring run, top to bottom: model and baseline, the window's captures, the
checks, and every output (statistics, violations, report, CloudWatch records, the exit
message, MLflow)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from container import ConfigError, SageMakerPaths
from container.monitoring import MonitoringJob, MonitorSettings
from monitor import captures, checks, model, outputs, report, stats, tracking
from monitor.window import Window, analyse
from vision import images
from vision.artifact import ModelSpec
from vision.baseline import Baseline

log = logging.getLogger(__name__)

OUTLIERS_SHOWN = 16


@dataclass(frozen=True)
class Result:
    checks: list[checks.Check]
    window: Window
    counts: captures.WindowCounts
    output: Path

    @property
    def violations(self) -> list[checks.Check]:
        return [check for check in self.checks if check.violated]


def read_json(path_text: str, what: str) -> dict:
    path = Path(path_text)
    try:
        document = json.loads(path.read_text())
    except OSError as err:
        raise ConfigError(f"{what}={path}: cannot read it ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{what}={path}: not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{what}={path}: expected a JSON object")
    return document


def constraint_thresholds(job: MonitoringJob) -> dict:
    """monitoring_config.sagemaker_vision of the baseline constraints.json, if one was given."""
    if not job.baseline_constraints:
        return {}
    document = read_json(job.baseline_constraints, "baseline_constraints")
    section = (document.get("monitoring_config") or {}).get("sagemaker_vision")
    if section is None:
        log.info("baseline_constraints %s has no monitoring_config.sagemaker_vision thresholds; defaults apply", job.baseline_constraints)
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"baseline_constraints={job.baseline_constraints}: monitoring_config.sagemaker_vision must be an object")
    return section


def check_baseline_statistics(job: MonitoringJob, baseline_id: str) -> None:
    """A baseline_statistics file must be the statistics.json of the model's own baseline."""
    if not job.baseline_statistics:
        return
    document = read_json(job.baseline_statistics, "baseline_statistics")
    found = (document.get("sagemaker_vision") or {}).get("baseline_id")
    if found != baseline_id:
        raise ConfigError(
            f"baseline_statistics={job.baseline_statistics} belongs to baseline {found!r}, but the model's baseline is {baseline_id!r}: "
            "point the schedule at the model's monitoring/statistics.json"
        )


def image_limits(settings: MonitorSettings) -> images.ImageLimits:
    """The server's decoder limits, with the same variables overriding them."""
    overrides = {"max_pixels": settings.max_image_pixels, "max_aspect_ratio": settings.max_aspect_ratio}
    return dataclasses.replace(images.ImageLimits(), **{key: value for key, value in overrides.items() if value is not None})


def load_model(settings: MonitorSettings, scratch: Path):
    """(embedder, baseline, baseline id, model directory)."""
    from vision.devices import select_device
    from vision.features import Embedder

    model_dir = model.resolve(settings.model, scratch)
    baseline, baseline_id = Baseline.load(model_dir)
    spec = ModelSpec.load(model_dir)
    if tuple(spec.classes) != baseline.classes:
        raise ConfigError(f"the baseline in {model_dir} was computed for classes {list(baseline.classes)[:5]}..., not this model's")
    embedder = Embedder.load(model_dir, select_device(settings.device), settings.batch_size)
    return embedder, baseline, baseline_id, model_dir


def run(job: MonitoringJob, settings: MonitorSettings, paths: SageMakerPaths, scratch: Path, environ=None) -> Result:
    started = time.perf_counter()
    checks.check_permutations(settings)
    embedder, baseline, baseline_id, model_dir = load_model(settings, scratch)
    check_baseline_statistics(job, baseline_id)
    log.info(
        "monitoring %s (%s, %d classes) against baseline %s (%d images); window %s .. %s",
        model_dir,
        embedder.spec.arch,
        len(embedder.classes),
        baseline_id,
        baseline.size,
        job.start_time or "any",
        job.end_time or "any",
    )
    counts = captures.WindowCounts()
    source = Path(job.dataset_source)
    if job.dataset_source.startswith("s3://"):
        source = captures.fetch_window(job.dataset_source, job.start_time, job.end_time, scratch / "captures")
    items = captures.read_window(source, job.start_time, job.end_time, counts, job.captures_outputs)
    window = analyse(items, embedder, baseline, image_limits(settings), OUTLIERS_SHOWN if settings.report_images else 0)
    rng = np.random.default_rng(settings.seed)
    results = checks.statistical_checks(window, baseline, settings, rng) + checks.operational_checks(window, counts, settings)
    result = Result(results, window, counts, Path(job.output_path))
    write_results(job, settings, embedder, baseline, baseline_id, result)
    message = publish(job, settings, paths, embedder.spec.arch, baseline, baseline_id, result, environ)
    log.info(
        "%d records, %d images (%d decode failures) in %.1f s, %.1f images/s; %s",
        counts.records,
        window.size,
        window.failure_count,
        time.perf_counter() - started,
        window.throughput,
        message,
    )
    return result


def write_results(job: MonitoringJob, settings: MonitorSettings, embedder, baseline: Baseline, baseline_id: str, result: Result) -> None:
    """statistics.json, constraint_violations.json and the report, into output_path."""
    window, counts, results, out = result.window, result.counts, result.checks, result.output
    bandwidth = results[0].effect if results[0].effect else stats.median_bandwidth(baseline.reference)
    over_time = checks.drift_over_time(window, counts, baseline, job.start_time, job.end_time, bandwidth)
    out.mkdir(parents=True, exist_ok=True)
    extra = {
        "model": {"arch": embedder.spec.arch, "classes": len(embedder.classes), "device": str(embedder.device)},
        "thresholds": settings.thresholds(),
        "drift_over_time": over_time,
        "throughput": {"images": window.size, "seconds": round(window.seconds, 3), "images_per_second": round(window.throughput, 2)},
    }
    outputs.write_json(
        out / outputs.STATISTICS_FILE, outputs.statistics_document(job, window, counts, baseline, baseline_id, results, extra)
    )
    outputs.write_json(out / outputs.VIOLATIONS_FILE, outputs.violations_document(results))
    header = {
        "endpoint": job.endpoint_name or "—",
        "monitoring schedule": job.schedule_name or "—",
        "window": f"{job.start_time or 'any'} .. {job.end_time or 'any'} (UTC)",
        "model": f"{embedder.spec.arch}, {len(embedder.classes)} classes",
        "baseline": f"{baseline_id}, {baseline.size} images ({baseline.info.get('source', 'unknown source')})",
    }
    volume = {
        "capture files read": str(counts.files),
        "records in the window": str(counts.records),
        "records outside the window": str(counts.outside),
        "decoded images": str(window.size),
        "decode failures": ", ".join(f"{kind} {count}" for kind, count in sorted(window.failures.items())) or "none",
        "inputs not evaluated": ", ".join(f"{reason}: {count}" for reason, count in sorted(counts.skipped.items())) or "none",
        "throughput": f"{window.throughput:.1f} images/s ({window.seconds:.1f} s for decoding, statistics and the model)",
    }
    report.write(out, header, results, window, baseline, over_time, volume, settings.report_images)


def publish(
    job: MonitoringJob,
    settings: MonitorSettings,
    paths: SageMakerPaths,
    arch: str,
    baseline: Baseline,
    baseline_id: str,
    result: Result,
    environ,
) -> str:
    """The CloudWatch records (a file for Model Monitor, PutMetricData for a Processing
    job), the exit message and the MLflow run; returns the message."""
    values = outputs.metric_values(result.window, result.counts, result.checks, baseline, settings.ood_level)
    records = outputs.cloudwatch_records(values, job, job.end_time or datetime.now(timezone.utc))
    if job.publish_cloudwatch_metrics:
        outputs.write_lines(outputs.cloudwatch_dir(paths) / outputs.CLOUDWATCH_FILE, records)
    if job.cloudwatch_namespace:
        outputs.put_metrics(job.cloudwatch_namespace, records)
    message = outputs.exit_message(result.checks)
    outputs.write_message(paths, message)
    params = {
        "endpoint": job.endpoint_name,
        "monitoring_schedule": job.schedule_name,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "baseline_id": baseline_id,
        "arch": arch,
        **settings.thresholds(),
    }
    tags = {"sagemaker_vision.violations": str(len(result.violations))}
    out = result.output
    files = [out / outputs.STATISTICS_FILE, out / outputs.VIOLATIONS_FILE, out / report.REPORT_FILE, out / report.PLOTS_DIR]
    tracking.log_run(params, values, tags, files, job.schedule_name, environ)
    return message

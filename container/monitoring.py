"""The monitoring job's contract and the monitor's settings.

MonitoringJob: what SageMaker Model Monitor gives a custom container (its "Container
Contract Inputs": lower-case environment variables), which a plain Processing job or
a local run sets with the same variables or `monitor` flags:

    dataset_format       {"sagemakerCaptureJson": {"captureIndexNames": ["endpointInput", "endpointOutput"]}}
    dataset_source       local folder of Data Capture files ({endpoint}/{variant}/yyyy/mm/dd/hh/*.jsonl);
                         it may hold more than the window: records are filtered to it
    start_time, end_time the window (ISO 8601, UTC); records outside it are ignored
    output_path          where statistics.json, constraint_violations.json and the report go
    publish_cloudwatch_metrics   Enabled: write CloudWatch records to /opt/ml/output/metrics/cloudwatch
    sagemaker_endpoint_name, sagemaker_monitoring_schedule_name   the CloudWatch dimensions
    baseline_constraints, baseline_statistics   optional local paths of a constraints.json
                         (its thresholds apply) and a statistics.json (must be this model's baseline)

A scheduled Processing job (smvision-aws monitor) adds what Model Monitor does for its
jobs: dataset_source may be s3://.../{endpoint}/{variant}, whose hour folders in the
window are downloaded; --hours N makes the window the N whole hours before end_time
(a schedule knows only its own time); SM_VISION_MONITOR_CLOUDWATCH_NAMESPACE publishes
the CloudWatch records with PutMetricData.

MonitorSettings: the model to load and the thresholds (SM_VISION_MONITOR_*), each with
its default here; the reference table in docs/monitoring.md is generated from them.
No torch here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from container import settings
from container.parse import ConfigError, parse_bool
from container.settings import setting

CAPTURE_INPUT = "endpointInput"
CAPTURE_OUTPUT = "endpointOutput"
DEFAULT_MODEL = "/opt/ml/processing/model"


def parse_time(text: str, name: str) -> datetime:
    """ISO 8601 as an aware UTC datetime. Spaces are dropped: Model Monitor's own docs
    show "2019-12-01T16: 20: 00Z"; a time without a zone is UTC."""
    compact = "".join(text.split())
    try:
        moment = datetime.fromisoformat(compact.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{name}={text!r}: expected an ISO 8601 time such as 2026-12-01T15:00:00Z") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def parse_enabled(text: str, name: str) -> bool:
    """Model Monitor's Enabled/Disabled, or any boolean word."""
    lowered = text.strip().lower()
    if lowered in ("enabled", "disabled"):
        return lowered == "enabled"
    try:
        return parse_bool(text, name)
    except ConfigError:
        raise ConfigError(f"{name}={text!r}: expected Enabled or Disabled") from None


def parse_dataset_format(text: str, name: str) -> tuple[str, ...]:
    """The capture indexes of a sagemakerCaptureJson dataset_format."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{name}={text!r}: not JSON") from None
    capture = document.get("sagemakerCaptureJson") if isinstance(document, dict) else None
    if not isinstance(capture, dict):
        kinds = ", ".join(document) if isinstance(document, dict) else type(document).__name__
        raise ConfigError(
            f"{name}: only endpoint Data Capture (sagemakerCaptureJson) is supported, got {kinds}; batch transform datasets are not images"
        )
    indexes = capture.get("captureIndexNames", [CAPTURE_INPUT, CAPTURE_OUTPUT])
    if not isinstance(indexes, list) or not all(index in (CAPTURE_INPUT, CAPTURE_OUTPUT) for index in indexes):
        raise ConfigError(f"{name}: captureIndexNames must list {CAPTURE_INPUT} and/or {CAPTURE_OUTPUT}, got {indexes!r}")
    if CAPTURE_INPUT not in indexes:
        raise ConfigError(f"{name}: captureIndexNames {indexes} lacks {CAPTURE_INPUT}: the monitor reads the captured images")
    return tuple(indexes)


@dataclass(frozen=True)
class MonitoringJob:
    dataset_source: str | None = setting(
        "dataset_source",
        None,
        "folder of Data Capture JSONL files (searched recursively), or s3://bucket/prefix/{endpoint}/{variant} (the window's hour folders are downloaded)",
        "--captures",
    )
    output_path: str | None = setting("output_path", None, "folder for statistics.json, constraint_violations.json and the report", "--out")
    start_time: datetime | None = setting("start_time", None, "window start (ISO 8601, UTC; inclusive)", "--start", parse=parse_time)
    end_time: datetime | None = setting("end_time", None, "window end (ISO 8601, UTC; exclusive)", "--end", parse=parse_time)
    hours: int | None = setting(
        "SM_VISION_MONITOR_HOURS",
        None,
        "instead of start_time: the window is the N whole UTC hours before end_time (default: now), e.g. a schedule's last hour",
        "--hours",
        minimum=1,
    )
    capture_indexes: tuple[str, ...] = setting(
        "dataset_format",
        (CAPTURE_INPUT, CAPTURE_OUTPUT),
        "Model Monitor's dataset format: which capture indexes exist",
        parse=parse_dataset_format,
    )
    publish_cloudwatch_metrics: bool = setting(
        "publish_cloudwatch_metrics", False, "Enabled: write CloudWatch metric records", "--publish-cloudwatch-metrics", parse=parse_enabled
    )
    endpoint_name: str | None = setting("sagemaker_endpoint_name", None, "the endpoint (a CloudWatch dimension)", "--endpoint")
    schedule_name: str | None = setting(
        "sagemaker_monitoring_schedule_name", None, "the monitoring schedule (a CloudWatch dimension)", "--schedule"
    )
    baseline_constraints: str | None = setting(
        "baseline_constraints",
        None,
        "a constraints.json whose monitoring_config.sagemaker_vision thresholds apply",
        "--baseline-constraints",
    )
    baseline_statistics: str | None = setting(
        "baseline_statistics", None, "a statistics.json that must be the model's own baseline", "--baseline-statistics"
    )
    datacapture_prefix: str | None = setting(
        "sagemaker_endpoint_datacapture_prefix", None, "the endpoint's Data Capture S3 prefix (recorded)"
    )
    cloudwatch_namespace: str | None = setting(
        "SM_VISION_MONITOR_CLOUDWATCH_NAMESPACE",
        None,
        "also publish the CloudWatch records with PutMetricData in this namespace (a Processing job; Model Monitor publishes them itself)",
        "--cloudwatch-namespace",
    )

    def __post_init__(self):
        settings.check(self)
        if not self.dataset_source:
            raise ConfigError(
                "dataset_source is not set: pass --captures DIR (a folder of Data Capture .jsonl files) or set dataset_source"
            )
        if not self.output_path:
            raise ConfigError("output_path is not set: pass --out DIR or set output_path")
        if self.start_time and self.end_time and self.start_time >= self.end_time:
            raise ConfigError(f"start_time={self.start_time.isoformat()} is not before end_time={self.end_time.isoformat()}")
        if self.hours and self.start_time:
            raise ConfigError("give start_time (--start) or SM_VISION_MONITOR_HOURS (--hours), not both")
        if self.dataset_source.startswith("s3://") and not (self.hours or (self.start_time and self.end_time)):
            raise ConfigError(
                f"dataset_source={self.dataset_source}: an S3 source needs a window (--start and --end, or --hours), so only its hours are read"
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None, now: datetime | None = None
    ) -> MonitoringJob:
        """The job; with `hours`, its window made explicit: the whole hours before end_time (or now)."""
        job = settings.load(cls, os.environ if environ is None else environ, overrides)
        if not job.hours:
            return job
        end = (job.end_time or now or datetime.now(timezone.utc)).replace(minute=0, second=0, microsecond=0)
        return dataclasses.replace(job, start_time=end - timedelta(hours=job.hours), end_time=end, hours=None)

    @property
    def captures_outputs(self) -> bool:
        return CAPTURE_OUTPUT in self.capture_indexes


@dataclass(frozen=True)
class MonitorSettings:
    # --- the model and how it runs ---
    model: str = setting(
        "SM_VISION_MONITOR_MODEL",
        DEFAULT_MODEL,
        "the model: a directory (an unpacked model.tar.gz), a model.tar.gz, or s3://.../model.tar.gz (downloaded with the job's role)",
        "--model",
    )
    device: str = setting("SM_VISION_MONITOR_DEVICE", "auto", "auto, cpu, cuda or cuda:N", "--device")
    batch_size: int = setting("SM_VISION_MONITOR_BATCH_SIZE", 32, "images per forward pass", "--batch-size", minimum=1)
    max_image_pixels: int | None = setting(
        "SM_VISION_MAX_IMAGE_PIXELS", None, "largest image decoded (width x height; default: the server's)", minimum=1
    )
    max_aspect_ratio: float | None = setting(
        "SM_VISION_MAX_ASPECT_RATIO", None, "largest long side / short side decoded (default: the server's)", minimum=1.0
    )
    # --- thresholds (also read from a baseline constraints.json) ---
    alpha: float = setting(
        "SM_VISION_MONITOR_ALPHA",
        0.05,
        "false-alarm rate of one window over all drift tests: each of the n tests runs at alpha / n (Bonferroni)",
        "--alpha",
        minimum=1e-6,
        maximum=0.5,
    )
    permutations: int = setting(
        "SM_VISION_MONITOR_PERMUTATIONS", 1000, "permutations of the MMD test (its smallest p-value is 1 / (permutations + 1))", minimum=99
    )
    min_images: int = setting(
        "SM_VISION_MONITOR_MIN_IMAGES", 30, "fewest decoded images for the drift tests to run (fewer: reported, not tested)", minimum=2
    )
    max_drift_images: int = setting(
        "SM_VISION_MONITOR_MAX_DRIFT_IMAGES",
        1000,
        "window images in the MMD test (a random sample above it; the other tests use all)",
        minimum=10,
    )
    min_effect: float = setting(
        "SM_VISION_MONITOR_MIN_EFFECT",
        0.1,
        "smallest effect that counts as drift (large windows make tiny shifts significant): a Kolmogorov-Smirnov distance, the labels' "
        "total-variation distance, or how far above 0.5 the chance is that a captured image is more unusual than a baseline one",
        minimum=0.0,
        maximum=1.0,
    )
    ood_level: float = setting(
        "SM_VISION_MONITOR_OOD_LEVEL",
        0.05,
        "an image counts as out-of-distribution in the reported share when its conformal p-value is at most this "
        "(its OOD percentile is above 100 x (1 - level))",
        minimum=1e-6,
        maximum=0.5,
    )
    max_decode_failure_rate: float = setting(
        "SM_VISION_MONITOR_MAX_DECODE_FAILURE_RATE",
        0.02,
        "largest share of captured images that may fail to decode",
        minimum=0.0,
        maximum=1.0,
    )
    min_records: int = setting(
        "SM_VISION_MONITOR_MIN_RECORDS", 1, "fewest captured records a window must hold (0: no volume check)", minimum=0
    )
    min_agreement: float = setting(
        "SM_VISION_MONITOR_MIN_AGREEMENT",
        0.9,
        "smallest share of captured answers whose label the monitor's model reproduces (less: the job runs another model)",
        minimum=0.0,
        maximum=1.0,
    )
    # --- the report ---
    report_images: bool = setting(
        "SM_VISION_MONITOR_REPORT_IMAGES", True, "put thumbnails of the most out-of-distribution captured images in the report"
    )
    seed: int = setting("SM_VISION_MONITOR_SEED", 0, "seed of the samples and permutations (runs are reproducible)")

    THRESHOLDS = (
        "alpha",
        "permutations",
        "min_images",
        "max_drift_images",
        "min_effect",
        "ood_level",
        "max_decode_failure_rate",
        "min_records",
        "min_agreement",
    )

    def __post_init__(self):
        settings.check(self)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, str] | None = None,
        constraints: Mapping[str, object] | None = None,
    ) -> MonitorSettings:
        """Flags, then the environment, then a baseline constraints.json's thresholds."""
        thresholds = {name: str(value) for name, value in (constraints or {}).items() if name in cls.THRESHOLDS}
        return settings.load(cls, os.environ if environ is None else environ, overrides, thresholds, "constraints.json sagemaker_vision")

    def thresholds(self) -> dict[str, object]:
        """What a baseline's constraints.json records (monitoring_config.sagemaker_vision)."""
        return {name: getattr(self, name) for name in self.THRESHOLDS}


def flag_fields(cls) -> list[dataclasses.Field]:
    return [spec for spec in dataclasses.fields(cls) if spec.metadata["flag"]]

"""What a monitoring run writes, besides the report.

    {output_path}/statistics.json             Model Monitor's shape, plus a sagemaker_vision section
    {output_path}/constraint_violations.json  {"violations": [{"feature_name", "constraint_check_type", "description"}]}
    /opt/ml/output/metrics/cloudwatch/monitor.jsonl   CloudWatch records, one per line (publish_cloudwatch_metrics)
    /opt/ml/output/message                    "Completed: ...", "CompletedWithViolations: ..." or "Failed: ..."
                                              (a processing job's ExitMessage: DescribeProcessingJob returns its first KB)

The CloudWatch records are shaped like PutMetricData's MetricDatum with the Endpoint
and MonitoringSchedule dimensions, as Model Monitor's bring-your-own-container contract
asks; Model Monitor publishes them in the /aws/sagemaker/Endpoint/data-metrics namespace.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from container import SageMakerPaths
from container.monitoring import MonitoringJob
from monitor.captures import WindowCounts
from monitor.checks import Check
from monitor.window import Window
from vision import imagestats, modelmonitor
from vision.baseline import Baseline

STATISTICS_FILE = "statistics.json"
VIOLATIONS_FILE = "constraint_violations.json"
CLOUDWATCH_FILE = "monitor.jsonl"
NAMESPACE = "/aws/sagemaker/Endpoint/data-metrics"  # where Model Monitor publishes them (its default)
METRICS_PER_CALL = 1000  # PutMetricData takes at most 1000 metrics per request
MESSAGE_LIMIT = 1024  # a processing job's ExitMessage holds at most 1 KB


def cloudwatch_dir(paths: SageMakerPaths) -> Path:
    return paths.output_dir / "metrics" / "cloudwatch"


def message_file(paths: SageMakerPaths) -> Path:
    return paths.output_dir / "message"


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if moment else None


def statistics_document(
    job: MonitoringJob, window: Window, counts: WindowCounts, baseline: Baseline, baseline_id: str, checks: Sequence[Check], extra: dict
) -> dict:
    percentiles = baseline.ood_percentile(distances=np.array(window.ood_distance)) if window.size else np.zeros(0)
    features = [
        modelmonitor.numeric_feature("max_probability", window.max_probability),
        modelmonitor.numeric_feature("ood_percentile", percentiles),
    ]
    features += [
        modelmonitor.numeric_feature(
            f"image_{name}", window.column(name), integral=name in ("width", "height"), missing=window.failure_count
        )
        for name in imagestats.NUMERIC
    ]
    features.append(modelmonitor.string_feature("predicted_label", [window.classes[i] for i in window.labels]))
    features.append(modelmonitor.string_feature("image_format", window.formats, missing=window.failure_count))
    section = {
        "kind": "window",
        "window": {"start": _iso(job.start_time), "end": _iso(job.end_time)},
        "endpoint": job.endpoint_name,
        "monitoring_schedule": job.schedule_name,
        "baseline_id": baseline_id,
        "volume": {
            "capture_files": counts.files,
            "records": counts.records,
            "records_outside_window": counts.outside,
            "malformed_lines": counts.malformed,
            "images": window.size,
            "decode_failures": dict(window.failures),
            "decode_failure_examples": window.failure_examples,
            "not_evaluated": dict(counts.skipped),
        },
        "checks": [check.to_dict() for check in checks],
        **extra,
    }
    return modelmonitor.statistics(window.size, features, section)


def violations_document(checks: Sequence[Check]) -> dict:
    return {"violations": [check.violation() for check in checks if check.violated]}


def metric_values(window: Window, counts: WindowCounts, checks: Sequence[Check], baseline: Baseline, ood_level: float) -> dict[str, float]:
    """The numbers a dashboard or an alarm wants, by metric name."""
    values: dict[str, float] = {
        "record_count": float(counts.records),
        "image_count": float(window.size),
        "violation_count": float(sum(check.violated for check in checks)),
    }
    if window.size:
        distances = np.array(window.ood_distance)
        values["mean_max_probability"] = float(np.mean(window.max_probability))
        values["mean_ood_percentile"] = float(baseline.ood_percentile(distances=distances).mean())
        values["ood_share"] = float((baseline.ood_p_value(distances=distances) <= ood_level).mean())
    for check in checks:
        if check.skipped:
            continue
        if check.statistic is not None:
            values[f"{check.name}_statistic"] = float(check.statistic)
        if check.p_value is not None:
            values[f"{check.name}_p_value"] = float(check.p_value)
    return values


def cloudwatch_records(values: dict[str, float], job: MonitoringJob, when: datetime) -> list[dict]:
    dimensions = [
        {"Name": "Endpoint", "Value": job.endpoint_name or "unknown"},
        {"Name": "MonitoringSchedule", "Value": job.schedule_name or "unknown"},
    ]
    timestamp = _iso(when)
    return [
        {
            "MetricName": name,
            "Timestamp": timestamp,
            "Dimensions": dimensions,
            "Value": value,
            "Unit": "Count" if name.endswith("_count") else "None",
        }
        for name, value in values.items()
    ]


def put_metrics(namespace: str, records: list[dict], client=None) -> None:
    """The CloudWatch records, published with PutMetricData (a Processing job: Model Monitor
    publishes the records file itself) with the job's own credentials."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or boto3.client("cloudwatch")
    data = [{**record, "Timestamp": datetime.fromisoformat(record["Timestamp"].replace("Z", "+00:00"))} for record in records]
    try:
        for first in range(0, len(data), METRICS_PER_CALL):
            client.put_metric_data(Namespace=namespace, MetricData=data[first : first + METRICS_PER_CALL])
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "error")
        raise RuntimeError(
            f"cannot publish the metrics to CloudWatch namespace {namespace}: {code} (does the job's role have cloudwatch:PutMetricData?)"
        ) from None
    except BotoCoreError as err:
        raise RuntimeError(f"cannot publish the metrics to CloudWatch namespace {namespace}: {err}") from None


def exit_message(checks: Sequence[Check]) -> str:
    violated = [check for check in checks if check.violated]
    if not violated:
        return "Completed: Job completed successfully with no violations."
    return f"CompletedWithViolations: {len(violated)} violations; " + "; ".join(f"{c.name}: {c.description}" for c in violated)


def write_message(paths: SageMakerPaths, text: str) -> None:
    """The job's exit message (at most 1 KB of UTF-8). Never raises: it also runs on the way out of a failure."""
    text = text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."
    try:
        message_file(paths).parent.mkdir(parents=True, exist_ok=True)
        message_file(paths).write_text(text + "\n", encoding="utf-8")
    except OSError:
        pass


def write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_lines(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))

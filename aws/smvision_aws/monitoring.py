"""Watching an endpoint: the image's `monitor` on a schedule, and an alarm on what it finds.

Two ways to run it every hour (docs/monitoring.md says which account gets which):
- a Model Monitor schedule (CreateMonitoringSchedule, the image as its custom
  container), for accounts that have Model Monitor (closed to new customers since
  2026-07-30); Model Monitor hands the job the hour's captures and publishes its
  CloudWatch records in /aws/sagemaker/Endpoint/data-metrics;
- for every account, an EventBridge Scheduler schedule whose target is SageMaker's
  CreateProcessingJob (a universal target: no Lambda, no pipeline in between). The
  job is the same `monitor`: it reads the last whole hour of captures from the capture
  prefix itself (`--hours 1 --end <the schedule's time>`, the only value a schedule
  can pass) and publishes its records with PutMetricData in our own namespace.
  EventBridge Scheduler rather than a Pipeline schedule: a pipeline adds a definition,
  an execution per hour and a step in between for one job, and still cannot compute
  the window from its start time.
Either way, a CloudWatch alarm on the run's `violation_count` (optionally notifying an
SNS topic). Everything is named after the endpoint (`{endpoint}-monitor`, or
`{endpoint}-monitor-{variant}` for one model of a multi-model endpoint), which is how
`cleanup` and `monitor delete` find it again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from smvision_aws import processing
from smvision_aws.hosting import DEFAULT_VARIANT
from smvision_aws.usage import UsageError

VIA = ("processing", "model-monitor")
MODEL_MONITOR_NAMESPACE = "/aws/sagemaker/Endpoint/data-metrics"  # where Model Monitor publishes a custom container's records
NAMESPACE = "sagemaker-vision/monitoring"  # where a scheduled Processing job publishes them
# Model Monitor's hourly schedule; the Processing job's runs 10 minutes past the hour, so
# the last hour's capture files (written every minute or so) are all there.
MODEL_MONITOR_SCHEDULE = "cron(0 * ? * * *)"
PROCESSING_SCHEDULE = "cron(10 * * * ? *)"
CREATE_PROCESSING_JOB = "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob"
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"  # EventBridge Scheduler fills these in at each run
EXECUTION_ID = "<aws.scheduler.execution-id>"
MODEL_MONITOR_INPUT = "/opt/ml/processing/input/endpoint"
RESULTS = "results"


def monitor_name(endpoint: str, variant: str = DEFAULT_VARIANT) -> str:
    """The schedule's and the alarm's name: {endpoint}-monitor[-{variant}], within 63 characters."""
    suffix = "" if variant == DEFAULT_VARIANT else "-" + re.sub(r"[^A-Za-z0-9]+", "-", variant).strip("-")
    return f"{endpoint}-monitor{suffix}"[:63].rstrip("-")


def _s3(flag: str, uri: str | None) -> str:
    if not uri or not uri.startswith("s3://") or not uri[5:].split("/")[0]:
        raise UsageError(f"{flag} must be s3://bucket/prefix (got {uri!r})")
    return uri.rstrip("/")


@dataclass(frozen=True)
class MonitorSpec:
    endpoint: str
    image_uri: str
    role: str  # the monitoring job's role: reads the model and the captures, writes the results
    model_data: str  # s3://.../model.tar.gz, downloaded by the job (SM_VISION_MONITOR_MODEL)
    output_uri: str  # s3:// prefix of each run's statistics, violations and report
    via: str = "processing"
    variant: str = DEFAULT_VARIANT  # a multi-model endpoint: the model's name (its capture folder)
    capture_uri: str | None = None  # processing: the capture destination (its {endpoint}/{variant}/ holds the hours)
    scheduler_role: str | None = None  # processing: the role EventBridge Scheduler assumes to start the job
    baseline_uri: str | None = None  # model-monitor: s3:// prefix holding the model's constraints.json and statistics.json
    schedule_expression: str | None = None
    instance_type: str = "ml.m5.xlarge"
    volume_size_gb: int = 30
    max_runtime_s: int = 3600
    alarm_topic: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    tags: list[dict[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return monitor_name(self.endpoint, self.variant)

    @property
    def namespace(self) -> str:
        return MODEL_MONITOR_NAMESPACE if self.via == "model-monitor" else NAMESPACE

    def check(self) -> None:
        if self.via not in VIA:
            raise UsageError(f"--via {self.via!r}: choose one of {', '.join(VIA)}")
        _s3("--model-data", self.model_data)
        _s3("--output", self.output_uri)
        if self.via == "processing":
            _s3("--capture-uri", self.capture_uri)
            if not self.scheduler_role:
                raise UsageError("--via processing needs --scheduler-role ARN: the role EventBridge Scheduler assumes to start the job")
        elif self.capture_uri or self.scheduler_role:
            raise UsageError("--capture-uri and --scheduler-role are for --via processing: Model Monitor brings the captures itself")
        if self.via == "model-monitor" and self.variant != DEFAULT_VARIANT:
            raise UsageError("Model Monitor watches whole endpoints; monitor one model of a multi-model endpoint --via processing")
        if self.baseline_uri is not None:
            _s3("--baseline-uri", self.baseline_uri)
        if self.alarm_topic and not (self.alarm_topic.startswith("arn:") and ":sns:" in self.alarm_topic):
            raise UsageError(f"--alarm-topic {self.alarm_topic!r}: expected an SNS topic ARN")
        if not 60 <= self.max_runtime_s <= 3600:
            raise UsageError("--max-run must be 60..3600 seconds: an hourly job must end before the next one")


def model_monitor_request(spec: MonitorSpec) -> dict:
    """CreateMonitoringSchedule: the image as Model Monitor's custom container, every hour."""
    spec.check()
    definition = {
        "MonitoringInputs": [{"EndpointInput": {"EndpointName": spec.endpoint, "LocalPath": MODEL_MONITOR_INPUT}}],
        "MonitoringOutputConfig": {
            "MonitoringOutputs": [
                {"S3Output": {"S3Uri": spec.output_uri, "LocalPath": processing.output_path(RESULTS), "S3UploadMode": "EndOfJob"}}
            ]
        },
        "MonitoringResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": spec.instance_type, "VolumeSizeInGB": spec.volume_size_gb}
        },
        # No command: the entrypoint sees Model Monitor's environment and runs `monitor`.
        "MonitoringAppSpecification": {"ImageUri": spec.image_uri},
        "StoppingCondition": {"MaxRuntimeInSeconds": spec.max_runtime_s},
        "Environment": {"SM_VISION_MONITOR_MODEL": spec.model_data, **spec.environment},
        "RoleArn": spec.role,
    }
    if spec.baseline_uri:
        definition["BaselineConfig"] = {
            "ConstraintsResource": {"S3Uri": f"{spec.baseline_uri}/constraints.json"},
            "StatisticsResource": {"S3Uri": f"{spec.baseline_uri}/statistics.json"},
        }
    request = {
        "MonitoringScheduleName": spec.name,
        "MonitoringScheduleConfig": {
            "ScheduleConfig": {"ScheduleExpression": spec.schedule_expression or MODEL_MONITOR_SCHEDULE},
            "MonitoringJobDefinition": definition,
        },
    }
    if spec.tags:
        request["Tags"] = spec.tags
    return request


def processing_job_request(spec: MonitorSpec) -> dict:
    """The CreateProcessingJob a schedule starts: `monitor` over the last whole hour of the
    endpoint's captures, results under the run's time, metrics published by the job."""
    command = ["monitor", "--captures", f"{spec.capture_uri}/{spec.endpoint}/{spec.variant}", "--out", processing.output_path(RESULTS)]
    command += ["--hours", "1", "--end", SCHEDULED_TIME, "--endpoint", spec.endpoint, "--schedule", spec.name]
    command += ["--cloudwatch-namespace", NAMESPACE]
    job = processing.ProcessingSpec(
        image_uri=spec.image_uri,
        role=spec.role,
        command=command,
        outputs={RESULTS: f"{spec.output_uri}/{SCHEDULED_TIME}/"},
        instance_type=spec.instance_type,
        volume_size_gb=spec.volume_size_gb,
        max_runtime_s=spec.max_runtime_s,
        environment={"SM_VISION_MONITOR_MODEL": spec.model_data, **spec.environment},
        tags=spec.tags,
    )
    # Each run's job is named by the schedule's execution id (16 letters and digits).
    return processing.processing_request(job, f"{spec.name[:40].rstrip('-')}-{EXECUTION_ID}")


def scheduler_request(spec: MonitorSpec) -> dict:
    """CreateSchedule: every hour, EventBridge Scheduler calls CreateProcessingJob itself."""
    spec.check()
    return {
        "Name": spec.name,
        "ScheduleExpression": spec.schedule_expression or PROCESSING_SCHEDULE,
        "ScheduleExpressionTimezone": "UTC",
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED",
        "Description": f"sagemaker-vision monitor of {spec.endpoint}/{spec.variant}: the last hour of captures",
        "Target": {
            "Arn": CREATE_PROCESSING_JOB,
            "RoleArn": spec.scheduler_role,
            "Input": json.dumps(processing_job_request(spec)),
            "RetryPolicy": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 3600},
        },
    }


def alarm_request(spec: MonitorSpec) -> dict:
    """PutMetricAlarm: any violation in a run's window (violation_count > 0)."""
    request = {
        "AlarmName": spec.name,
        "AlarmDescription": f"sagemaker-vision monitor of {spec.endpoint}/{spec.variant}: a run found drift or a data-quality violation",
        "Namespace": spec.namespace,
        "MetricName": "violation_count",
        "Dimensions": [{"Name": "Endpoint", "Value": spec.endpoint}, {"Name": "MonitoringSchedule", "Value": spec.name}],
        "Statistic": "Maximum",
        "Period": 3600,
        "EvaluationPeriods": 1,
        "Threshold": 0.0,
        "ComparisonOperator": "GreaterThanThreshold",
        # An hour without a run is not drift; the run's own volume check reports missing traffic.
        "TreatMissingData": "notBreaching",
    }
    if spec.alarm_topic:
        request["AlarmActions"] = [spec.alarm_topic]
    if spec.tags:
        request["Tags"] = spec.tags
    return request


def schedule(session, spec: MonitorSpec) -> dict:
    """The schedule (Model Monitor's or EventBridge Scheduler's) and its alarm."""
    if spec.via == "model-monitor":
        arn = session.sagemaker_client.create_monitoring_schedule(**model_monitor_request(spec))["MonitoringScheduleArn"]
    else:
        arn = session.client("scheduler").create_schedule(**scheduler_request(spec))["ScheduleArn"]
    session.client("cloudwatch").put_metric_alarm(**alarm_request(spec))
    return {
        "schedule": spec.name,
        "schedule_arn": arn,
        "via": spec.via,
        "alarm": spec.name,
        "namespace": spec.namespace,
        "results": spec.output_uri,
    }

"""deploy --capture (SageMaker's Data Capture on instance endpoints, the image's own
capture on serverless and multi-model ones) and monitor (a Model Monitor schedule, or
an EventBridge Scheduler schedule starting the Processing job; the alarm; delete): the
requests sent, asserted with Stubber."""

from __future__ import annotations

import json

import pytest
from smvision_aws import cli
from smvision_aws.commands.endpoints import cmd_deploy
from smvision_aws.commands.workflow import cmd_monitor
from smvision_aws.usage import UsageError

from tests.support.aws import ARN, IMAGE, MODEL_DATA, NOW, ROLE, described_training_job, expect_endpoint, instance_variant

CAPTURE = "s3://smv-bucket/shapes/capture"
OUTPUT = "s3://smv-bucket/shapes/monitoring"
SCHEDULER_ROLE = "arn:aws:iam::123456789012:role/smvision-scheduler"
TOPIC = "arn:aws:sns:us-east-1:123456789012:shapes-alerts"
DATA_CAPTURE = {
    "EnableCapture": True,
    "InitialSamplingPercentage": 20,
    "DestinationS3Uri": CAPTURE,
    "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
    # Our answers (and JSON requests) are stored as JSON text, not base64.
    "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json", "application/jsonlines"]},
}


def deploy(*extra: str):
    base = ["deploy", "--image", IMAGE, "--role", ROLE, "--model-data", MODEL_DATA, "--endpoint-name", "shapes-prod", "--no-wait"]
    return cli.get_args_parser().parse_args([*base, *extra])


def test_an_instance_endpoint_gets_sagemakers_data_capture(session, sm_stub):
    expect_endpoint(sm_stub, "shapes-prod", instance_variant("shapes-prod"), config_extra={"DataCaptureConfig": DATA_CAPTURE})
    result = cmd_deploy(deploy("--capture", "20", "--capture-uri", CAPTURE + "/"), session=session)
    assert result["capture"] == {"percent": 20, "uri": CAPTURE, "by": "data-capture"}


def test_a_serverless_endpoint_captures_in_the_image(session, sm_stub):
    """Serverless endpoints have no Data Capture: the image's own capture writes the same
    records under the same layout, with the endpoint's role."""
    env = {"SM_VISION_CAPTURE_PERCENT": "20", "SM_VISION_CAPTURE_S3_URI": CAPTURE, "SM_VISION_CAPTURE_ENDPOINT": "shapes-prod"}
    variant = {"VariantName": "AllTraffic", "ModelName": "shapes-prod", "InitialVariantWeight": 1}
    variant["ServerlessConfig"] = {"MemorySizeInMB": 4096, "MaxConcurrency": 5}
    expect_endpoint(sm_stub, "shapes-prod", variant, model_env=env)
    result = cmd_deploy(deploy("--serverless", "--capture", "20", "--capture-uri", CAPTURE), session=session)
    assert result["capture"]["by"] == "image"


def test_a_multi_model_endpoint_captures_each_model_in_the_image(session, sm_stub):
    env = {"SM_VISION_CAPTURE_PERCENT": "5", "SM_VISION_CAPTURE_S3_URI": CAPTURE, "SM_VISION_CAPTURE_ENDPOINT": "shapes-mme"}
    prefix = "s3://smv-bucket/shapes/models/"
    container = {"Image": IMAGE, "Mode": "MultiModel", "ModelDataUrl": prefix, "Environment": env}
    sm_stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}:model/shapes-mme"},
        {"ModelName": "shapes-mme", "ExecutionRoleArn": ROLE, "PrimaryContainer": container},
    )
    sm_stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}:endpoint-config/shapes-mme"},
        {"EndpointConfigName": "shapes-mme", "ProductionVariants": [instance_variant("shapes-mme")]},
    )
    sm_stub.add_response(
        "create_endpoint", {"EndpointArn": f"{ARN}:endpoint/shapes-mme"}, {"EndpointName": "shapes-mme", "EndpointConfigName": "shapes-mme"}
    )
    args = cli.get_args_parser().parse_args(
        ["deploy", "--image", IMAGE, "--role", ROLE, "--multi-model", "--model-data-prefix", prefix, "--endpoint-name", "shapes-mme"]
        + ["--no-wait", "--capture", "5", "--capture-uri", CAPTURE]
    )
    assert cmd_deploy(args, session=session)["capture"]["by"] == "image"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--capture", "20"], "--capture needs --capture-uri"),
        (["--capture-uri", CAPTURE], "--capture-uri goes with --capture PCT"),
        (["--capture", "0", "--capture-uri", CAPTURE], "--capture 0: a percentage of requests, 1..100"),
        (["--capture", "10", "--capture-uri", "smv-bucket/capture"], "captures go to an s3://bucket/prefix"),
    ],
)
def test_capture_usage_errors_call_nothing(session, sm_stub, extra, message):
    with pytest.raises(UsageError, match=message):
        cmd_deploy(deploy(*extra), session=session)


def test_local_deploy_points_at_the_images_own_capture(session):
    args = cli.get_args_parser().parse_args(
        ["deploy", "--local", "--image", "sagemaker-vision:test", "--model-data", "file:///tmp/model.tar.gz", "--endpoint-name", "x"]
        + ["--capture", "10", "--capture-uri", CAPTURE]
    )
    with pytest.raises(UsageError, match="SM_VISION_CAPTURE_DIR"):
        cmd_deploy(args, session=session)


# --- monitor schedule / delete ------------------------------------------------------------


def monitor(*extra: str):
    return cli.get_args_parser().parse_args(["monitor", *extra, "--image", IMAGE, "--role", ROLE, "--endpoint-name", "shapes-prod"])


def alarm(namespace: str, name: str = "shapes-prod-monitor", **extra) -> dict:
    return {
        "AlarmName": name,
        "AlarmDescription": f"sagemaker-vision monitor of shapes-prod/{extra.pop('variant', 'AllTraffic')}: a run found drift or a data-quality violation",
        "Namespace": namespace,
        "MetricName": "violation_count",
        "Dimensions": [{"Name": "Endpoint", "Value": "shapes-prod"}, {"Name": "MonitoringSchedule", "Value": name}],
        "Statistic": "Maximum",
        "Period": 3600,
        "EvaluationPeriods": 1,
        "Threshold": 0.0,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        **extra,
    }


class ProcessingJob:
    """The schedule's Input: CreateProcessingJob's request as JSON, compared as data."""

    def __init__(self, expected: dict):
        self.expected = expected

    def __eq__(self, other) -> bool:
        return json.loads(other) == self.expected

    def __repr__(self) -> str:
        return json.dumps(self.expected)


def test_every_account_gets_a_scheduled_processing_job_and_an_alarm(session, stubber):
    scheduler, cloudwatch = stubber("scheduler"), stubber("cloudwatch")
    job = {
        # EventBridge Scheduler fills in <aws.scheduler.*> at each run: a job name per run,
        # the window's end and the results folder from the run's scheduled time.
        "ProcessingJobName": "shapes-prod-monitor-<aws.scheduler.execution-id>",
        "RoleArn": ROLE,
        "AppSpecification": {
            "ImageUri": IMAGE,
            "ContainerArguments": [
                "monitor",
                "--captures",
                f"{CAPTURE}/shapes-prod/AllTraffic",
                "--out",
                "/opt/ml/processing/output/results",
            ]
            + ["--hours", "1", "--end", "<aws.scheduler.scheduled-time>", "--endpoint", "shapes-prod", "--schedule", "shapes-prod-monitor"]
            + ["--cloudwatch-namespace", "sagemaker-vision/monitoring"],
        },
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "results",
                    "S3Output": {
                        "S3Uri": f"{OUTPUT}/<aws.scheduler.scheduled-time>/",
                        "LocalPath": "/opt/ml/processing/output/results",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "Environment": {"SM_VISION_MONITOR_MODEL": MODEL_DATA, "SM_VISION_MONITOR_ALPHA": "0.01"},
    }
    scheduler.add_response(
        "create_schedule",
        {"ScheduleArn": "arn:aws:scheduler:us-east-1:123456789012:schedule/default/shapes-prod-monitor"},
        {
            "Name": "shapes-prod-monitor",
            "ScheduleExpression": "cron(10 * * * ? *)",
            "ScheduleExpressionTimezone": "UTC",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "State": "ENABLED",
            "Description": "sagemaker-vision monitor of shapes-prod/AllTraffic: the last hour of captures",
            "Target": {
                "Arn": "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob",
                "RoleArn": SCHEDULER_ROLE,
                "Input": ProcessingJob(job),
                "RetryPolicy": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 3600},
            },
        },
    )
    cloudwatch.add_response("put_metric_alarm", {}, alarm("sagemaker-vision/monitoring"))
    args = monitor("schedule", "--model-data", MODEL_DATA, "--capture-uri", CAPTURE + "/", "--scheduler-role", SCHEDULER_ROLE)
    args.output, args.env = OUTPUT + "/", ["SM_VISION_MONITOR_ALPHA=0.01"]
    result = cmd_monitor(args, session=session)
    assert result["schedule"] == result["alarm"] == "shapes-prod-monitor" and result["via"] == "processing"
    assert result["namespace"] == "sagemaker-vision/monitoring"


def test_one_model_of_a_multi_model_endpoint_is_monitored_from_its_own_folder(session, stubber):
    scheduler, cloudwatch = stubber("scheduler"), stubber("cloudwatch")
    created = {}

    class Named:
        def __eq__(self, other):
            created["input"] = json.loads(other)
            return True

    scheduler.add_response(
        "create_schedule",
        {"ScheduleArn": "arn:aws:scheduler:us-east-1:123456789012:schedule/default/shapes-prod-monitor-model-b-tar-gz"},
        {
            "Name": "shapes-prod-monitor-model-b-tar-gz",
            "ScheduleExpression": "cron(10 * * * ? *)",
            "ScheduleExpressionTimezone": "UTC",
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "State": "ENABLED",
            "Description": "sagemaker-vision monitor of shapes-prod/model-b.tar.gz: the last hour of captures",
            "Target": {
                "Arn": "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob",
                "RoleArn": SCHEDULER_ROLE,
                "Input": Named(),
                "RetryPolicy": {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 3600},
            },
        },
    )
    cloudwatch.add_response(
        "put_metric_alarm", {}, alarm("sagemaker-vision/monitoring", "shapes-prod-monitor-model-b-tar-gz", variant="model-b.tar.gz")
    )
    args = monitor("schedule", "--model-data", MODEL_DATA, "--capture-uri", CAPTURE, "--scheduler-role", SCHEDULER_ROLE, "--output", OUTPUT)
    args.variant = "model-b.tar.gz"
    cmd_monitor(args, session=session)
    arguments = created["input"]["AppSpecification"]["ContainerArguments"]
    assert arguments[2] == f"{CAPTURE}/shapes-prod/model-b.tar.gz"
    assert created["input"]["ProcessingJobName"] == "shapes-prod-monitor-model-b-tar-gz-<aws.scheduler.execution-id>"


def test_accounts_with_model_monitor_get_its_schedule_and_an_alarm_to_sns(session, sm_stub, stubber):
    cloudwatch = stubber("cloudwatch")
    sm_stub.add_response("describe_training_job", described_training_job("smv-1"), {"TrainingJobName": "smv-1"})
    sm_stub.add_response(
        "create_monitoring_schedule",
        {"MonitoringScheduleArn": f"{ARN}:monitoring-schedule/shapes-prod-monitor"},
        {
            "MonitoringScheduleName": "shapes-prod-monitor",
            "MonitoringScheduleConfig": {
                "ScheduleConfig": {"ScheduleExpression": "cron(0 * ? * * *)"},
                "MonitoringJobDefinition": {
                    "MonitoringInputs": [
                        {"EndpointInput": {"EndpointName": "shapes-prod", "LocalPath": "/opt/ml/processing/input/endpoint"}}
                    ],
                    "MonitoringOutputConfig": {
                        "MonitoringOutputs": [
                            {"S3Output": {"S3Uri": OUTPUT, "LocalPath": "/opt/ml/processing/output/results", "S3UploadMode": "EndOfJob"}}
                        ]
                    },
                    "MonitoringResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}},
                    "MonitoringAppSpecification": {"ImageUri": IMAGE},
                    "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
                    "Environment": {"SM_VISION_MONITOR_MODEL": MODEL_DATA},
                    "RoleArn": ROLE,
                    "BaselineConfig": {
                        "ConstraintsResource": {"S3Uri": "s3://smv-bucket/shapes/baseline/constraints.json"},
                        "StatisticsResource": {"S3Uri": "s3://smv-bucket/shapes/baseline/statistics.json"},
                    },
                },
            },
            "Tags": [{"Key": "project", "Value": "shapes"}],
        },
    )
    cloudwatch.add_response(
        "put_metric_alarm",
        {},
        alarm("/aws/sagemaker/Endpoint/data-metrics", AlarmActions=[TOPIC], Tags=[{"Key": "project", "Value": "shapes"}]),
    )
    args = monitor("schedule", "--via", "model-monitor", "--training-job", "smv-1", "--output", OUTPUT, "--alarm-topic", TOPIC)
    args.baseline_uri, args.tag = "s3://smv-bucket/shapes/baseline/", ["project=shapes"]
    result = cmd_monitor(args, session=session)
    assert result["schedule_arn"] == f"{ARN}:monitoring-schedule/shapes-prod-monitor"
    assert result["namespace"] == "/aws/sagemaker/Endpoint/data-metrics"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--output", OUTPUT, "--capture-uri", CAPTURE, "--scheduler-role", SCHEDULER_ROLE], "give --model-data"),
        (["--model-data", MODEL_DATA, "--capture-uri", CAPTURE, "--scheduler-role", SCHEDULER_ROLE], "--output must be s3://"),
        (["--model-data", MODEL_DATA, "--output", OUTPUT, "--scheduler-role", SCHEDULER_ROLE], "--capture-uri must be s3://"),
        (["--model-data", MODEL_DATA, "--output", OUTPUT, "--capture-uri", CAPTURE], "needs --scheduler-role"),
        (
            ["--via", "model-monitor", "--model-data", MODEL_DATA, "--output", OUTPUT, "--capture-uri", CAPTURE],
            "Model Monitor brings the captures",
        ),
        (
            ["--via", "model-monitor", "--model-data", MODEL_DATA, "--output", OUTPUT, "--variant", "m.tar.gz"],
            "one model of a multi-model endpoint",
        ),
        (
            [
                "--model-data",
                MODEL_DATA,
                "--output",
                OUTPUT,
                "--capture-uri",
                CAPTURE,
                "--scheduler-role",
                SCHEDULER_ROLE,
                "--max-run",
                "7200",
            ],
            "60..3600",
        ),
        (
            ["--via", "model-monitor", "--model-data", MODEL_DATA, "--output", OUTPUT, "--alarm-topic", "shapes-alerts"],
            "expected an SNS topic ARN",
        ),
    ],
)
def test_monitor_usage_errors_call_nothing(session, sm_stub, stubber, extra, message):
    stubber("scheduler"), stubber("cloudwatch")  # nothing queued: any call fails the test
    with pytest.raises(UsageError, match=message):
        cmd_monitor(monitor("schedule", *extra), session=session)


def test_monitor_delete_removes_what_schedule_made_and_nothing_else(session, sm_stub, stubber):
    scheduler, cloudwatch = stubber("scheduler"), stubber("cloudwatch")
    summary = {"MonitoringScheduleName": "shapes-prod-monitor", "MonitoringScheduleArn": f"{ARN}:monitoring-schedule/shapes-prod-monitor"}
    summary.update(CreationTime=NOW, LastModifiedTime=NOW, MonitoringScheduleStatus="Scheduled")
    sm_stub.add_response("list_monitoring_schedules", {"MonitoringScheduleSummaries": [summary]}, {"EndpointName": "shapes-prod"})
    sm_stub.add_response("delete_monitoring_schedule", {}, {"MonitoringScheduleName": "shapes-prod-monitor"})
    scheduler.add_response("list_schedules", {"Schedules": [{"Name": "shapes-prod-monitor"}]}, {"NamePrefix": "shapes-prod-monitor"})
    scheduler.add_response("delete_schedule", {}, {"Name": "shapes-prod-monitor"})
    cloudwatch.add_response(
        "describe_alarms", {"MetricAlarms": [{"AlarmName": "shapes-prod-monitor"}]}, {"AlarmNamePrefix": "shapes-prod-monitor"}
    )
    cloudwatch.add_response("delete_alarms", {}, {"AlarmNames": ["shapes-prod-monitor"]})
    result = cmd_monitor(monitor("delete"), session=session)
    assert [item["kind"] for item in result["cleanup"]] == ["monitoring-schedule", "schedule", "alarm"]

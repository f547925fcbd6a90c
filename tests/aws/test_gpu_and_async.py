"""deploy / transform on GPU hosts (the inference AMI with a CUDA 12 driver) and async
endpoints (AsyncInferenceConfig, the payload cap, backlog autoscaling to zero)."""

from __future__ import annotations

import pytest
from botocore.stub import ANY
from smvision_aws import cli, hosting
from smvision_aws.commands.endpoints import cmd_deploy, cmd_transform
from smvision_aws.usage import UsageError

from tests.support.aws import ARN, IMAGE, MODEL_DATA, ROLE, Matching, expect_endpoint, in_service, instance_variant

SNS = "arn:aws:sns:us-east-1:123456789012:smv"
# --output alone: failures go under it (not to the SDK's default bucket)
MINIMAL_ASYNC = {"AsyncInferenceConfig": {"OutputConfig": {"S3OutputPath": "s3://b/o/", "S3FailurePath": "s3://b/o/failures/"}}}


def deploy_args(*extra):
    return cli.get_args_parser().parse_args(
        ["deploy", "--image", IMAGE, "--role", ROLE, "--model-data", MODEL_DATA, "--endpoint-name", "e", *extra]
    )


@pytest.mark.parametrize(
    "instance_type, flag, ami",
    [
        ("ml.g4dn.xlarge", [], "al2-ami-sagemaker-inference-gpu-3-1"),
        ("ml.g5.2xlarge", [], "al2-ami-sagemaker-inference-gpu-3-1"),
        ("ml.p4d.24xlarge", ["--ami-version", "al2-ami-sagemaker-inference-gpu-2"], "al2-ami-sagemaker-inference-gpu-2"),
        ("ml.g6.xlarge", ["--ami-version", "al2023-ami-sagemaker-inference-gpu-4-1"], "al2023-ami-sagemaker-inference-gpu-4-1"),
    ],
)
def test_gpu_endpoint_gets_an_inference_ami(session, sm_stub, instance_type, flag, ami):
    args = deploy_args("--instance-type", instance_type, "--no-wait", *flag)
    expect_endpoint(sm_stub, "e", instance_variant("e", instance_type, InferenceAmiVersion=ami))
    result = cmd_deploy(args, session=session)
    assert result["inference_ami_version"] == ami


def test_cpu_endpoint_has_no_ami(session, sm_stub):
    args = deploy_args("--instance-type", "ml.c5.xlarge", "--no-wait")
    expect_endpoint(sm_stub, "e", instance_variant("e", "ml.c5.xlarge"))  # exact request: no InferenceAmiVersion key
    result = cmd_deploy(args, session=session)
    assert "inference_ami_version" not in result


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--instance-type", "ml.m5.xlarge", "--ami-version", "al2-ami-sagemaker-inference-gpu-3-1"], "has no NVIDIA GPU"),
        (["--instance-type", "ml.g5.xlarge", "--ami-version", "al2-ami-sagemaker-inference-neuron-2"], "no Neuron build"),
        (["--instance-type", "ml.g5.xlarge", "--ami-version", "al2-ami-sagemaker-inference-gpu-1"], "choose one of"),
        (["--instance-type", "ml.p2.xlarge"], "no NVIDIA driver for CUDA 12"),
        (["--serverless", "--ami-version", "al2-ami-sagemaker-inference-gpu-3-1"], "not serverless"),
    ],
)
def test_impossible_instance_and_ami_pairs_are_refused_before_any_call(session, sm_stub, extra, message):
    with pytest.raises(UsageError, match=message):  # no response stubbed: no call allowed
        cmd_deploy(deploy_args(*extra), session=session)


def transform_args(*extra):
    return cli.get_args_parser().parse_args(
        [
            "transform",
            "--image",
            IMAGE,
            "--role",
            ROLE,
            "--model-data",
            MODEL_DATA,
            "--input",
            "s3://b/in/",
            "--output",
            "s3://b/out/",
            "--no-wait",
            *extra,
        ]
    )


def stub_transform(sm, resources):
    name = Matching(r"smvision-transform-[-0-9]+")
    sm.add_response(
        "create_model",
        {"ModelArn": f"{ARN}:model/m"},
        {"ModelName": name, "ExecutionRoleArn": ROLE, "PrimaryContainer": {"Image": IMAGE, "Environment": {}, "ModelDataUrl": MODEL_DATA}},
    )
    sm.add_response(
        "create_transform_job",
        {"TransformJobArn": f"{ARN}:transform-job/t"},
        {
            "TransformJobName": name,
            "ModelName": name,
            "BatchStrategy": "SingleRecord",
            "MaxPayloadInMB": 6,
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/in/"}},
                "ContentType": "image/jpeg",
                "SplitType": "None",
            },
            "TransformOutput": {"S3OutputPath": "s3://b/out/", "Accept": "application/json", "AssembleWith": "Line"},
            "TransformResources": resources,
        },
    )


@pytest.mark.parametrize(
    "flag, ami",
    [([], "al2-ami-sagemaker-batch-gpu-535"), (["--ami-version", "al2-ami-sagemaker-batch-gpu-535"], "al2-ami-sagemaker-batch-gpu-535")],
)
def test_gpu_transform_gets_a_batch_ami(session, sm_stub, flag, ami):
    stub_transform(sm_stub, {"InstanceCount": 1, "InstanceType": "ml.g4dn.xlarge", "TransformAmiVersion": ami})
    result = cmd_transform(transform_args("--instance-type", "ml.g4dn.xlarge", *flag), session=session)
    assert result["transform_ami_version"] == ami


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--instance-type", "ml.g4dn.xlarge", "--ami-version", "al2-ami-sagemaker-batch-gpu-470"], "driver 470 cannot run"),
        (["--instance-type", "ml.m5.xlarge", "--ami-version", "al2-ami-sagemaker-batch-gpu-535"], "has no NVIDIA GPU"),
    ],
)
def test_transform_refuses_impossible_amis(session, sm_stub, extra, message):
    with pytest.raises(UsageError, match=message):
        cmd_transform(transform_args(*extra), session=session)


def test_ami_choice_is_absent_on_cpu_and_local_hosts():
    assert hosting.inference_ami("ml.m5.xlarge") is None
    assert hosting.inference_ami("local") is None
    assert hosting.inference_ami(None) is None  # serverless
    assert hosting.transform_ami("ml.c5.2xlarge") is None
    assert hosting.inference_ami("ml.inf2.xlarge") is None


ASYNC = ["--async", "--output", "s3://b/async-out/", "--failure-output", "s3://b/async-err/"]
ASYNC += ["--success-topic", SNS + "-ok", "--error-topic", SNS + "-err", "--max-concurrent-invocations", "4"]


def test_async_endpoint_config_and_raised_payload_cap(session, sm_stub):
    args = deploy_args("--instance-type", "ml.g5.xlarge", "--no-wait", *ASYNC)
    sm_stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}:model/e"},
        {
            "ModelName": "e",
            "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {"Image": IMAGE, "Environment": {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024"}, "ModelDataUrl": MODEL_DATA},
        },
    )
    sm_stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}:endpoint-config/e"},
        {
            "EndpointConfigName": "e",
            "ProductionVariants": [instance_variant("e", "ml.g5.xlarge", InferenceAmiVersion="al2-ami-sagemaker-inference-gpu-3-1")],
            "AsyncInferenceConfig": {
                "OutputConfig": {
                    "S3OutputPath": "s3://b/async-out/",
                    "S3FailurePath": "s3://b/async-err/",
                    "NotificationConfig": {"SuccessTopic": SNS + "-ok", "ErrorTopic": SNS + "-err"},
                },
                "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
            },
        },
    )
    sm_stub.add_response("create_endpoint", {"EndpointArn": f"{ARN}:endpoint/e"}, {"EndpointName": "e", "EndpointConfigName": "e"})
    result = cmd_deploy(args, session=session)
    assert result["async_output"] == "s3://b/async-out/"


def test_users_payload_cap_wins_on_async(session, sm_stub):
    args = deploy_args("--no-wait", "--async", "--output", "s3://b/o/", "--env", "SAGEMAKER_MAX_PAYLOAD_IN_MB=200")
    expect_endpoint(
        sm_stub, "e", instance_variant("e", "ml.m5.xlarge"), model_env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "200"}, config_extra=MINIMAL_ASYNC
    )
    cmd_deploy(args, session=session)


def test_async_autoscaling_to_zero_on_the_backlog(session, stubber, sm_stub):
    aas = stubber("application-autoscaling")
    cw = stubber("cloudwatch")
    args = deploy_args(
        "--async", "--output", "s3://b/o/", "--autoscale", "--min-capacity", "0", "--max-capacity", "3", "--target-backlog", "8"
    )
    rid = "endpoint/e/variant/AllTraffic"
    dimension = "sagemaker:variant:DesiredInstanceCount"
    expect_endpoint(
        sm_stub, "e", instance_variant("e", "ml.m5.xlarge"), model_env={"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024"}, config_extra=MINIMAL_ASYNC
    )
    sm_stub.add_response("describe_endpoint", in_service("e"), {"EndpointName": "e"})
    aas.add_response(
        "register_scalable_target",
        {},
        {"ServiceNamespace": "sagemaker", "ResourceId": rid, "ScalableDimension": dimension, "MinCapacity": 0, "MaxCapacity": 3},
    )
    aas.add_response(
        "put_scaling_policy",
        {"PolicyARN": "arn:policy/backlog", "Alarms": []},
        {
            "PolicyName": "e-AllTraffic-backlog",
            "ServiceNamespace": "sagemaker",
            "ResourceId": rid,
            "ScalableDimension": dimension,
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": 8.0,
                "CustomizedMetricSpecification": {
                    "MetricName": "ApproximateBacklogSizePerInstance",
                    "Namespace": "AWS/SageMaker",
                    "Dimensions": [{"Name": "EndpointName", "Value": "e"}],
                    "Statistic": "Average",
                },
                "ScaleInCooldown": 30,
                "ScaleOutCooldown": 30,
            },
        },
    )
    aas.add_response(
        "put_scaling_policy",
        {"PolicyARN": "arn:policy/from-zero", "Alarms": []},
        {
            "PolicyName": "e-AllTraffic-scale-from-zero",
            "ServiceNamespace": "sagemaker",
            "ResourceId": rid,
            "ScalableDimension": dimension,
            "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": {
                "AdjustmentType": "ChangeInCapacity",
                "MetricAggregationType": "Average",
                "Cooldown": 30,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
            },
        },
    )
    cw.add_response(
        "put_metric_alarm",
        {},
        {
            "AlarmName": "e-backlog-without-capacity",
            "AlarmDescription": ANY,
            "MetricName": "HasBacklogWithoutCapacity",
            "Namespace": "AWS/SageMaker",
            "Dimensions": [{"Name": "EndpointName", "Value": "e"}],
            "Statistic": "Average",
            "Period": 60,
            "EvaluationPeriods": 2,
            "DatapointsToAlarm": 2,
            "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "missing",
            "AlarmActions": ["arn:policy/from-zero"],
        },
    )
    result = cmd_deploy(args, session=session)
    assert result["instance_count"] == 1  # created with one instance, then free to scale to zero
    assert result["scale_from_zero_policy"] == "arn:policy/from-zero"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--async"], "--output"),
        (["--output", "s3://b/o/"], "only to --async"),
        (["--async", "--output", "/tmp/o"], "s3://"),
        (["--async", "--output", "s3://b/o/", "--success-topic", "topic"], "SNS topic ARN"),
        (["--async", "--output", "s3://b/o/", "--serverless"], "instance endpoint"),
        (["--autoscale", "--min-capacity", "0"], "only --async endpoints scale to zero"),
        (["--async", "--output", "s3://b/o/", "--smoke-image", "x.jpg"], "S3 inputs"),
    ],
)
def test_async_usage_errors(session, sm_stub, extra, message):
    # no response stubbed: every one is refused before any AWS call
    with pytest.raises(UsageError, match=message):
        cmd_deploy(deploy_args(*extra), session=session)

"""deploy / transform: the CreateModel, CreateEndpointConfig, CreateEndpoint and
CreateTransformJob requests, the wait for InService, the Application Auto Scaling
registration with the seed values and the smoke prediction."""

from __future__ import annotations

import io
import json

import pytest
from botocore.response import StreamingBody
from smvision_aws import cli, hosting
from smvision_aws.commands.endpoints import cmd_deploy, cmd_transform
from smvision_aws.usage import UsageError

from tests.support.aws import ARN, IMAGE, MODEL_DATA, ROLE, Matching, described_training_job, expect_endpoint, in_service, instance_variant


def test_deploy_from_training_job_with_autoscaling(session, sm_stub, stubber):
    aas = stubber("application-autoscaling")
    args = cli.get_args_parser().parse_args(
        [
            "deploy",
            "--image",
            IMAGE,
            "--role",
            ROLE,
            "--training-job",
            "smv-1",
            "--endpoint-name",
            "shapes-prod",
            "--instance-type",
            "ml.m5.xlarge",
            "--autoscale",
            "--tag",
            "project=shapes",
        ]
    )
    tags = [{"Key": "project", "Value": "shapes"}]
    sm_stub.add_response("describe_training_job", described_training_job("smv-1"), {"TrainingJobName": "smv-1"})
    expect_endpoint(sm_stub, "shapes-prod", instance_variant("shapes-prod", count=2), tags=tags)
    sm_stub.add_response("describe_endpoint", in_service("shapes-prod"), {"EndpointName": "shapes-prod"})
    aas.add_response(
        "register_scalable_target",
        {},
        {
            "ServiceNamespace": "sagemaker",
            "ResourceId": "endpoint/shapes-prod/variant/AllTraffic",
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "MinCapacity": 2,
            "MaxCapacity": 4,
        },
    )
    aas.add_response(
        "put_scaling_policy",
        {"PolicyARN": "arn:aws:autoscaling:policy/1", "Alarms": []},
        {
            "PolicyName": "shapes-prod-AllTraffic-invocations",
            "ServiceNamespace": "sagemaker",
            "ResourceId": "endpoint/shapes-prod/variant/AllTraffic",
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": 10.0,
                "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
                "ScaleInCooldown": 30,
                "ScaleOutCooldown": 30,
            },
        },
    )
    result = cmd_deploy(args, session=session)
    assert result["instance_count"] == 2 and result["autoscaling_policy"] == "arn:aws:autoscaling:policy/1"


def test_training_job_that_did_not_complete_is_refused(session, sm_stub):
    sm_stub.add_response("describe_training_job", described_training_job("smv-2", "Failed"), {"TrainingJobName": "smv-2"})
    with pytest.raises(UsageError, match="Failed"):
        hosting.model_data_from_training_job(session.sagemaker_client, "smv-2")


def test_serverless_endpoint(session, sm_stub):
    args = cli.get_args_parser().parse_args(
        [
            "deploy",
            "--image",
            IMAGE,
            "--role",
            ROLE,
            "--model-data",
            MODEL_DATA,
            "--endpoint-name",
            "shapes-sls",
            "--serverless",
            "--serverless-memory",
            "3072",
            "--serverless-max-concurrency",
            "4",
            "--no-wait",
        ]
    )
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": "shapes-sls",
        "InitialVariantWeight": 1,
        "ServerlessConfig": {"MemorySizeInMB": 3072, "MaxConcurrency": 4},
    }
    expect_endpoint(sm_stub, "shapes-sls", variant)
    assert cmd_deploy(args, session=session)["instance_type"] is None


def test_serverless_endpoint_on_the_cpu_image(session, sm_stub):
    args = cli.get_args_parser().parse_args(
        ["deploy", "--image", IMAGE, "--role", ROLE, "--model-data", MODEL_DATA, "--endpoint-name", "shapes-cpu"]
        + ["--serverless", "--image-variant", "cpu", "--no-wait"]
    )
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": "shapes-cpu",
        "InitialVariantWeight": 1,
        "ServerlessConfig": {"MemorySizeInMB": 4096, "MaxConcurrency": 5},
    }
    expect_endpoint(sm_stub, "shapes-cpu", variant, container_extra={"Image": IMAGE + "-cpu"})
    cmd_deploy(args, session=session)


@pytest.mark.parametrize(
    "image, expected",
    [
        (
            "123.dkr.ecr.us-east-1.amazonaws.com/sagemaker-vision:abc1234",
            "123.dkr.ecr.us-east-1.amazonaws.com/sagemaker-vision:abc1234-cpu",
        ),
        ("123.dkr.ecr.us-east-1.amazonaws.com/sagemaker-vision", "123.dkr.ecr.us-east-1.amazonaws.com/sagemaker-vision:latest-cpu"),
        ("localhost:5000/sagemaker-vision", "localhost:5000/sagemaker-vision:latest-cpu"),
        ("sagemaker-vision:abc1234-cpu", "sagemaker-vision:abc1234-cpu"),
    ],
)
def test_cpu_image_variant_is_the_tag_with_cpu_appended(image, expected):
    assert hosting.variant_image(image, "cpu") == expected
    assert hosting.variant_image(image, "full") == image


def test_cpu_image_variant_refuses_a_model_package(session, sm_stub):
    package = "arn:aws:sagemaker:us-east-1:1:model-package/p/1"
    args = cli.get_args_parser().parse_args(
        ["deploy", "--image", IMAGE, "--role", ROLE, "--model-package", package, "--endpoint-name", "e", "--image-variant", "cpu"]
    )
    with pytest.raises(UsageError, match="names its own image"):  # refused before any AWS call: nothing is stubbed
        cmd_deploy(args, session=session)


def test_multi_model_endpoint(session, sm_stub):
    prefix = "s3://smv-bucket/shapes/mme/"
    args = cli.get_args_parser().parse_args(
        [
            "deploy",
            "--image",
            IMAGE,
            "--role",
            ROLE,
            "--multi-model",
            "--model-data-prefix",
            prefix,
            "--endpoint-name",
            "shapes-mme",
            "--instance-type",
            "ml.m5.2xlarge",
            "--no-wait",
        ]
    )
    container = {"Mode": "MultiModel", "ModelDataUrl": prefix}
    expect_endpoint(sm_stub, "shapes-mme", instance_variant("shapes-mme", "ml.m5.2xlarge"), container_extra=container)
    cmd_deploy(args, session=session)


def test_batch_transform_job(session, sm_stub):
    args = cli.get_args_parser().parse_args(
        [
            "transform",
            "--image",
            IMAGE,
            "--role",
            ROLE,
            "--model-data",
            MODEL_DATA,
            "--input",
            "s3://smv-bucket/shapes/batch-in/",
            "--output",
            "s3://smv-bucket/shapes/batch-out/",
            "--instance-type",
            "ml.m5.xlarge",
            "--no-wait",
            "--tag",
            "project=shapes",
        ]
    )
    name = Matching(r"smvision-transform-\d{4}(-\d\d){5}-\d{3}")
    sm_stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}:model/m"},
        {
            "ModelName": name,
            "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {"Image": IMAGE, "Environment": {}, "ModelDataUrl": MODEL_DATA},
            "Tags": [{"Key": "project", "Value": "shapes"}],  # so cleanup --by-tag finds it
        },
    )
    sm_stub.add_response(
        "create_transform_job",
        {"TransformJobArn": f"{ARN}:transform-job/t"},
        {
            "TransformJobName": name,
            "ModelName": name,
            "BatchStrategy": "SingleRecord",
            "MaxPayloadInMB": 6,
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://smv-bucket/shapes/batch-in/"}},
                "ContentType": "image/jpeg",
                "SplitType": "None",
            },
            "TransformOutput": {
                "S3OutputPath": "s3://smv-bucket/shapes/batch-out/",
                "Accept": "application/json",
                "AssembleWith": "Line",
            },
            "TransformResources": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge"},
            "Tags": [{"Key": "project", "Value": "shapes"}],
        },
    )
    result = cmd_transform(args, session=session)
    assert result["output"] == "s3://smv-bucket/shapes/batch-out/" and result["transform_job"] == result["model"] == name


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--serverless", "--autoscale"], "scale by themselves"),
        (["--autoscale", "--min-capacity", "5", "--max-capacity", "4"], "min-capacity"),
        (["--serverless", "--serverless-memory", "1500"], "1024"),
        (["--local", "--autoscale"], "need AWS"),
        (["--autoscale", "--no-wait"], "InService"),
        (["--smoke-image", "x.png", "--no-wait"], "InService"),
        (["--multi-model"], "--model-data-prefix"),
        (["--local", "--model-data", "s3://b/m.tar.gz"], "file:///"),
        (["--image-variant", "cpu", "--instance-type", "ml.g5.xlarge"], "CPUs only"),
    ],
)
def test_deploy_usage_errors(session, sm_stub, extra, message):
    args = cli.get_args_parser().parse_args(
        ["deploy", "--image", IMAGE, "--role", ROLE, "--model-data", MODEL_DATA, "--endpoint-name", "e", *extra]
    )
    # no response stubbed: refused before any AWS call
    with pytest.raises(UsageError, match=message):
        cmd_deploy(args, session=session)


def test_smoke_prediction_after_deploy(session, sm_stub, runtime_stub, tmp_path):
    image = tmp_path / "red_circle.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    args = cli.get_args_parser().parse_args(
        [
            "deploy",
            "--image",
            IMAGE,
            "--role",
            ROLE,
            "--model-data",
            MODEL_DATA,
            "--endpoint-name",
            "shapes-dev",
            "--smoke-image",
            str(image),
        ]
    )
    answer = {"predicted_label": "red_circle", "confidence": 0.9}
    payload = json.dumps(answer).encode()
    expect_endpoint(sm_stub, "shapes-dev", instance_variant("shapes-dev"))
    sm_stub.add_response("describe_endpoint", in_service("shapes-dev"), {"EndpointName": "shapes-dev"})
    runtime_stub.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(payload), len(payload)), "ContentType": "application/json"},
        {"EndpointName": "shapes-dev", "Body": image.read_bytes(), "ContentType": "image/png", "Accept": "application/json"},
    )
    assert cmd_deploy(args, session=session)["smoke_prediction"] == answer

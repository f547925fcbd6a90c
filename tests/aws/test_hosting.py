"""deploy / transform: the CreateModel, CreateEndpointConfig, CreateEndpoint and
CreateTransformJob requests, the wait for InService, the Application Auto Scaling
registration with the seed values and the smoke prediction."""

from __future__ import annotations

import datetime

import pytest
from botocore.stub import Stubber
from smvision_aws import cli, hosting
from smvision_aws.training import UsageError

from tests.aws.conftest import ACCOUNT, IMAGE, REGION, ROLE, Matching

ARN = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
MODEL_DATA = "s3://smv-bucket/shapes/models/smv-1/output/model.tar.gz"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def stub_create(stub, endpoint, variant, model_env=None, tags=None, container_extra=None, config_extra=None):
    container = {"Image": IMAGE, "Environment": model_env or {}, "ModelDataUrl": MODEL_DATA}
    container.update(container_extra or {})
    stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}:model/{endpoint}"},
        {"ModelName": endpoint, "ExecutionRoleArn": ROLE, "PrimaryContainer": container, **({"Tags": tags} if tags else {})},
    )
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}:endpoint-config/{endpoint}"},
        {"EndpointConfigName": endpoint, "ProductionVariants": [variant], **({"Tags": tags} if tags else {}), **(config_extra or {})},
    )
    stub.add_response(
        "create_endpoint",
        {"EndpointArn": f"{ARN}:endpoint/{endpoint}"},
        {"EndpointName": endpoint, "EndpointConfigName": endpoint, **({"Tags": tags} if tags else {})},
    )


def in_service(endpoint):
    return {
        "EndpointName": endpoint,
        "EndpointArn": f"{ARN}:endpoint/{endpoint}",
        "EndpointConfigName": endpoint,
        "EndpointStatus": "InService",
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
    }


def test_deploy_from_training_job_with_autoscaling(session):
    autoscaling = session.client("application-autoscaling")
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
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": "shapes-prod",
        "InitialVariantWeight": 1,
        "InitialInstanceCount": 2,
        "InstanceType": "ml.m5.xlarge",
    }
    with Stubber(session.sagemaker_client) as sm, Stubber(autoscaling) as aas:
        sm.add_response(
            "describe_training_job",
            {
                "TrainingJobName": "smv-1",
                "TrainingJobArn": f"{ARN}:training-job/smv-1",
                "TrainingJobStatus": "Completed",
                "SecondaryStatus": "Completed",
                "CreationTime": NOW,
                "AlgorithmSpecification": {"TrainingInputMode": "File"},
                "ResourceConfig": {"InstanceCount": 2, "InstanceType": "ml.g4dn.xlarge", "VolumeSizeInGB": 30},
                "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
                "ModelArtifacts": {"S3ModelArtifacts": MODEL_DATA},
            },
            {"TrainingJobName": "smv-1"},
        )
        stub_create(sm, "shapes-prod", variant, tags=tags)
        sm.add_response("describe_endpoint", in_service("shapes-prod"), {"EndpointName": "shapes-prod"})
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
        result = cli.cmd_deploy(args, session=session)
        sm.assert_no_pending_responses()
        aas.assert_no_pending_responses()
    assert result["instance_count"] == 2 and result["autoscaling_policy"] == "arn:aws:autoscaling:policy/1"


def test_training_job_that_did_not_complete_is_refused(session):
    with Stubber(session.sagemaker_client) as sm:
        sm.add_response(
            "describe_training_job",
            {
                "TrainingJobName": "smv-2",
                "TrainingJobArn": f"{ARN}:training-job/smv-2",
                "TrainingJobStatus": "Failed",
                "SecondaryStatus": "Failed",
                "CreationTime": NOW,
                "AlgorithmSpecification": {"TrainingInputMode": "File"},
                "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30},
                "StoppingCondition": {"MaxRuntimeInSeconds": 60},
                "ModelArtifacts": {"S3ModelArtifacts": MODEL_DATA},
            },
            {"TrainingJobName": "smv-2"},
        )
        with pytest.raises(UsageError, match="Failed"):
            hosting.model_data_from_training_job(session.sagemaker_client, "smv-2")


def test_serverless_endpoint(session):
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
    with Stubber(session.sagemaker_client) as sm:
        stub_create(sm, "shapes-sls", variant)
        result = cli.cmd_deploy(args, session=session)
        sm.assert_no_pending_responses()
    assert result["instance_type"] is None


def test_multi_model_endpoint(session):
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
    with Stubber(session.sagemaker_client) as sm:
        sm.add_response(
            "create_model",
            {"ModelArn": f"{ARN}:model/shapes-mme"},
            {
                "ModelName": "shapes-mme",
                "ExecutionRoleArn": ROLE,
                "PrimaryContainer": {"Image": IMAGE, "Mode": "MultiModel", "ModelDataUrl": prefix, "Environment": {}},
            },
        )
        sm.add_response(
            "create_endpoint_config",
            {"EndpointConfigArn": f"{ARN}:endpoint-config/shapes-mme"},
            {
                "EndpointConfigName": "shapes-mme",
                "ProductionVariants": [
                    {
                        "VariantName": "AllTraffic",
                        "ModelName": "shapes-mme",
                        "InitialVariantWeight": 1,
                        "InitialInstanceCount": 1,
                        "InstanceType": "ml.m5.2xlarge",
                    }
                ],
            },
        )
        sm.add_response(
            "create_endpoint",
            {"EndpointArn": f"{ARN}:endpoint/shapes-mme"},
            {"EndpointName": "shapes-mme", "EndpointConfigName": "shapes-mme"},
        )
        cli.cmd_deploy(args, session=session)
        sm.assert_no_pending_responses()


def test_batch_transform_job(session):
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
    with Stubber(session.sagemaker_client) as sm:
        name = Matching(r"smvision-transform-\d{4}(-\d\d){5}-\d{3}")
        sm.add_response(
            "create_model",
            {"ModelArn": f"{ARN}:model/m"},
            {
                "ModelName": name,
                "ExecutionRoleArn": ROLE,
                "PrimaryContainer": {"Image": IMAGE, "Environment": {}, "ModelDataUrl": MODEL_DATA},
                "Tags": [{"Key": "project", "Value": "shapes"}],  # so cleanup --by-tag finds it
            },
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
        result = cli.cmd_transform(args, session=session)
        sm.assert_no_pending_responses()
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
    ],
)
def test_deploy_usage_errors(session, extra, message):
    args = cli.get_args_parser().parse_args(
        ["deploy", "--image", IMAGE, "--role", ROLE, "--model-data", MODEL_DATA, "--endpoint-name", "e", *extra]
    )
    # no response stubbed: refused before any AWS call
    with Stubber(session.sagemaker_client), pytest.raises(UsageError, match=message):
        cli.cmd_deploy(args, session=session)


def test_smoke_prediction_after_deploy(session, tmp_path):
    import io
    import json

    from botocore.response import StreamingBody

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
    with Stubber(session.sagemaker_client) as sm, Stubber(session.client("sagemaker-runtime")) as runtime:
        stub_create(
            sm,
            "shapes-dev",
            {
                "VariantName": "AllTraffic",
                "ModelName": "shapes-dev",
                "InitialVariantWeight": 1,
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.xlarge",
            },
        )
        sm.add_response("describe_endpoint", in_service("shapes-dev"), {"EndpointName": "shapes-dev"})
        runtime.add_response(
            "invoke_endpoint",
            {"Body": StreamingBody(io.BytesIO(payload), len(payload)), "ContentType": "application/json"},
            {"EndpointName": "shapes-dev", "Body": image.read_bytes(), "ContentType": "image/png", "Accept": "application/json"},
        )
        result = cli.cmd_deploy(args, session=session)
        sm.assert_no_pending_responses()
        runtime.assert_no_pending_responses()
    assert result["smoke_prediction"] == answer

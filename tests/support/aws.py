"""What the tests of the AWS tools share (tests/aws): the account, role, image and
names every stubbed request uses, a matcher for generated names, and resources as
SageMaker describes them. Fixtures (sessions, Stubbers, the Lambda bridge) live in
tests/aws/conftest.py."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

REGION = "us-east-1"
ACCOUNT = "123456789012"
ARN = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/smvision-execution"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/sagemaker-vision:abc1234"
MODEL_DATA = "s3://smv-bucket/shapes/models/smv-1/output/model.tar.gz"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
LAMBDA_ENDPOINT = "shapes-prod"  # the endpoint the Lambda bridge tests invoke


class Matching:
    """An expected request value that equals any string matching the regex (generated names)."""

    def __init__(self, pattern: str):
        self.regex = re.compile(pattern)

    def __eq__(self, other) -> bool:
        return isinstance(other, str) and self.regex.fullmatch(other) is not None

    def __repr__(self) -> str:
        return f"Matching({self.regex.pattern!r})"


def described_training_job(name: str = "smv-1", status: str = "Completed", **extra) -> dict:
    """DescribeTrainingJob's answer for a job of IMAGE that wrote MODEL_DATA."""
    return {
        "TrainingJobName": name,
        "TrainingJobArn": f"{ARN}:training-job/{name}",
        "TrainingJobStatus": status,
        "SecondaryStatus": "Starting" if status == "InProgress" else status,
        "CreationTime": NOW,
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": IMAGE},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.g4dn.xlarge", "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
        "ModelArtifacts": {"S3ModelArtifacts": MODEL_DATA},
        **extra,
    }


def in_service(endpoint: str) -> dict:
    """DescribeEndpoint's answer once the endpoint is up (what the InService waiter reads)."""
    return {
        "EndpointName": endpoint,
        "EndpointArn": f"{ARN}:endpoint/{endpoint}",
        "EndpointConfigName": endpoint,
        "EndpointStatus": "InService",
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
    }


def instance_variant(model: str, instance_type: str = "ml.m5.xlarge", count: int = 1, **extra) -> dict:
    """The one production variant of an instance endpoint, as CreateEndpointConfig gets it."""
    return {
        "VariantName": "AllTraffic",
        "ModelName": model,
        "InitialVariantWeight": 1,
        "InitialInstanceCount": count,
        "InstanceType": instance_type,
        **extra,
    }


def expect_endpoint(stub, endpoint, variant, model_env=None, tags=None, container_extra=None, config_extra=None) -> None:
    """Queue CreateModel (IMAGE serving MODEL_DATA), CreateEndpointConfig and
    CreateEndpoint, all named `endpoint`, on a SageMaker Stubber, with the exact
    requests expected."""
    container = {"Image": IMAGE, "Environment": model_env or {}, "ModelDataUrl": MODEL_DATA, **(container_extra or {})}
    tagged = {"Tags": tags} if tags else {}
    stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}:model/{endpoint}"},
        {"ModelName": endpoint, "ExecutionRoleArn": ROLE, "PrimaryContainer": container, **tagged},
    )
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}:endpoint-config/{endpoint}"},
        {"EndpointConfigName": endpoint, "ProductionVariants": [variant], **tagged, **(config_extra or {})},
    )
    stub.add_response(
        "create_endpoint",
        {"EndpointArn": f"{ARN}:endpoint/{endpoint}"},
        {"EndpointName": endpoint, "EndpointConfigName": endpoint, **tagged},
    )

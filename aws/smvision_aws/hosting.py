"""Endpoints (real-time, serverless, multi-model, async) and batch transform, as
plain SageMaker requests: CreateModel, CreateEndpointConfig, CreateEndpoint,
CreateTransformJob. Endpoint autoscaling is autoscaling.py.

These are boto3 calls of our own rather than SDK 3's ModelBuilder: ModelBuilder is
built around detecting a framework and packaging a model object for a model server it
knows (TorchServe, DJL, TGI, ...), while here the image is the server and the model is
a model.tar.gz or a registry package, so each request is a few plain fields.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from botocore.exceptions import WaiterError

from smvision_aws.usage import UsageError

DEFAULT_VARIANT = "AllTraffic"  # the SDK's name for a single-variant endpoint

# GPU hosts: SageMaker's default host image for real-time, async and batch GPU
# instances still carries NVIDIA driver 470 (CUDA 11.4), too old for the image's CUDA
# 12.8 torch. CUDA 12's minor-version compatibility runs any 12.x build on an R525+
# driver, so every GPU host gets an AMI with a 535+ driver unless the user picks one.
MIN_NVIDIA_DRIVER = 525
# ProductionVariant.InferenceAmiVersion: accelerator and NVIDIA driver of each value.
INFERENCE_AMIS = {
    "al2-ami-sagemaker-inference-gpu-2": ("gpu", 535),
    "al2-ami-sagemaker-inference-gpu-2-1": ("gpu", 535),
    "al2-ami-sagemaker-inference-gpu-3-1": ("gpu", 550),
    "al2023-ami-sagemaker-inference-gpu-4-1": ("gpu", 580),
    "al2-ami-sagemaker-inference-neuron-2": ("neuron", None),
}
DEFAULT_INFERENCE_AMI = "al2-ami-sagemaker-inference-gpu-3-1"
# TransformResources.TransformAmiVersion: the batch host images and their drivers.
TRANSFORM_AMIS = {"al2-ami-sagemaker-batch-gpu-470": ("gpu", 470), "al2-ami-sagemaker-batch-gpu-535": ("gpu", 535)}
DEFAULT_TRANSFORM_AMI = "al2-ami-sagemaker-batch-gpu-535"
# Instance families by accelerator (ml.<family>.<size>). p2 (K80) has no driver for CUDA 12.
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "g7e", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "p6")
NEURON_FAMILIES = ("inf1", "inf2", "trn1", "trn1n", "trn2")
UNSUPPORTED_GPU_FAMILIES = ("p2",)


def instance_accelerator(instance_type: str) -> str:
    """'gpu', 'neuron' or 'cpu' for an ml.* instance type."""
    parts = instance_type.split(".")
    family = parts[1] if len(parts) == 3 and parts[0] == "ml" else ""
    if family in UNSUPPORTED_GPU_FAMILIES:
        raise UsageError(f"{instance_type}: its GPUs have no NVIDIA driver for CUDA 12; choose ml.g4dn or newer")
    if family in GPU_FAMILIES:
        return "gpu"
    if family in NEURON_FAMILIES:
        return "neuron"
    return "cpu"


def _host_ami(instance_type: str, requested: str | None, amis: dict, default: str, flag: str) -> str | None:
    accelerator = instance_accelerator(instance_type)
    if requested is None:
        return default if accelerator == "gpu" else None
    if requested not in amis:
        raise UsageError(f"{flag} {requested!r}: choose one of {', '.join(amis)}")
    ami_accelerator, driver = amis[requested]
    if ami_accelerator == "neuron":
        raise UsageError(f"{flag} {requested}: the image has no Neuron build; use a GPU or CPU instance")
    if accelerator != "gpu":
        raise UsageError(f"{flag} {requested} is a GPU host image; {instance_type} has no NVIDIA GPU (drop {flag})")
    if driver < MIN_NVIDIA_DRIVER:
        raise UsageError(
            f"{flag} {requested}: NVIDIA driver {driver} cannot run the image's CUDA 12 torch (needs {MIN_NVIDIA_DRIVER}+); use {default}"
        )
    return requested


def inference_ami(instance_type: str | None, requested: str | None = None) -> str | None:
    """The production variant's InferenceAmiVersion: a 535+ driver on GPU instances,
    nothing on CPU (and serverless, instance_type None); a user's pick is checked."""
    if instance_type is None:
        if requested:
            raise UsageError("--ami-version applies to instance endpoints, not serverless ones")
        return None
    return _host_ami(instance_type, requested, INFERENCE_AMIS, DEFAULT_INFERENCE_AMI, "--ami-version")


def transform_ami(instance_type: str, requested: str | None = None) -> str | None:
    """The transform job's TransformAmiVersion, chosen like inference_ami."""
    return _host_ami(instance_type, requested, TRANSFORM_AMIS, DEFAULT_TRANSFORM_AMI, "--ami-version")


def model_data_from_training_job(sagemaker_client, job_name: str) -> str:
    job = sagemaker_client.describe_training_job(TrainingJobName=job_name)
    status = job.get("TrainingJobStatus")
    if status != "Completed":
        raise UsageError(f"training job {job_name} is {status}; only a Completed job has a model.tar.gz")
    return job["ModelArtifacts"]["S3ModelArtifacts"]


def image_container(image_uri: str, model_data: str, env: dict[str, str]) -> dict:
    """The serving container SageMaker starts with `serve`, model.tar.gz extracted to /opt/ml/model."""
    return {"Image": image_uri, "ModelDataUrl": model_data, "Environment": dict(env)}


def multi_model_container(image_uri: str, model_data_prefix: str, env: dict[str, str]) -> dict:
    """A multi-model endpoint: every *.tar.gz under the prefix is loaded on demand (the
    image serves them with SAGEMAKER_MULTI_MODEL=true, which SageMaker sets for
    Mode=MultiModel)."""
    if not model_data_prefix.startswith("s3://") or not model_data_prefix.endswith("/"):
        raise UsageError("--model-data-prefix must be an s3://bucket/prefix/ ending in '/'")
    return {"Image": image_uri, "Mode": "MultiModel", "ModelDataUrl": model_data_prefix, "Environment": dict(env)}


def package_container(package_arn: str, env: dict[str, str]) -> dict:
    """A registry package version: SageMaker takes its image and model data."""
    return {"ModelPackageName": package_arn, **({"Environment": dict(env)} if env else {})}


def model_request(name: str, role: str, container: dict, tags=None) -> dict:
    """CreateModel. A package goes in Containers (as SDK 2 sent it), others as the primary container."""
    request = {"ModelName": name, "ExecutionRoleArn": role}
    if "ModelPackageName" in container:
        request["Containers"] = [container]
    else:
        request["PrimaryContainer"] = container
    if tags:
        request["Tags"] = tags
    return request


@dataclass(frozen=True)
class ServerlessSpec:
    memory_mb: int = 4096
    max_concurrency: int = 5

    def check(self) -> None:
        if self.memory_mb not in (1024, 2048, 3072, 4096, 5120, 6144):
            raise UsageError(f"--serverless-memory {self.memory_mb}: choose 1024, 2048, 3072, 4096, 5120 or 6144")
        if self.max_concurrency < 1:
            raise UsageError("--serverless-max-concurrency must be >= 1")

    def to_request(self) -> dict:
        return {"MemorySizeInMB": self.memory_mb, "MaxConcurrency": self.max_concurrency}


# Async endpoints take request bodies up to 1 GB from S3 (real-time: 6 MB); the server
# reads its cap from SAGEMAKER_MAX_PAYLOAD_IN_MB, so an async model gets this value.
ASYNC_MAX_PAYLOAD_MB = 1024
PAYLOAD_ENV = "SAGEMAKER_MAX_PAYLOAD_IN_MB"


@dataclass(frozen=True)
class AsyncSpec:
    output_path: str
    failure_path: str | None = None
    success_topic: str | None = None
    error_topic: str | None = None
    max_concurrent_invocations: int | None = None

    def check(self) -> None:
        for flag, uri in (("--output", self.output_path), ("--failure-output", self.failure_path)):
            if uri is not None and not uri.startswith("s3://"):
                raise UsageError(f"{flag} {uri!r}: async results go to an s3://bucket/prefix/")
        for flag, arn in (("--success-topic", self.success_topic), ("--error-topic", self.error_topic)):
            if arn is not None and not (arn.startswith("arn:") and ":sns:" in arn):
                raise UsageError(f"{flag} {arn!r}: expected an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)")
        if self.max_concurrent_invocations is not None and not 1 <= self.max_concurrent_invocations <= 1000:
            raise UsageError("--max-concurrent-invocations must be 1..1000")

    def to_request(self) -> dict:
        """The endpoint config's AsyncInferenceConfig."""
        self.check()
        output = {"S3OutputPath": self.output_path}
        if self.failure_path:
            output["S3FailurePath"] = self.failure_path
        notification = {}
        if self.success_topic:
            notification["SuccessTopic"] = self.success_topic
        if self.error_topic:
            notification["ErrorTopic"] = self.error_topic
        if notification:
            output["NotificationConfig"] = notification
        config = {"OutputConfig": output}
        if self.max_concurrent_invocations is not None:
            config["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": self.max_concurrent_invocations}
        return config


# What Data Capture stores as JSON text rather than base64: our answers and JSON requests,
# so captured answers stay readable (the monitor reads their labels either way).
CAPTURE_JSON_CONTENT_TYPES = ["application/json", "application/jsonlines"]


@dataclass(frozen=True)
class CaptureSpec:
    """Capture for monitoring: SageMaker's Data Capture on instance endpoints; the image's
    own capture (serve/capture.py, the same records and layout) where SageMaker has none:
    serverless endpoints, and multi-model endpoints (one folder per model)."""

    percent: int
    destination: str  # s3://bucket/prefix: captures land under {destination}/{endpoint}/{variant or model}/

    def check(self) -> None:
        if not 0 < self.percent <= 100:
            raise UsageError(f"--capture {self.percent}: a percentage of requests, 1..100")
        if not self.destination.startswith("s3://") or not self.destination[5:].split("/")[0]:
            raise UsageError(f"--capture-uri {self.destination!r}: captures go to an s3://bucket/prefix")

    def data_capture_config(self) -> dict:
        """The endpoint config's DataCaptureConfig: requests and answers, JSON kept as JSON."""
        return {
            "EnableCapture": True,
            "InitialSamplingPercentage": self.percent,
            "DestinationS3Uri": self.destination,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"JsonContentTypes": list(CAPTURE_JSON_CONTENT_TYPES)},
        }

    def server_env(self, endpoint: str) -> dict[str, str]:
        """The serving container's settings for the image's own capture (container/serving.py)."""
        return {
            "SM_VISION_CAPTURE_PERCENT": str(self.percent),
            "SM_VISION_CAPTURE_S3_URI": self.destination,
            "SM_VISION_CAPTURE_ENDPOINT": endpoint,
        }


@dataclass(frozen=True)
class EndpointSpec:
    """One endpoint of one variant: instances (instance_type, count, GPU host image,
    maybe async) or serverless. Model, endpoint config and endpoint share the name
    unless model_name says otherwise, as the SDKs name them."""

    name: str
    model_name: str
    instance_type: str | None = "ml.m5.xlarge"
    instance_count: int = 1
    serverless: ServerlessSpec | None = None
    ami_version: str | None = None
    async_spec: AsyncSpec | None = None
    data_capture: CaptureSpec | None = None  # SageMaker's Data Capture (instance endpoints)
    tags: list[dict[str, str]] = field(default_factory=list)

    def config_request(self) -> dict:
        """CreateEndpointConfig."""
        variant = {"VariantName": DEFAULT_VARIANT, "ModelName": self.model_name, "InitialVariantWeight": 1}
        if self.serverless is not None:
            self.serverless.check()
            variant["ServerlessConfig"] = self.serverless.to_request()
        else:
            variant.update(InitialInstanceCount=self.instance_count, InstanceType=self.instance_type)
        if self.ami_version:
            variant["InferenceAmiVersion"] = self.ami_version
        request = {"EndpointConfigName": self.name, "ProductionVariants": [variant]}
        if self.async_spec is not None:
            request["AsyncInferenceConfig"] = self.async_spec.to_request()
        if self.data_capture is not None:
            request["DataCaptureConfig"] = self.data_capture.data_capture_config()
        if self.tags:
            request["Tags"] = self.tags
        return request

    def endpoint_request(self) -> dict:
        """CreateEndpoint."""
        return {"EndpointName": self.name, "EndpointConfigName": self.name, **({"Tags": self.tags} if self.tags else {})}


def create_endpoint(sagemaker_client, model: dict, endpoint: EndpointSpec, wait: bool = True) -> None:
    """Model, endpoint config, endpoint; with wait, until InService."""
    sagemaker_client.create_model(**model)
    sagemaker_client.create_endpoint_config(**endpoint.config_request())
    sagemaker_client.create_endpoint(**endpoint.endpoint_request())
    if wait:
        wait_in_service(sagemaker_client, endpoint.name)


def wait_in_service(sagemaker_client, endpoint_name: str) -> None:
    try:
        # Endpoints take minutes; an hour covers large GPU images.
        sagemaker_client.get_waiter("endpoint_in_service").wait(EndpointName=endpoint_name, WaiterConfig={"Delay": 30, "MaxAttempts": 120})
    except WaiterError:
        endpoint = sagemaker_client.describe_endpoint(EndpointName=endpoint_name)
        raise RuntimeError(
            f"endpoint {endpoint_name} is {endpoint['EndpointStatus']}: {endpoint.get('FailureReason', 'no reason given')}"
        ) from None


def predict(runtime_client, endpoint_name: str, body: bytes, content_type: str) -> dict:
    """One real-time request, JSON back (what the image answers)."""
    response = runtime_client.invoke_endpoint(EndpointName=endpoint_name, Body=body, ContentType=content_type, Accept="application/json")
    return json.loads(response["Body"].read())


def timestamped_name(base: str) -> str:
    """BASE-YYYY-MM-DD-HH-MM-SS-mmm within SageMaker's 63 characters, as the SDKs name jobs."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"
    return f"{base[: 63 - len(stamp) - 1]}-{stamp}"


def transform_request(
    model_name: str,
    input_uri: str,
    output_uri: str,
    instance_type: str,
    instance_count: int = 1,
    content_type: str = "image/jpeg",
    max_payload_mb: int = 6,
    max_concurrent: int | None = None,
    tags=None,
    ami_version: str | None = None,
    job_name: str | None = None,
) -> dict:
    """CreateTransformJob: one request per file (SplitType None, SingleRecord), one JSON
    answer per line, and the GPU host image (TransformAmiVersion) on GPU instances."""
    resources = {"InstanceCount": instance_count, "InstanceType": instance_type}
    ami = transform_ami(instance_type, ami_version)
    if ami:
        resources["TransformAmiVersion"] = ami
    request = {
        "TransformJobName": job_name or timestamped_name(model_name),
        "ModelName": model_name,
        "BatchStrategy": "SingleRecord",
        "MaxPayloadInMB": max_payload_mb,
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": content_type,
            "SplitType": "None",
        },
        "TransformOutput": {"S3OutputPath": output_uri, "Accept": "application/json", "AssembleWith": "Line"},
        "TransformResources": resources,
    }
    if max_concurrent:
        request["MaxConcurrentTransforms"] = max_concurrent
    if tags:
        request["Tags"] = tags
    return request


def start_transform_job(sagemaker_client, request: dict, wait: bool = True) -> str:
    sagemaker_client.create_transform_job(**request)
    name = request["TransformJobName"]
    if wait:
        sagemaker_client.get_waiter("transform_job_completed_or_stopped").wait(
            TransformJobName=name, WaiterConfig={"Delay": 30, "MaxAttempts": 2 * 24 * 120}
        )
        job = sagemaker_client.describe_transform_job(TransformJobName=name)
        if job["TransformJobStatus"] != "Completed":
            raise RuntimeError(f"transform job {name} {job['TransformJobStatus']}: {job.get('FailureReason', 'no reason given')}")
    return name

"""Model registry: a model package version in a group from a Completed training job,
its metrics.json as the package's model-quality metrics, the training data's fingerprint
and check summary as customer metadata, and an approval status that gates
`deploy --model-package`.

The trainer writes metrics.json to /opt/ml/output/data, which SageMaker ships inside
the job's output.tar.gz; the registry needs the file itself at an S3 URI, so `register`
copies it out next to the archive (OUTPUT/JOB/output/metrics.json).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from smvision_aws.usage import UsageError

APPROVAL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")
DEFAULT_APPROVAL = "PendingManualApproval"
OBJECTIVE = "val_macro_f1"
# What the image's server accepts and answers (serve/codec.py).
CONTENT_TYPES = ["image/jpeg", "image/png", "application/json", "application/x-image"]
RESPONSE_TYPES = ["application/json", "application/jsonlines"]
METRICS_LIMIT = 1 << 20  # metrics.json is a few KB; refuse anything absurd inside the archive
METADATA_VALUE_LIMIT = 256  # characters of a CustomerMetadataProperties value (the API's limit)


@dataclass(frozen=True)
class PackageSpec:
    group: str
    approval_status: str = DEFAULT_APPROVAL
    description: str | None = None
    image_uri: str | None = None  # default: the training job's image (it serves too)
    inference_instance_types: list[str] = field(default_factory=lambda: ["ml.m5.xlarge", "ml.g4dn.xlarge"])
    transform_instance_types: list[str] = field(default_factory=lambda: ["ml.m5.xlarge", "ml.g4dn.xlarge"])
    tags: list[dict[str, str]] = field(default_factory=list)

    def check(self) -> None:
        if self.approval_status not in APPROVAL_STATUSES:
            raise UsageError(f"--approval-status {self.approval_status!r}: choose {', '.join(APPROVAL_STATUSES)}")
        if not self.group:
            raise UsageError("--model-package-group is required")


def _split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise UsageError(f"{uri!r}: expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


def completed_training_job(sagemaker_client, job_name: str) -> dict:
    job = sagemaker_client.describe_training_job(TrainingJobName=job_name)
    if job.get("TrainingJobStatus") != "Completed":
        raise UsageError(f"training job {job_name} is {job.get('TrainingJobStatus')}; only a Completed job can be registered")
    return job


def output_archive_uri(job: dict) -> str:
    """Where SageMaker put /opt/ml/output/data of this job."""
    return f"{job['OutputDataConfig']['S3OutputPath'].rstrip('/')}/{job['TrainingJobName']}/output/output.tar.gz"


def publish_metrics(s3_client, job: dict) -> tuple[str, dict]:
    """Copy metrics.json out of the job's output.tar.gz; returns (its S3 URI, its content)."""
    archive_uri = output_archive_uri(job)
    bucket, key = _split_s3(archive_uri)
    try:
        body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        raise UsageError(f"cannot read {archive_uri} ({err.response['Error']['Code']}): the job's metrics.json lives there") from None
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        member = next((m for m in archive.getmembers() if m.isfile() and m.name.split("/")[-1] == "metrics.json"), None)
        if member is None or member.size > METRICS_LIMIT:
            raise UsageError(f"{archive_uri} holds no metrics.json: was the job trained by the image's built-in trainer?")
        text = archive.extractfile(member).read()
    metrics = json.loads(text)
    metrics_key = key.rsplit("/", 1)[0] + "/metrics.json"
    s3_client.put_object(Bucket=bucket, Key=metrics_key, Body=text, ContentType="application/json")
    return f"s3://{bucket}/{metrics_key}", metrics


def objective_value(metrics: dict) -> float | None:
    """The best epoch's val_macro_f1 from metrics.json (the tuning and pipeline objective)."""
    best = metrics.get("best_epoch")
    for row in metrics.get("epochs", []):
        if row.get("epoch") == best and OBJECTIVE in row:
            return float(row[OBJECTIVE])
    return None


def dataset_metadata(metrics: dict) -> dict[str, str]:
    """The training data's version and check summary from metrics.json's "data" (the
    trainer's check-data): its fingerprint, each split's format and image count, and how
    many problems, unreadable, duplicate and leaked images the check found."""
    data = metrics.get("data") or {}
    check = data.get("check") or {}
    found = {}
    if data.get("fingerprint"):
        found["dataset_fingerprint"] = str(data["fingerprint"])
    if data.get("format"):
        found["dataset_format"] = ",".join(f"{split}={name}" for split, name in data["format"].items())
    if check.get("images"):
        found["dataset_images"] = ",".join(f"{split}={count}" for split, count in check["images"].items())
    for key in ("problems", "unreadable", "duplicates", "leakage"):
        if key in check:
            found[f"dataset_{key}"] = str(check[key])
    return {key: value[:METADATA_VALUE_LIMIT] for key, value in found.items()}


def ensure_group(sagemaker_client, group: str, tags=None) -> None:
    try:
        sagemaker_client.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as err:
        if err.response["Error"]["Code"] != "ValidationException":
            raise
        request = {"ModelPackageGroupName": group, "ModelPackageGroupDescription": "sagemaker-vision classifiers"}
        if tags:
            request["Tags"] = tags
        sagemaker_client.create_model_package_group(**request)


def package_request(spec: PackageSpec, job: dict, metrics_uri: str, metrics: dict) -> dict:
    spec.check()
    image = spec.image_uri or job["AlgorithmSpecification"]["TrainingImage"]
    metadata = {"training_job": job["TrainingJobName"]}
    value = objective_value(metrics)
    if value is not None:
        metadata[OBJECTIVE] = f"{value:.6f}"
    metadata.update(dataset_metadata(metrics))  # the dataset version this model was trained on
    request = {
        "ModelPackageGroupName": spec.group,
        "ModelPackageDescription": spec.description or f"trained by {job['TrainingJobName']}",
        "ModelApprovalStatus": spec.approval_status,
        "InferenceSpecification": {
            "Containers": [{"Image": image, "ModelDataUrl": job["ModelArtifacts"]["S3ModelArtifacts"]}],
            "SupportedContentTypes": CONTENT_TYPES,
            "SupportedResponseMIMETypes": RESPONSE_TYPES,
            "SupportedRealtimeInferenceInstanceTypes": spec.inference_instance_types,
            "SupportedTransformInstanceTypes": spec.transform_instance_types,
        },
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": metrics_uri}}},
        "CustomerMetadataProperties": metadata,
    }
    if spec.tags:
        request["Tags"] = spec.tags
    return request


def register(sagemaker_client, s3_client, job_name: str, spec: PackageSpec) -> dict:
    spec.check()
    job = completed_training_job(sagemaker_client, job_name)
    metrics_uri, metrics = publish_metrics(s3_client, job)
    ensure_group(sagemaker_client, spec.group, spec.tags)
    arn = sagemaker_client.create_model_package(**package_request(spec, job, metrics_uri, metrics))["ModelPackageArn"]
    return {"model_package": arn, "approval_status": spec.approval_status, "metrics": metrics_uri, OBJECTIVE: objective_value(metrics)}


def set_approval(sagemaker_client, package_arn: str, status: str, description: str | None = None) -> dict:
    if status not in APPROVAL_STATUSES:
        raise UsageError(f"--approval-status {status!r}: choose {', '.join(APPROVAL_STATUSES)}")
    request = {"ModelPackageArn": package_arn, "ModelApprovalStatus": status}
    if description:
        request["ApprovalDescription"] = description
    sagemaker_client.update_model_package(**request)
    return {"model_package": package_arn, "approval_status": status}


def approved_package(sagemaker_client, package_arn: str) -> dict:
    """The package version, if Approved: `deploy --model-package` serves nothing else
    (SDK 2's ModelPackage would approve a pending version by itself)."""
    package = sagemaker_client.describe_model_package(ModelPackageName=package_arn)
    status = package.get("ModelApprovalStatus")
    if status != "Approved":
        raise UsageError(
            f"model package {package_arn} is {status}: approve it first (register --model-package ARN --approval-status Approved)"
        )
    return package

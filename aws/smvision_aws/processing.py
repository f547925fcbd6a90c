"""Processing jobs on the image: any command of it (typically `train prepare-bins`)
with S3 inputs mounted under /opt/ml/processing/input/NAME and outputs uploaded from
/opt/ml/processing/output/NAME, SageMaker's processing contract.

The command goes in ContainerArguments, so the image's entrypoint runs it exactly as
`docker run IMAGE train prepare-bins ...` would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlparse

from smvision_aws.usage import UsageError, parse_pairs

PROCESSING_ROOT = "/opt/ml/processing"


def input_path(name: str) -> str:
    return f"{PROCESSING_ROOT}/input/{name}"


def output_path(name: str) -> str:
    return f"{PROCESSING_ROOT}/output/{name}"


def _s3_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    pairs = parse_pairs(items, what)
    for name, uri in pairs.items():
        if urlparse(uri).scheme != "s3":
            raise UsageError(f"{what} {name}={uri!r}: use s3://bucket/prefix/")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise UsageError(f"{what} {name!r}: names are letters, digits, '-' and '_' (they become folder names)")
    return pairs


@dataclass(frozen=True)
class ProcessingSpec:
    image_uri: str
    role: str
    command: list[str]
    inputs: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    instance_type: str = "ml.m5.xlarge"
    instance_count: int = 1
    volume_size_gb: int = 30
    max_runtime_s: int = 24 * 3600
    environment: dict[str, str] = field(default_factory=dict)
    tags: list[dict[str, str]] = field(default_factory=list)

    def check(self) -> None:
        if not self.command:
            raise UsageError("give the command to run after --, e.g. -- train prepare-bins --images ... --metadata ... --out ...")
        if self.instance_count < 1:
            raise UsageError("--instance-count must be >= 1")


def processing_request(spec: ProcessingSpec, job_name: str) -> dict:
    """CreateProcessingJob for the spec."""
    spec.check()
    request = {
        "ProcessingJobName": job_name,
        "RoleArn": spec.role,
        "AppSpecification": {"ImageUri": spec.image_uri, "ContainerArguments": list(spec.command)},
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": spec.instance_count,
                "InstanceType": spec.instance_type,
                "VolumeSizeInGB": spec.volume_size_gb,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": spec.max_runtime_s},
    }
    if spec.inputs:
        request["ProcessingInputs"] = [
            {
                "InputName": name,
                "S3Input": {
                    "S3Uri": uri,
                    "LocalPath": input_path(name),
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                    "S3DataDistributionType": "FullyReplicated",
                },
            }
            for name, uri in spec.inputs.items()
        ]
    if spec.outputs:
        request["ProcessingOutputConfig"] = {
            "Outputs": [
                {"OutputName": name, "S3Output": {"S3Uri": uri, "LocalPath": output_path(name), "S3UploadMode": "EndOfJob"}}
                for name, uri in spec.outputs.items()
            ]
        }
    if spec.environment:
        request["Environment"] = dict(spec.environment)
    if spec.tags:
        request["Tags"] = spec.tags
    return request


def start(sagemaker_client, request: dict, wait: bool = True) -> dict:
    sagemaker_client.create_processing_job(**request)
    name = request["ProcessingJobName"]
    if not wait:
        return {"processing_job": name, "status": "InProgress"}
    sagemaker_client.get_waiter("processing_job_completed_or_stopped").wait(
        ProcessingJobName=name, WaiterConfig={"Delay": 30, "MaxAttempts": 2 * 24 * 120}
    )
    job = sagemaker_client.describe_processing_job(ProcessingJobName=name)
    if job["ProcessingJobStatus"] != "Completed":
        raise RuntimeError(f"processing job {name} {job['ProcessingJobStatus']}: {job.get('FailureReason', 'no reason given')}")
    outputs = {o["OutputName"]: o["S3Output"]["S3Uri"] for o in job.get("ProcessingOutputConfig", {}).get("Outputs", [])}
    return {"processing_job": name, "status": "Completed", "outputs": outputs}


def parse_inputs(items):
    return _s3_pairs(items, "--input")


def parse_outputs(items):
    return _s3_pairs(items, "--output")

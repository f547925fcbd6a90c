"""process (a Processing job running a command of the image), register (model package
from a training job with metrics.json as model metrics, approval) and
deploy --model-package (the approval gate, then a model whose container is the
package): the requests sent, asserted with Stubber."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY
from smvision_aws import cli
from smvision_aws.commands.endpoints import cmd_deploy
from smvision_aws.commands.workflow import cmd_process, cmd_register
from smvision_aws.usage import UsageError

from tests.support.aws import ARN, IMAGE, MODEL_DATA, NOW, ROLE, described_training_job, instance_variant

PACKAGE = f"{ARN}:model-package/shapes/3"


def test_process_runs_prepare_bins_with_the_processing_contract(session, sm_stub):
    args = cli.get_args_parser().parse_args(
        ["process", "--image", IMAGE, "--role", ROLE, "--job-name", "prep-1", "--no-wait", "--tag", "project=bins"]
        + ["--input", "bins=s3://smv-bucket/bins/raw/", "--output", "data=s3://smv-bucket/bins/data/", "--instance-type", "ml.c5.2xlarge"]
        + ["--", "train", "prepare-bins", "--images", "/opt/ml/processing/input/bins/images"]
        + ["--metadata", "/opt/ml/processing/input/bins/metadata", "--out", "/opt/ml/processing/output/data"]
    )
    sm_stub.add_response(
        "create_processing_job",
        {"ProcessingJobArn": f"{ARN}:processing-job/prep-1"},
        {
            "ProcessingJobName": "prep-1",
            "RoleArn": ROLE,
            "AppSpecification": {
                "ImageUri": IMAGE,
                "ContainerArguments": ["train", "prepare-bins", "--images", "/opt/ml/processing/input/bins/images"]
                + ["--metadata", "/opt/ml/processing/input/bins/metadata", "--out", "/opt/ml/processing/output/data"],
            },
            "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.c5.2xlarge", "VolumeSizeInGB": 30}},
            "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
            "ProcessingInputs": [
                {
                    "InputName": "bins",
                    "S3Input": {
                        "S3Uri": "s3://smv-bucket/bins/raw/",
                        "LocalPath": "/opt/ml/processing/input/bins",
                        "S3DataType": "S3Prefix",
                        "S3InputMode": "File",
                        "S3DataDistributionType": "FullyReplicated",
                    },
                }
            ],
            "ProcessingOutputConfig": {
                "Outputs": [
                    {
                        "OutputName": "data",
                        "S3Output": {
                            "S3Uri": "s3://smv-bucket/bins/data/",
                            "LocalPath": "/opt/ml/processing/output/data",
                            "S3UploadMode": "EndOfJob",
                        },
                    }
                ]
            },
            "Tags": [{"Key": "project", "Value": "bins"}],
        },
    )
    result = cmd_process(args, session=session)
    assert result == {"processing_job": "prep-1", "status": "InProgress"}


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give the command"),
        (["--input", "bins=file:///tmp/x", "--", "train"], "s3://"),
        (["--input", "../x=s3://b/x", "--", "train"], "folder names"),
    ],
)
def test_process_usage_errors(session, sm_stub, extra, message):
    args = cli.get_args_parser().parse_args(["process", "--image", IMAGE, "--role", ROLE, *extra])
    with pytest.raises(UsageError, match=message):
        cmd_process(args, session=session)


METRICS = {
    "objective": "val_macro_f1",
    "best_epoch": 2,
    "epochs": [{"epoch": 1, "val_macro_f1": 0.5}, {"epoch": 2, "val_macro_f1": 0.875}, {"epoch": 3, "val_macro_f1": 0.8}],
    "final": {"split": "test", "macro_f1": 0.86},
    "data": {  # what the trainer's check-data wrote (train/outputs.py data_summary)
        "format": {"train": "groundtruth", "validation": "groundtruth"},
        "fingerprint": "5" * 64,
        "check": {"fingerprint": "5" * 64, "images": {"train": 900, "validation": 100}, "unreadable": 1, "duplicates": 2, "leakage": 3}
        | {"tiny": 0, "conflicting_labels": 0, "imbalance_ratio": 1.5, "problems": 3},
    },
}


def output_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (("metrics.json", json.dumps(METRICS).encode()), ("confusion_matrix.png", b"png")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def training_job(status="Completed"):
    return described_training_job("smv-1", status, OutputDataConfig={"S3OutputPath": "s3://smv-bucket/shapes/models/"})


def test_register_creates_a_pending_package_with_metrics(session, sm_stub, s3_stub):
    archive = output_archive()
    args = cli.get_args_parser().parse_args(["register", "--training-job", "smv-1", "--model-package-group", "shapes"])
    sm_stub.add_response("describe_training_job", training_job(), {"TrainingJobName": "smv-1"})
    s3_stub.add_response(
        "get_object",
        {"Body": StreamingBody(io.BytesIO(archive), len(archive))},
        {"Bucket": "smv-bucket", "Key": "shapes/models/smv-1/output/output.tar.gz"},
    )
    s3_stub.add_response(
        "put_object",
        {},
        {
            "Bucket": "smv-bucket",
            "Key": "shapes/models/smv-1/output/metrics.json",
            "Body": json.dumps(METRICS).encode(),
            "ContentType": "application/json",
        },
    )
    sm_stub.add_client_error(
        "describe_model_package_group",
        "ValidationException",
        "ModelPackageGroup shapes does not exist.",
        expected_params={"ModelPackageGroupName": "shapes"},
    )
    sm_stub.add_response(
        "create_model_package_group",
        {"ModelPackageGroupArn": f"{ARN}:model-package-group/shapes"},
        {"ModelPackageGroupName": "shapes", "ModelPackageGroupDescription": ANY},
    )
    sm_stub.add_response(
        "create_model_package",
        {"ModelPackageArn": PACKAGE},
        {
            "ModelPackageGroupName": "shapes",
            "ModelPackageDescription": "trained by smv-1",
            "ModelApprovalStatus": "PendingManualApproval",
            "InferenceSpecification": {
                "Containers": [{"Image": IMAGE, "ModelDataUrl": MODEL_DATA}],
                "SupportedContentTypes": ["image/jpeg", "image/png", "application/json", "application/x-image"],
                "SupportedResponseMIMETypes": ["application/json", "application/jsonlines"],
                "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.xlarge", "ml.g4dn.xlarge"],
                "SupportedTransformInstanceTypes": ["ml.m5.xlarge", "ml.g4dn.xlarge"],
            },
            "ModelMetrics": {
                "ModelQuality": {
                    "Statistics": {
                        "ContentType": "application/json",
                        "S3Uri": "s3://smv-bucket/shapes/models/smv-1/output/metrics.json",
                    }
                }
            },
            "CustomerMetadataProperties": {
                "training_job": "smv-1",
                "val_macro_f1": "0.875000",
                # the dataset version and its check summary, from metrics.json's "data"
                "dataset_fingerprint": "5" * 64,
                "dataset_format": "train=groundtruth,validation=groundtruth",
                "dataset_images": "train=900,validation=100",
                "dataset_problems": "3",
                "dataset_unreadable": "1",
                "dataset_duplicates": "2",
                "dataset_leakage": "3",
            },
        },
    )
    result = cmd_register(args, session=session)
    assert result["model_package"] == PACKAGE and result["approval_status"] == "PendingManualApproval"
    assert result["val_macro_f1"] == 0.875  # the best epoch's, not the last one's


def test_register_into_an_existing_group_approved_with_other_instance_types(session, sm_stub, s3_stub):
    archive = output_archive()
    args = cli.get_args_parser().parse_args(
        ["register", "--training-job", "smv-1", "--model-package-group", "shapes", "--approval-status", "Approved"]
        + ["--inference-instance-type", "ml.g5.xlarge", "--transform-instance-type", "ml.c5.xlarge"]
    )
    sm_stub.add_response("describe_training_job", training_job(), {"TrainingJobName": "smv-1"})
    s3_stub.add_response("get_object", {"Body": StreamingBody(io.BytesIO(archive), len(archive))}, {"Bucket": "smv-bucket", "Key": ANY})
    s3_stub.add_response("put_object", {}, {"Bucket": "smv-bucket", "Key": ANY, "Body": ANY, "ContentType": "application/json"})
    sm_stub.add_response(
        "describe_model_package_group",
        {
            "ModelPackageGroupName": "shapes",
            "ModelPackageGroupArn": f"{ARN}:model-package-group/shapes",
            "CreationTime": NOW,
            "CreatedBy": {},
            "ModelPackageGroupStatus": "Completed",
        },
        {"ModelPackageGroupName": "shapes"},
    )
    sm_stub.add_response(
        "create_model_package",
        {"ModelPackageArn": PACKAGE},
        {
            "ModelPackageGroupName": "shapes",
            "ModelPackageDescription": "trained by smv-1",
            "ModelApprovalStatus": "Approved",
            "InferenceSpecification": {
                "Containers": [{"Image": IMAGE, "ModelDataUrl": MODEL_DATA}],
                "SupportedContentTypes": ANY,
                "SupportedResponseMIMETypes": ["application/json", "application/jsonlines"],
                "SupportedRealtimeInferenceInstanceTypes": ["ml.g5.xlarge"],
                "SupportedTransformInstanceTypes": ["ml.c5.xlarge"],
            },
            "ModelMetrics": ANY,
            "CustomerMetadataProperties": ANY,
        },
    )
    result = cmd_register(args, session=session)
    # no create_model_package_group: the group exists
    assert result["approval_status"] == "Approved"


def test_changing_the_approval_status(session, sm_stub):
    args = cli.get_args_parser().parse_args(
        ["register", "--model-package", PACKAGE, "--approval-status", "Approved", "--approval-description", "F1 0.875 on the bins test set"]
    )
    sm_stub.add_response(
        "update_model_package",
        {"ModelPackageArn": PACKAGE},
        {"ModelPackageArn": PACKAGE, "ModelApprovalStatus": "Approved", "ApprovalDescription": "F1 0.875 on the bins test set"},
    )
    assert cmd_register(args, session=session) == {"model_package": PACKAGE, "approval_status": "Approved"}


def test_unfinished_training_job_is_not_registered(session, sm_stub):
    job = training_job("InProgress")
    args = cli.get_args_parser().parse_args(["register", "--training-job", "smv-1", "--model-package-group", "shapes"])
    sm_stub.add_response("describe_training_job", job, {"TrainingJobName": "smv-1"})
    with pytest.raises(UsageError, match="InProgress"):
        cmd_register(args, session=session)


def described_package(status):
    return {
        "ModelPackageName": "shapes",
        "ModelPackageArn": PACKAGE,
        "ModelPackageGroupName": "shapes",
        "ModelPackageVersion": 3,
        "CreationTime": NOW,
        "ModelPackageStatus": "Completed",
        "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
        "ModelApprovalStatus": status,
        "InferenceSpecification": {
            "Containers": [{"Image": IMAGE, "ModelDataUrl": MODEL_DATA}],
            "SupportedContentTypes": [],
            "SupportedResponseMIMETypes": [],
        },
    }


def test_deploy_refuses_a_package_that_is_not_approved(session, sm_stub):
    args = cli.get_args_parser().parse_args(
        ["deploy", "--role", ROLE, "--model-package", PACKAGE, "--endpoint-name", "shapes-prod", "--no-wait"]
    )
    sm_stub.add_response("describe_model_package", described_package("PendingManualApproval"), {"ModelPackageName": PACKAGE})
    with pytest.raises(UsageError, match="PendingManualApproval"):
        cmd_deploy(args, session=session)
    # and nothing else is created


def test_deploy_an_approved_package_on_gpu(session, sm_stub):
    args = cli.get_args_parser().parse_args(
        [
            "deploy",
            "--role",
            ROLE,
            "--model-package",
            PACKAGE,
            "--endpoint-name",
            "shapes-prod",
            "--instance-type",
            "ml.g5.xlarge",
            "--no-wait",
        ]
    )
    sm_stub.add_response("describe_model_package", described_package("Approved"), {"ModelPackageName": PACKAGE})  # the approval gate
    # the model's container is the package itself, not an image + model data
    sm_stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}:model/shapes-prod"},
        {"ModelName": "shapes-prod", "ExecutionRoleArn": ROLE, "Containers": [{"ModelPackageName": PACKAGE}]},
    )
    sm_stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}:endpoint-config/shapes-prod"},
        {
            "EndpointConfigName": "shapes-prod",
            "ProductionVariants": [
                instance_variant("shapes-prod", "ml.g5.xlarge", InferenceAmiVersion="al2-ami-sagemaker-inference-gpu-3-1")
            ],
        },
    )
    sm_stub.add_response(
        "create_endpoint",
        {"EndpointArn": f"{ARN}:endpoint/shapes-prod"},
        {"EndpointName": "shapes-prod", "EndpointConfigName": "shapes-prod"},
    )
    result = cmd_deploy(args, session=session)
    assert result["model_data"] == PACKAGE


def test_an_async_package_endpoint_gets_the_raised_payload_cap(session, sm_stub):
    args = cli.get_args_parser().parse_args(
        ["deploy", "--role", ROLE, "--model-package", PACKAGE, "--endpoint-name", "shapes-async", "--no-wait"]
        + ["--async", "--output", "s3://smv-bucket/shapes/async/", "--tag", "project=shapes"]
    )
    tags = [{"Key": "project", "Value": "shapes"}]
    sm_stub.add_response("describe_model_package", described_package("Approved"), {"ModelPackageName": PACKAGE})
    sm_stub.add_response(
        "create_model",
        {"ModelArn": f"{ARN}:model/shapes-async"},
        {
            "ModelName": "shapes-async",
            "ExecutionRoleArn": ROLE,
            "Containers": [{"ModelPackageName": PACKAGE, "Environment": {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024"}}],
            "Tags": tags,
        },
    )
    sm_stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"{ARN}:endpoint-config/shapes-async"},
        {
            "EndpointConfigName": "shapes-async",
            "ProductionVariants": [instance_variant("shapes-async")],
            "AsyncInferenceConfig": {
                "OutputConfig": {
                    "S3OutputPath": "s3://smv-bucket/shapes/async/",
                    "S3FailurePath": "s3://smv-bucket/shapes/async/failures/",
                }
            },
            "Tags": tags,
        },
    )
    sm_stub.add_response(
        "create_endpoint",
        {"EndpointArn": f"{ARN}:endpoint/shapes-async"},
        {"EndpointName": "shapes-async", "EndpointConfigName": "shapes-async", "Tags": tags},
    )
    cmd_deploy(args, session=session)

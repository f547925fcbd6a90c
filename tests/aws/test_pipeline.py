"""pipeline upsert|start|definition: the seed workflow's definition JSON built with SDK
3's workflow package (steps, their data dependencies, the val_macro_f1 gate, the
parameters) and the CreatePipeline / UpdatePipeline / StartPipelineExecution requests.

SDK 3 is the tools' SDK, so this runs in the main test venv (requirements-test.txt).
"""

from __future__ import annotations

import json

import pytest
from botocore.stub import ANY
from smvision_aws import cli
from smvision_aws.commands.workflow import cmd_pipeline
from smvision_aws.usage import UsageError

from tests.support.aws import ACCOUNT, IMAGE, REGION, ROLE
from train.reporting import METRIC_DEFINITIONS

ARGS = ["--image", IMAGE, "--role", ROLE, "--raw-data", "s3://smv-bucket/bins/raw/", "--data-output", "s3://smv-bucket/bins/data/"]
ARGS += ["--output-path", "s3://smv-bucket/bins/models/", "--model-package-group", "bins", "--epochs", "15", "--f1-threshold", "0.8"]
ARGS += ["--hp", "lr=0.001", "--hp", "arch=resnet50"]
PIPELINE_ARN = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/smvision-pipeline"


def definition(*extra) -> dict:
    args = cli.get_args_parser().parse_args(["pipeline", "definition", *ARGS, *extra])
    return cmd_pipeline(args)["definition"]


def test_parameters_with_defaults_from_the_flags():
    params = {p["Name"]: p for p in definition()["Parameters"]}
    assert {name: (p["Type"], p["DefaultValue"]) for name, p in params.items()} == {
        "ProcessingInstanceType": ("String", "ml.m5.xlarge"),
        "TrainingInstanceType": ("String", "ml.g4dn.xlarge"),
        "Epochs": ("Integer", 15),
        "F1Threshold": ("Float", 0.8),
        "RawData": ("String", "s3://smv-bucket/bins/raw/"),
        "ModelApprovalStatus": ("String", "PendingManualApproval"),
    }
    assert params["ModelApprovalStatus"]["EnumValues"] == ["PendingManualApproval", "Approved", "Rejected"]


def test_steps_and_their_dependencies():
    steps = {s["Name"]: s for s in definition()["Steps"]}
    assert [(name, s["Type"]) for name, s in steps.items()] == [
        ("PrepareBins", "Processing"),
        ("Train", "Training"),
        ("F1Gate", "Condition"),
    ]

    prepare = steps["PrepareBins"]["Arguments"]
    assert prepare["AppSpecification"] == {
        "ImageUri": IMAGE,
        "ContainerArguments": ["train", "prepare-bins", "--images", "/opt/ml/processing/input/bins/images"]
        + ["--metadata", "/opt/ml/processing/input/bins/metadata", "--out", "/opt/ml/processing/output/data"],
    }
    assert prepare["ProcessingResources"]["ClusterConfig"]["InstanceType"] == {"Get": "Parameters.ProcessingInstanceType"}
    assert prepare["ProcessingInputs"][0]["S3Input"]["S3Uri"] == {"Get": "Parameters.RawData"}
    assert prepare["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == "s3://smv-bucket/bins/data/"
    assert "ProcessingJobName" not in prepare  # each execution names its own job

    train = steps["Train"]["Arguments"]
    # training reads what processing wrote: the dependency is this property reference
    assert train["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == {
        "Get": "Steps.PrepareBins.ProcessingOutputConfig.Outputs['data'].S3Output.S3Uri"
    }
    assert train["AlgorithmSpecification"] == {"TrainingImage": IMAGE, "TrainingInputMode": "File", "MetricDefinitions": METRIC_DEFINITIONS}
    assert train["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    assert train["OutputDataConfig"] == {"S3OutputPath": "s3://smv-bucket/bins/models/"}
    hyperparameters = train["HyperParameters"]
    assert hyperparameters["lr"] == "0.001" and hyperparameters["arch"] == "resnet50"
    assert hyperparameters["epochs"] == {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.Epochs"}]}}
    assert "TrainingJobName" not in train


def test_condition_gates_registration_on_val_macro_f1():
    gate = next(s for s in definition()["Steps"] if s["Name"] == "F1Gate")["Arguments"]
    assert gate["Conditions"] == [
        {
            "Type": "GreaterThanOrEqualTo",
            "LeftValue": {"Get": "Steps.Train.FinalMetricDataList['val_macro_f1'].Value"},
            "RightValue": {"Get": "Parameters.F1Threshold"},
        }
    ]
    assert gate["ElseSteps"] == []
    [register] = gate["IfSteps"]
    assert register["Name"] == "Register" and register["Type"] == "RegisterModel"
    package = register["Arguments"]
    assert package["ModelPackageGroupName"] == "bins"
    assert package["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    assert package["InferenceSpecification"]["Containers"] == [
        {"Image": IMAGE, "ModelDataUrl": {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}}
    ]


@pytest.mark.parametrize(
    "extra, message",
    [(["--f1-threshold", "1.5"], "0..1"), (["--hp", "epochs=3"], "--epochs")],
)
def test_bad_pipeline_flags(extra, message):
    with pytest.raises(UsageError, match=message):
        definition(*extra)


def test_upsert_creates_then_updates(sm_stub):
    client = sm_stub.client
    args = cli.get_args_parser().parse_args(["pipeline", "upsert", *ARGS, "--tag", "project=bins"])
    expected = {"PipelineName": "smvision-pipeline", "PipelineDefinition": ANY, "PipelineDescription": ANY, "RoleArn": ROLE}
    sm_stub.add_response("create_pipeline", {"PipelineArn": PIPELINE_ARN}, {**expected, "Tags": [{"Key": "project", "Value": "bins"}]})
    sm_stub.add_client_error("create_pipeline", "ResourceInUse", "Pipeline smvision-pipeline already exists")
    sm_stub.add_response("update_pipeline", {"PipelineArn": PIPELINE_ARN}, expected)
    first = cmd_pipeline(args, sagemaker_client=client)
    second = cmd_pipeline(args, sagemaker_client=client)
    assert (first["action"], second["action"]) == ("created", "updated")
    assert first["steps"] == ["PrepareBins", "Train", "F1Gate"]


def test_the_uploaded_definition_is_the_printed_one(sm_stub):
    client = sm_stub.client
    sent = {}
    client.meta.events.register("provide-client-params.sagemaker.CreatePipeline", lambda params, **_: sent.update(params))
    args = cli.get_args_parser().parse_args(["pipeline", "upsert", *ARGS])
    sm_stub.add_response("create_pipeline", {"PipelineArn": PIPELINE_ARN}, None)
    cmd_pipeline(args, sagemaker_client=client)
    assert json.loads(sent["PipelineDefinition"]) == definition()


def test_start_with_parameter_overrides(sm_stub):
    client = sm_stub.client
    args = cli.get_args_parser().parse_args(
        ["pipeline", "start", "--parameter", "Epochs=30", "--parameter", "TrainingInstanceType=ml.g5.2xlarge"]
    )
    sm_stub.add_response(
        "start_pipeline_execution",
        {"PipelineExecutionArn": PIPELINE_ARN + "/execution/1"},
        {
            "PipelineName": "smvision-pipeline",
            "PipelineParameters": [{"Name": "Epochs", "Value": "30"}, {"Name": "TrainingInstanceType", "Value": "ml.g5.2xlarge"}],
        },
    )
    result = cmd_pipeline(args, sagemaker_client=client)
    assert result["execution"].endswith("/execution/1")

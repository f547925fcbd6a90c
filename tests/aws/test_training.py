"""train: the CreateTrainingJob request SDK 3's ModelTrainer builds for our CLI flags,
sent through sagemaker.core's TrainingJob.create, and the wait for the job."""

from __future__ import annotations

import pytest
from botocore.stub import ANY
from smvision_aws import cli
from smvision_aws.commands.training import cmd_train
from smvision_aws.training import validate_hyperparameters
from smvision_aws.usage import UsageError

from tests.support.aws import IMAGE, MODEL_DATA, ROLE, Matching, described_training_job
from train.reporting import METRIC_DEFINITIONS


def described_job(name="smv-1", status="InProgress", **extra):
    return described_training_job(name, status, **extra)


def stub_create(stub, expected, name="smv-1"):
    """CreateTrainingJob, then the DescribeTrainingJob TrainingJob.create reads back."""
    stub.add_response("create_training_job", {"TrainingJobArn": described_job(name)["TrainingJobArn"]}, expected)
    stub.add_response("describe_training_job", described_job(name), {"TrainingJobName": name})


@pytest.fixture
def run_train(session, sm_stub, stubber):
    """run_train(argv, expected): `train ARGV` must send exactly `expected`."""
    # No IAM response is stubbed: SDK 3's client-side role check (iam:SimulatePrincipalPolicy)
    # must not run, or it would refuse the least-privilege training role.
    stubber("iam")

    def run(argv, expected):
        stub_create(sm_stub, expected)
        return cmd_train(cli.get_args_parser().parse_args(["train", *argv]), session=session)

    return run


BASE = [
    "--image",
    IMAGE,
    "--role",
    ROLE,
    "--channel",
    "training=s3://smv-bucket/shapes/data/",
    "--output-path",
    "s3://smv-bucket/shapes/models/",
    "--no-wait",
    "--tag",
    "project=shapes",
]


def expected_request(**overrides):
    request = {
        "TrainingJobName": "smv-1",
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File", "MetricDefinitions": METRIC_DEFINITIONS},
        "RoleArn": ROLE,
        "InputDataConfig": [
            {
                "ChannelName": "training",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": "s3://smv-bucket/shapes/data/",
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://smv-bucket/shapes/models/"},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.g4dn.xlarge", "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
        "HyperParameters": {"epochs": "12", "batch-size": "32", "lr": "0.0003", "freeze-backbone": "true"},
        "Tags": [{"Key": "project", "Value": "shapes"}],
        "ProfilerConfig": {"DisableProfiler": True},
    }
    request.update(overrides)
    return request


HPS = ["--hp", "epochs=12", "--hp", "batch-size=32", "--hp", "lr=0.0003", "--hp", "freeze-backbone=true"]


def test_single_instance_job_uses_image_metrics_and_channels(run_train):
    result = run_train(BASE + HPS + ["--job-name", "smv-1"], expected_request())
    assert result == {"training_job": "smv-1", "model_data": None, "instance_count": 1, "spot": False}


def test_multi_instance_spot_job_with_checkpoints(run_train):
    argv = (
        BASE
        + HPS
        + [
            "--job-name",
            "smv-1",
            "--instance-count",
            "2",
            "--instance-type",
            "ml.g5.xlarge",
            "--spot",
            "--max-run",
            "3600",
            "--max-wait",
            "7200",
            "--checkpoint-s3-uri",
            "s3://smv-bucket/shapes/checkpoints/smv-1/",
        ]
    )
    expected = expected_request(
        ResourceConfig={"InstanceCount": 2, "InstanceType": "ml.g5.xlarge", "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
        EnableManagedSpotTraining=True,
        CheckpointConfig={"S3Uri": "s3://smv-bucket/shapes/checkpoints/smv-1/"},
    )
    assert run_train(argv, expected)["spot"] is True


def test_split_channels_are_passed_by_name(run_train):
    argv = [
        "--image",
        IMAGE,
        "--role",
        ROLE,
        "--output-path",
        "s3://smv-bucket/shapes/models/",
        "--no-wait",
        "--job-name",
        "smv-1",
        "--hp",
        "epochs=2",
    ]
    for name in ("train", "validation", "test"):
        argv += ["--channel", f"{name}=s3://smv-bucket/shapes/{name}/"]
    channels = [
        {
            "ChannelName": name,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": f"s3://smv-bucket/shapes/{name}/",
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "InputMode": "File",
        }
        for name in ("train", "validation", "test")
    ]
    expected = expected_request(InputDataConfig=channels, HyperParameters={"epochs": "2"})
    del expected["Tags"]
    run_train(argv, expected)


def test_metric_regexes_match_the_trainers_log_line():
    import re

    from train.reporting import format_metrics

    line = format_metrics({"epoch": 3}, {"train_loss": 0.25, "val_loss": 0.5, "val_macro_f1": 0.875, "val_acc": 0.9})
    found = {d["Name"]: float(m.group(1)) for d in METRIC_DEFINITIONS if (m := re.search(d["Regex"], line))}
    assert found == {"train_loss": 0.25, "val_loss": 0.5, "val_macro_f1": 0.875, "val_acc": 0.9}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--hp", "learnin_rate=0.1"], "unknown hyperparameter"),
        (["--hp", "optimizer=adam"], "invalid choice"),
        (["--hp", "epochs"], "expected NAME=VALUE"),
        (["--spot"], "--checkpoint-s3-uri"),
        (["--spot", "--checkpoint-s3-uri", "s3://b/c/", "--max-run", "600", "--max-wait", "300"], "must be >= --max-run"),
        (["--max-wait", "600"], "only to --spot"),
        (["--channel", "extra=file:///data"], "only with --local"),
        (["--channel", "extra=http://example.com/data"], "s3://bucket/prefix"),
        (["--checkpoint-s3-uri", "/tmp/ckpt"], "must be an s3:// URI"),
    ],
)
def test_bad_input_fails_before_any_aws_call(session, sm_stub, argv, message):
    args = cli.get_args_parser().parse_args(["train", *BASE, *argv])
    # no responses queued in the Stubber: any AWS call would fail
    with pytest.raises(UsageError, match=message):
        cmd_train(args, session=session)


def test_role_and_output_path_are_required_on_aws(session, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_ROLE_ARN", raising=False)
    args = cli.get_args_parser().parse_args(
        ["train", "--image", IMAGE, "--channel", "training=s3://b/p/", "--output-path", "s3://b/p/models/"]
    )
    with pytest.raises(UsageError, match="--role"):
        cmd_train(args, session=session)
    args = cli.get_args_parser().parse_args(["train", "--image", IMAGE, "--role", ROLE, "--channel", "training=s3://b/p/"])
    with pytest.raises(UsageError, match="--output-path"):
        cmd_train(args, session=session)


def test_trainer_aliases_are_accepted_host_side():
    validate_hyperparameters({"learning_rate": "0.001", "batch_size": "16", "patience": "3", "freeze_backbone": "False"})


def test_default_job_name_waiting_for_completion_and_debugger_hook(session, sm_stub):
    """Without --job-name ModelTrainer names the job BASE-timestamp; without --no-wait the
    command waits for Completed and answers the model artifact; --debugger-hook puts a
    hook config with the output path back."""
    argv = [arg for arg in BASE if arg != "--no-wait"] + ["--hp", "epochs=2", "--base-job-name", "shapes", "--debugger-hook"]
    expected = expected_request(
        TrainingJobName=Matching(r"shapes-\d{14}"),
        HyperParameters={"epochs": "2"},
        DebugHookConfig={"S3OutputPath": "s3://smv-bucket/shapes/models/"},
    )
    args = cli.get_args_parser().parse_args(["train", *argv])
    sm_stub.add_response("create_training_job", {"TrainingJobArn": described_job()["TrainingJobArn"]}, expected)
    sm_stub.add_response("describe_training_job", described_job("shapes-20260101000000"), {"TrainingJobName": ANY})
    # the waiter's poll, then the description the result is read from
    for _ in range(2):
        sm_stub.add_response(
            "describe_training_job", described_job("shapes-20260101000000", "Completed"), {"TrainingJobName": "shapes-20260101000000"}
        )
    result = cmd_train(args, session=session)
    assert result["training_job"] == "shapes-20260101000000" and result["model_data"] == MODEL_DATA


def test_a_failed_job_fails_the_command_with_its_reason(session, sm_stub):
    args = cli.get_args_parser().parse_args(["train", *[a for a in BASE if a != "--no-wait"], "--job-name", "smv-1"])
    failed = described_job(status="Failed", FailureReason="AlgorithmError: CUDA out of memory")
    stub_create(sm_stub, None)
    sm_stub.add_response("describe_training_job", failed, {"TrainingJobName": "smv-1"})  # the waiter stops on Failed
    sm_stub.add_response("describe_training_job", failed, {"TrainingJobName": "smv-1"})
    with pytest.raises(RuntimeError, match="smv-1 Failed: AlgorithmError: CUDA out of memory"):
        cmd_train(args, session=session)

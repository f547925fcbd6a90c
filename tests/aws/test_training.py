"""train: the CreateTrainingJob request the SDK sends for our CLI flags."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber
from smvision_aws import cli
from smvision_aws.training import UsageError, validate_hyperparameters

from tests.aws.conftest import IMAGE, ROLE
from train.reporting import METRIC_DEFINITIONS

JOB_ARN = "arn:aws:sagemaker:us-east-1:123456789012:training-job/smv-1"


def run_train(sm_session, argv, expected):
    args = cli.get_args_parser().parse_args(["train", *argv])
    with Stubber(sm_session.sagemaker_client) as stub:
        stub.add_response("create_training_job", {"TrainingJobArn": JOB_ARN}, expected)
        result = cli.cmd_train(args, session=sm_session)
        stub.assert_no_pending_responses()
    return result


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


def test_single_instance_job_uses_image_metrics_and_channels(sm_session):
    result = run_train(sm_session, BASE + HPS + ["--job-name", "smv-1"], expected_request())
    assert result == {"training_job": "smv-1", "model_data": None, "instance_count": 1, "spot": False}


def test_multi_instance_spot_job_with_checkpoints(sm_session):
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
    assert run_train(sm_session, argv, expected)["spot"] is True


def test_split_channels_are_passed_by_name(sm_session):
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
        }
        for name in ("train", "validation", "test")
    ]
    expected = expected_request(InputDataConfig=channels, HyperParameters={"epochs": "2"})
    del expected["Tags"]
    run_train(sm_session, argv, expected)


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
def test_bad_input_fails_before_any_aws_call(sm_session, argv, message):
    args = cli.get_args_parser().parse_args(["train", *BASE, *argv])
    # no responses queued in the Stubber: any AWS call would fail
    with Stubber(sm_session.sagemaker_client), pytest.raises(UsageError, match=message):
        cli.cmd_train(args, session=sm_session)


def test_role_and_output_path_are_required_on_aws(sm_session, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_ROLE_ARN", raising=False)
    args = cli.get_args_parser().parse_args(
        ["train", "--image", IMAGE, "--channel", "training=s3://b/p/", "--output-path", "s3://b/p/models/"]
    )
    with pytest.raises(UsageError, match="--role"):
        cli.cmd_train(args, session=sm_session)
    args = cli.get_args_parser().parse_args(["train", "--image", IMAGE, "--role", ROLE, "--channel", "training=s3://b/p/"])
    with pytest.raises(UsageError, match="--output-path"):
        cli.cmd_train(args, session=sm_session)


def test_trainer_aliases_are_accepted_host_side():
    validate_hyperparameters({"learning_rate": "0.001", "batch_size": "16", "patience": "3", "freeze_backbone": "False"})


def test_local_mode_estimator_gets_local_instance_and_file_output(tmp_path, monkeypatch):
    from smvision_aws.sessions import make_session
    from smvision_aws.training import estimator_kwargs

    monkeypatch.chdir(tmp_path)
    args = cli.get_args_parser().parse_args(
        [
            "train",
            "--local",
            "--image",
            "sagemaker-vision:aws",
            "--instance-count",
            "2",
            "--channel",
            f"training={tmp_path.as_uri()}",
            "--hp",
            "epochs=1",
        ]
    )
    spec = cli._train_spec(args)
    session = make_session(local=True)
    kwargs = estimator_kwargs(spec, session, local=True)
    assert kwargs["instance_type"] == "local" and kwargs["instance_count"] == 2
    assert kwargs["output_path"] == (tmp_path / "sm-local-output").as_uri()
    assert session.config["local"]["local_code"] is True
    assert type(session).__name__ == "LocalSession"

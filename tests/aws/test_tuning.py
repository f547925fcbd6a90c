"""tune: the CreateHyperParameterTuningJob request SDK 3's tuner builds over our
ModelTrainer, and the best-trial summary."""

from __future__ import annotations

import pytest
from botocore.stub import ANY
from smvision_aws import cli, tuning
from smvision_aws.commands.training import cmd_tune
from smvision_aws.training import validate_hyperparameters
from smvision_aws.usage import UsageError

from tests.support.aws import ARN, IMAGE, ROLE, Matching, described_training_job
from train.reporting import METRIC_DEFINITIONS

ARGV = [
    "tune",
    "--image",
    IMAGE,
    "--role",
    ROLE,
    "--channel",
    "training=s3://smv-bucket/shapes/data/",
    "--output-path",
    "s3://smv-bucket/shapes/models/",
    "--hp",
    "epochs=10",
    "--hp",
    "arch=resnet50",
    "--max-jobs",
    "12",
    "--max-parallel-jobs",
    "3",
    "--no-wait",
    "--instance-type",
    "ml.g4dn.xlarge",
    "--tag",
    "project=shapes",
]

TUNING_ARN = f"{ARN}:hyper-parameter-tuning-job/t"


def test_tuning_job_request(session, stubber, sm_stub):
    expected = {
        # the tuner's short name: base, yymmdd-hhmm, within the 32 characters allowed
        "HyperParameterTuningJobName": Matching(r"smvision-hpo-\d{6}-\d{4}"),
        "Tags": [{"Key": "project", "Value": "shapes"}],
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "val_macro_f1"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 12, "MaxParallelTrainingJobs": 3},
            "TrainingJobEarlyStoppingType": "Auto",
            "ParameterRanges": {
                "IntegerParameterRanges": [
                    {"Name": "early-stopping-patience", "MinValue": "2", "MaxValue": "5", "ScalingType": "Linear"},
                ],
                "ContinuousParameterRanges": [
                    {"Name": "lr", "MinValue": "1e-05", "MaxValue": "0.003", "ScalingType": "Logarithmic"},
                    {"Name": "weight-decay", "MinValue": "1e-07", "MaxValue": "0.01", "ScalingType": "Logarithmic"},
                ],
                "CategoricalParameterRanges": [
                    {"Name": "batch-size", "Values": ["16", "32", "64"]},
                    {"Name": "freeze-backbone", "Values": ["true", "false"]},
                ],
            },
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {"epochs": "10", "arch": "resnet50"},
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
        },
    }
    args = cli.get_args_parser().parse_args(ARGV)
    stubber("iam")  # no IAM call: see test_training
    sm_stub.add_response("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": TUNING_ARN}, expected)
    sm_stub.add_response(
        "describe_hyper_parameter_tuning_job", described_tuning_job("smvision-hpo-260101-0000"), {"HyperParameterTuningJobName": ANY}
    )
    result = cmd_tune(args, session=session)
    assert result["status"] == "InProgress" and result["tuning_job"].startswith("smvision-hpo-")


def described_tuning_job(name, status="InProgress", **extra):
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobArn": TUNING_ARN,
        "HyperParameterTuningJobConfig": {"Strategy": "Bayesian", "ResourceLimits": {"MaxParallelTrainingJobs": 3}},
        "HyperParameterTuningJobStatus": status,
        "CreationTime": "2026-01-01T00:00:00Z",
        "TrainingJobStatusCounters": {},
        "ObjectiveStatusCounters": {},
        **extra,
    }


def test_no_early_stopping_and_too_many_parallel_jobs(session, sm_stub):
    args = cli.get_args_parser().parse_args([*ARGV, "--no-early-stopping"])
    sm_stub.add_response("create_hyper_parameter_tuning_job", {"HyperParameterTuningJobArn": TUNING_ARN}, None)
    sm_stub.add_response("describe_hyper_parameter_tuning_job", described_tuning_job("t"), None)
    captured = {}
    session.sagemaker_client.meta.events.register(
        "provide-client-params.sagemaker.CreateHyperParameterTuningJob", lambda params, **_: captured.update(params)
    )
    cmd_tune(args, session=session)
    assert captured["HyperParameterTuningJobConfig"]["TrainingJobEarlyStoppingType"] == "Off"
    args = cli.get_args_parser().parse_args([*ARGV, "--max-jobs", "2", "--max-parallel-jobs", "3"])
    with pytest.raises(UsageError, match="must not exceed"):
        cmd_tune(args, session=session)


def test_tuned_names_may_not_be_fixed(session):
    for fixed in ("lr=0.1", "learning_rate=0.1", "batch_size=8", "patience=3", "freeze_backbone=true"):
        args = cli.get_args_parser().parse_args(ARGV + ["--hp", fixed])
        with pytest.raises(UsageError, match="tuned"):
            cmd_tune(args, session=session)


def test_every_point_of_the_space_is_accepted_by_the_trainer():
    for seed in range(20):
        point = tuning.sample(seed=seed)
        assert 1e-5 <= float(point["lr"]) <= 3e-3 and 1e-7 <= float(point["weight-decay"]) <= 1e-2
        assert point["batch-size"] in {"16", "32", "64"} and 2 <= int(point["early-stopping-patience"]) <= 5
        validate_hyperparameters(point)


def test_best_job_summary(session, sm_stub):
    sm_stub.add_response(
        "describe_hyper_parameter_tuning_job",
        {
            "HyperParameterTuningJobName": "hpo-1",
            "HyperParameterTuningJobArn": f"{ARN}:hyper-parameter-tuning-job/hpo-1",
            "HyperParameterTuningJobConfig": {"Strategy": "Bayesian", "ResourceLimits": {"MaxParallelTrainingJobs": 2}},
            "HyperParameterTuningJobStatus": "Completed",
            "CreationTime": "2026-01-01T00:00:00Z",
            "TrainingJobStatusCounters": {"Completed": 11, "Stopped": 1},
            "ObjectiveStatusCounters": {"Succeeded": 12},
            "BestTrainingJob": {
                "TrainingJobName": "hpo-1-007-abc",
                "TrainingJobArn": f"{ARN}:training-job/hpo-1-007-abc",
                "CreationTime": "2026-01-01T00:00:00Z",
                "TrainingJobStatus": "Completed",
                "TunedHyperParameters": {"lr": "0.0004", "batch-size": "32"},
                "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "val_macro_f1", "Value": 0.93},
            },
        },
        {"HyperParameterTuningJobName": "hpo-1"},
    )
    sm_stub.add_response(
        "describe_training_job",
        described_training_job(
            "hpo-1-007-abc",
            ModelArtifacts={"S3ModelArtifacts": "s3://smv-bucket/shapes/models/hpo-1-007-abc/output/model.tar.gz"},
            HyperParameters={"epochs": "10", "lr": "0.0004", "batch-size": "32", "_tuning_objective_metric": "val_macro_f1"},
        ),
        {"TrainingJobName": "hpo-1-007-abc"},
    )
    args = cli.get_args_parser().parse_args(["tune", "--best", "hpo-1"])
    summary = cmd_tune(args, session=session)
    assert summary["best_training_job"] == "hpo-1-007-abc"
    assert summary["objective"] == {"val_macro_f1": 0.93}
    assert summary["tuned_hyperparameters"] == {"lr": "0.0004", "batch-size": "32"}
    assert summary["hyperparameters"] == {"epochs": "10", "lr": "0.0004", "batch-size": "32"}
    assert summary["model_data"].endswith("hpo-1-007-abc/output/model.tar.gz")

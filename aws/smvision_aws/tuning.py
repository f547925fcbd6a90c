"""Hyperparameter tuning: the ranges users tune on these tasks, Bayesian search on
val_macro_f1 (maximised), with SageMaker's automatic early stopping of weak trials,
through SDK 3's HyperparameterTuner over the same ModelTrainer `train` builds.

The trainer logs `val_macro_f1=...` every epoch (train.reporting) and SageMaker takes a
trial's objective from the metric it parses; with early-stopping-patience in the
ranges, a trial may stop before its last epoch.
"""

from __future__ import annotations

import math
import random

from smvision_aws.sessions import metric_definitions
from smvision_aws.usage import UsageError

OBJECTIVE = "val_macro_f1"

# name: (kind, low/choices, high, scaling) — names are the trainer's own flags.
SEARCH_SPACE = {
    "lr": ("continuous", 1e-5, 3e-3, "Logarithmic"),
    "weight-decay": ("continuous", 1e-7, 1e-2, "Logarithmic"),
    "batch-size": ("categorical", ["16", "32", "64"], None, None),
    "freeze-backbone": ("categorical", ["true", "false"], None, None),
    "early-stopping-patience": ("integer", 2, 5, "Linear"),
}


def hyperparameter_ranges(space: dict | None = None) -> dict:
    from sagemaker.core.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter

    ranges = {}
    for name, (kind, low, high, scaling) in (space or SEARCH_SPACE).items():
        if kind == "continuous":
            ranges[name] = ContinuousParameter(low, high, scaling_type=scaling)
        elif kind == "integer":
            ranges[name] = IntegerParameter(low, high, scaling_type=scaling)
        else:
            ranges[name] = CategoricalParameter(low)
    return ranges


def sample(space: dict | None = None, seed: int = 0) -> dict[str, str]:
    """One point of the space as hyperparameter strings (local dry runs, validation)."""
    rng = random.Random(seed)
    point = {}
    for name, (kind, low, high, _scaling) in (space or SEARCH_SPACE).items():
        if kind == "continuous":
            point[name] = f"{10 ** rng.uniform(math.log10(low), math.log10(high)):.3g}"
        elif kind == "integer":
            point[name] = str(rng.randint(low, high))
        else:
            point[name] = rng.choice(low)
    return point


def build_tuner(
    trainer,
    max_jobs: int = 20,
    max_parallel_jobs: int = 2,
    early_stopping: bool = True,
    base_tuning_job_name: str = "smvision-hpo",
):
    """The tuner over a ModelTrainer; the trainer's tags go to the tuning job too, its
    hyperparameters minus the tuned ones become the static ones."""
    from sagemaker.train.tuner import HyperparameterTuner

    if max_parallel_jobs > max_jobs:
        raise UsageError(f"--max-parallel-jobs ({max_parallel_jobs}) must not exceed --max-jobs ({max_jobs})")
    return HyperparameterTuner(
        trainer,
        objective_metric_name=OBJECTIVE,
        hyperparameter_ranges=hyperparameter_ranges(),
        # The tuner reads its own metric definitions, not the trainer's.
        metric_definitions=metric_definitions(),
        strategy="Bayesian",
        objective_type="Maximize",
        max_jobs=max_jobs,
        max_parallel_jobs=max_parallel_jobs,
        early_stopping_type="Auto" if early_stopping else "Off",
        base_tuning_job_name=base_tuning_job_name,
    )


def best_job_summary(sagemaker_client, tuning_job_name: str) -> dict:
    """The best trial: name, objective value, tuned and full hyperparameters, artifact."""
    tuning = sagemaker_client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job_name)
    best = tuning.get("BestTrainingJob")
    if not best:
        status = tuning.get("HyperParameterTuningJobStatus")
        raise LookupError(f"tuning job {tuning_job_name} has no completed trial yet (status {status})")
    job = sagemaker_client.describe_training_job(TrainingJobName=best["TrainingJobName"])
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    hyperparameters = {k: v for k, v in job.get("HyperParameters", {}).items() if not k.startswith("_")}
    return {
        "tuning_job": tuning_job_name,
        "status": tuning.get("HyperParameterTuningJobStatus"),
        "best_training_job": best["TrainingJobName"],
        "objective": {objective.get("MetricName", OBJECTIVE): objective.get("Value")},
        "tuned_hyperparameters": best.get("TunedHyperParameters", {}),
        "hyperparameters": hyperparameters,
        "model_data": job.get("ModelArtifacts", {}).get("S3ModelArtifacts"),
        "trials": tuning.get("TrainingJobStatusCounters", {}),
    }

"""Endpoint autoscaling through Application Auto Scaling: the variant's
DesiredInstanceCount is registered as a scalable target, and

- real-time endpoints get a target-tracking policy on
  SageMakerVariantInvocationsPerInstance (invocations per instance per minute);
- async endpoints scale on their queue (ApproximateBacklogSizePerInstance), down to
  zero instances with a step policy and alarm that bring the first one back.

cleanup.py deletes what this registers (scalable target, the scale-from-zero alarm).
"""

from __future__ import annotations

from dataclasses import dataclass

from smvision_aws.hosting import DEFAULT_VARIANT
from smvision_aws.usage import UsageError

SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"


@dataclass(frozen=True)
class AutoscalingSpec:
    """The seed workflows' values: 2..4 instances, 10 invocations/instance/minute."""

    min_capacity: int = 2
    max_capacity: int = 4
    target_invocations: float = 10.0
    scale_in_cooldown_s: int = 30
    scale_out_cooldown_s: int = 30

    def check(self, lowest: int = 1) -> None:
        """lowest: 1 for real-time endpoints; 0 for async ones, which can scale to zero."""
        if not lowest <= self.min_capacity <= self.max_capacity or self.max_capacity < 1:
            raise UsageError(
                f"autoscaling needs {lowest} <= --min-capacity ({self.min_capacity}) <= --max-capacity ({self.max_capacity})"
                + ("" if lowest == 0 else "; only --async endpoints scale to zero")
            )
        if self.target_invocations <= 0:
            raise UsageError("--target-invocations must be > 0")


def resource_id(endpoint_name: str, variant: str = DEFAULT_VARIANT) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant}"


def policy_name(endpoint_name: str, variant: str = DEFAULT_VARIANT) -> str:
    return f"{endpoint_name}-{variant}-invocations"


def register_scalable_target(autoscaling_client, rid: str, spec: AutoscalingSpec) -> None:
    autoscaling_client.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION,
        MinCapacity=spec.min_capacity,
        MaxCapacity=spec.max_capacity,
    )


def register_autoscaling(autoscaling_client, endpoint_name: str, spec: AutoscalingSpec, variant: str = DEFAULT_VARIANT) -> str:
    """Register the variant and attach target tracking; returns the policy ARN."""
    spec.check()
    rid = resource_id(endpoint_name, variant)
    register_scalable_target(autoscaling_client, rid, spec)
    response = autoscaling_client.put_scaling_policy(
        PolicyName=policy_name(endpoint_name, variant),
        ServiceNamespace="sagemaker",
        ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(spec.target_invocations),
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": spec.scale_in_cooldown_s,
            "ScaleOutCooldown": spec.scale_out_cooldown_s,
        },
    )
    return response["PolicyARN"]


BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
BACKLOG_WITHOUT_CAPACITY_METRIC = "HasBacklogWithoutCapacity"


def backlog_alarm_name(endpoint_name: str) -> str:
    return f"{endpoint_name}-backlog-without-capacity"


def register_backlog_autoscaling(
    autoscaling_client, cloudwatch_client, endpoint_name: str, spec: AutoscalingSpec, target_backlog: float, variant: str = DEFAULT_VARIANT
) -> dict[str, str]:
    """Async endpoints scale on their queue: target tracking keeps the backlog per
    instance near target_backlog. With min capacity 0 that policy can take the last
    instance away but never brings one back (no instance, no per-instance metric), so a
    step policy adds one when the HasBacklogWithoutCapacity alarm fires."""
    spec.check(lowest=0)
    if target_backlog <= 0:
        raise UsageError("--target-backlog must be > 0")
    rid = resource_id(endpoint_name, variant)
    register_scalable_target(autoscaling_client, rid, spec)
    tracking = autoscaling_client.put_scaling_policy(
        PolicyName=f"{endpoint_name}-{variant}-backlog",
        ServiceNamespace="sagemaker",
        ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(target_backlog),
            "CustomizedMetricSpecification": {
                "MetricName": BACKLOG_METRIC,
                "Namespace": "AWS/SageMaker",
                "Dimensions": _endpoint_dimensions(endpoint_name),
                "Statistic": "Average",
            },
            "ScaleInCooldown": spec.scale_in_cooldown_s,
            "ScaleOutCooldown": spec.scale_out_cooldown_s,
        },
    )
    policies = {"backlog_policy": tracking["PolicyARN"]}
    if spec.min_capacity == 0:
        policies["scale_from_zero_policy"] = _scale_from_zero(autoscaling_client, cloudwatch_client, endpoint_name, rid, spec, variant)
        policies["alarm"] = backlog_alarm_name(endpoint_name)
    return policies


def _endpoint_dimensions(endpoint_name: str) -> list[dict[str, str]]:
    return [{"Name": "EndpointName", "Value": endpoint_name}]


def _scale_from_zero(autoscaling_client, cloudwatch_client, endpoint_name: str, rid: str, spec: AutoscalingSpec, variant: str) -> str:
    """A step policy adding one instance, fired by an alarm on requests waiting while
    the endpoint has none; returns the policy ARN."""
    step = autoscaling_client.put_scaling_policy(
        PolicyName=f"{endpoint_name}-{variant}-scale-from-zero",
        ServiceNamespace="sagemaker",
        ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION,
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Average",
            "Cooldown": spec.scale_out_cooldown_s,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        },
    )
    cloudwatch_client.put_metric_alarm(
        AlarmName=backlog_alarm_name(endpoint_name),
        AlarmDescription=f"requests wait on {endpoint_name} while it has no instance: add one",
        MetricName=BACKLOG_WITHOUT_CAPACITY_METRIC,
        Namespace="AWS/SageMaker",
        Dimensions=_endpoint_dimensions(endpoint_name),
        Statistic="Average",
        Period=60,
        EvaluationPeriods=2,
        DatapointsToAlarm=2,
        Threshold=1.0,
        ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing",
        AlarmActions=[step["PolicyARN"]],
    )
    return step["PolicyARN"]

"""Endpoints (real-time, serverless, multi-model), autoscaling and batch transform.

Real-time autoscaling goes through Application Auto Scaling: the variant's
DesiredInstanceCount is registered as a scalable target and a target-tracking policy
on SageMakerVariantInvocationsPerInstance (invocations per instance per minute)
adds or removes instances.
"""

from __future__ import annotations

from dataclasses import dataclass

from smvision_aws.training import UsageError

DEFAULT_VARIANT = "AllTraffic"  # the SDK's name for a single-variant endpoint
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"


def model_data_from_training_job(sagemaker_client, job_name: str) -> str:
    job = sagemaker_client.describe_training_job(TrainingJobName=job_name)
    status = job.get("TrainingJobStatus")
    if status != "Completed":
        raise UsageError(f"training job {job_name} is {status}; only a Completed job has a model.tar.gz")
    return job["ModelArtifacts"]["S3ModelArtifacts"]


def build_model(image_uri: str, model_data: str, role: str, session, name: str | None = None, env: dict | None = None):
    from sagemaker.model import Model
    from sagemaker.predictor import Predictor

    # Without predictor_cls, Model.deploy returns None instead of a Predictor.
    return Model(
        image_uri=image_uri,
        model_data=model_data,
        role=role,
        sagemaker_session=session,
        name=name,
        env=env or None,
        predictor_cls=Predictor,
    )


def serverless_config(memory_mb: int, max_concurrency: int):
    from sagemaker.serverless import ServerlessInferenceConfig

    if memory_mb not in (1024, 2048, 3072, 4096, 5120, 6144):
        raise UsageError(f"--serverless-memory {memory_mb}: choose 1024, 2048, 3072, 4096, 5120 or 6144")
    return ServerlessInferenceConfig(memory_size_in_mb=memory_mb, max_concurrency=max_concurrency)


def deploy(model, endpoint_name: str, instance_type: str | None, instance_count: int = 1, serverless=None, tags=None, wait: bool = True):
    """Create endpoint config + endpoint; returns a Predictor speaking JSON back."""
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import IdentitySerializer

    kwargs = dict(
        endpoint_name=endpoint_name,
        wait=wait,
        tags=tags or None,
        serializer=IdentitySerializer("image/jpeg"),
        deserializer=JSONDeserializer(),
    )
    if serverless is not None:
        kwargs["serverless_inference_config"] = serverless
    else:
        kwargs.update(initial_instance_count=instance_count, instance_type=instance_type)
    return model.deploy(**kwargs)


@dataclass(frozen=True)
class AutoscalingSpec:
    """The seed workflows' values: 2..4 instances, 10 invocations/instance/minute."""

    min_capacity: int = 2
    max_capacity: int = 4
    target_invocations: float = 10.0
    scale_in_cooldown_s: int = 30
    scale_out_cooldown_s: int = 30

    def check(self) -> None:
        if not 1 <= self.min_capacity <= self.max_capacity:
            raise UsageError(f"autoscaling needs 1 <= --min-capacity ({self.min_capacity}) <= --max-capacity ({self.max_capacity})")
        if self.target_invocations <= 0:
            raise UsageError("--target-invocations must be > 0")


def resource_id(endpoint_name: str, variant: str = DEFAULT_VARIANT) -> str:
    return f"endpoint/{endpoint_name}/variant/{variant}"


def policy_name(endpoint_name: str, variant: str = DEFAULT_VARIANT) -> str:
    return f"{endpoint_name}-{variant}-invocations"


def register_autoscaling(autoscaling_client, endpoint_name: str, spec: AutoscalingSpec, variant: str = DEFAULT_VARIANT) -> str:
    """Register the variant and attach target tracking; returns the policy ARN."""
    spec.check()
    rid = resource_id(endpoint_name, variant)
    autoscaling_client.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=rid,
        ScalableDimension=SCALABLE_DIMENSION,
        MinCapacity=spec.min_capacity,
        MaxCapacity=spec.max_capacity,
    )
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


def build_multi_model(name: str, model_data_prefix: str, image_uri: str, role: str, session):
    """A multi-model endpoint: every model.tar.gz under the prefix is loaded on demand
    (the image serves them with SAGEMAKER_MULTI_MODEL=true, which SageMaker sets for
    Mode=MultiModel)."""
    from sagemaker.multidatamodel import MultiDataModel

    if not model_data_prefix.startswith("s3://") or not model_data_prefix.endswith("/"):
        raise UsageError("--model-data-prefix must be an s3://bucket/prefix/ ending in '/'")
    from sagemaker.predictor import Predictor

    return MultiDataModel(
        name=name, model_data_prefix=model_data_prefix, image_uri=image_uri, role=role, sagemaker_session=session, predictor_cls=Predictor
    )


def transform(
    model,
    input_uri: str,
    output_uri: str,
    instance_type: str,
    instance_count: int = 1,
    content_type: str = "image/jpeg",
    max_payload_mb: int = 6,
    max_concurrent: int | None = None,
    wait: bool = True,
    tags=None,
    logs: bool | None = None,
):
    """Batch transform: one request per file (SplitType None), JSON lines out."""
    transformer = model.transformer(
        instance_count=instance_count,
        instance_type=instance_type,
        output_path=output_uri,
        accept="application/json",
        strategy="SingleRecord",
        assemble_with="Line",
        max_payload=max_payload_mb,
        max_concurrent_transforms=max_concurrent,
        tags=tags or None,
    )
    # Local mode has no CloudWatch: its container logs go to stdout, so logs=False there.
    transformer.transform(input_uri, content_type=content_type, split_type="None", wait=wait, logs=wait if logs is None else logs)
    return transformer

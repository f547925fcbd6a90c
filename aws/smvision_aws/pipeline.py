"""The seed workflow as a SageMaker Pipeline, defined with SDK 3's workflow package
(sagemaker.mlops.workflow, sagemaker.core.workflow):

    PrepareBins (processing: train prepare-bins)
      -> Train (training job on the ImageFolder split)
      -> F1Gate (condition: the job's final val_macro_f1 >= F1Threshold)
           -> Register (model package version, status ModelApprovalStatus)

Each step's arguments are the same requests `process`, `train` and `register` send
(processing.processing_request, training_request below, the registry's package
fields), so a pipeline run and the commands do the same thing; the workflow package
turns parameters and step properties into the definition's {"Get": ...} references
and works out the dependencies. Parameters: instance types, epochs, the F1 threshold,
the raw data and the approval status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from smvision_aws import processing, registry
from smvision_aws.sessions import metric_definitions
from smvision_aws.usage import UsageError

OBJECTIVE = registry.OBJECTIVE
RAW_INPUT = "bins"  # /opt/ml/processing/input/bins/{images,metadata}
DATA_OUTPUT = "data"  # /opt/ml/processing/output/data/{train,valid,test}


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    image_uri: str
    role: str
    raw_data_uri: str | None = None
    data_output_uri: str | None = None
    output_path: str | None = None
    model_package_group: str = "smvision-models"
    processing_instance_type: str = "ml.m5.xlarge"
    training_instance_type: str = "ml.g4dn.xlarge"
    epochs: int = 10
    f1_threshold: float = 0.7
    approval_status: str = registry.DEFAULT_APPROVAL
    hyperparameters: dict[str, str] = field(default_factory=dict)
    tags: list[dict[str, str]] = field(default_factory=list)

    def check(self) -> None:
        for flag, uri in (("--raw-data", self.raw_data_uri), ("--data-output", self.data_output_uri), ("--output-path", self.output_path)):
            if not uri or not uri.startswith("s3://"):
                raise UsageError(f"{flag} s3://bucket/prefix/ is required")
        if "epochs" in self.hyperparameters:
            raise UsageError("epochs is a pipeline parameter: use --epochs (or --parameter Epochs=N at start)")
        if not 0.0 <= self.f1_threshold <= 1.0:
            raise UsageError("--f1-threshold is a macro-F1: 0..1")


class _RequestStep:
    """A pipeline step whose Arguments are a plain service request (built lazily so
    the workflow package is imported only by the `pipeline` command)."""

    @staticmethod
    def make(name: str, step_type, arguments: dict, shape_name: str):
        from sagemaker.core.workflow.properties import Properties
        from sagemaker.mlops.workflow.steps import Step

        class RequestStep(Step):
            def __init__(self):
                super().__init__(name=name, step_type=step_type)
                self._arguments = arguments
                self._properties = Properties(step_name=name, step=self, shape_name=shape_name)

            @property
            def arguments(self):
                return self._arguments

            @property
            def properties(self):
                return self._properties

        return RequestStep()


def training_request(
    image_uri: str, role: str, data_uri, output_path: str, instance_type, hyperparameters: dict, max_run_s: int = 24 * 3600
) -> dict:
    """CreateTrainingJob for the built-in trainer on one channel (no job name: the pipeline names it)."""
    return {
        "AlgorithmSpecification": {"TrainingImage": image_uri, "TrainingInputMode": "File", "MetricDefinitions": metric_definitions()},
        "RoleArn": role,
        "InputDataConfig": [
            {
                "ChannelName": "training",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data_uri, "S3DataDistributionType": "FullyReplicated"}},
            }
        ],
        "OutputDataConfig": {"S3OutputPath": output_path},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": instance_type, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_run_s},
        "HyperParameters": hyperparameters,
    }


def build(spec: PipelineSpec):
    """The Pipeline object (sagemaker.mlops.workflow.pipeline.Pipeline)."""
    from sagemaker.core.workflow.conditions import ConditionGreaterThanOrEqualTo
    from sagemaker.core.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import StepTypeEnum

    spec.check()
    processing_type = ParameterString("ProcessingInstanceType", default_value=spec.processing_instance_type)
    training_type = ParameterString("TrainingInstanceType", default_value=spec.training_instance_type)
    epochs = ParameterInteger("Epochs", default_value=spec.epochs)
    threshold = ParameterFloat("F1Threshold", default_value=spec.f1_threshold)
    raw_data = ParameterString("RawData", default_value=spec.raw_data_uri)
    approval = ParameterString("ModelApprovalStatus", default_value=spec.approval_status, enum_values=list(registry.APPROVAL_STATUSES))

    prepare = prepare_bins_request(spec, processing_type, raw_data)
    step_prepare = _RequestStep.make("PrepareBins", StepTypeEnum.PROCESSING, prepare, "DescribeProcessingJobResponse")

    data_uri = step_prepare.properties.ProcessingOutputConfig.Outputs[DATA_OUTPUT].S3Output.S3Uri
    hyperparameters = {**spec.hyperparameters, "epochs": epochs.to_string()}
    train = training_request(spec.image_uri, spec.role, data_uri, spec.output_path, training_type, hyperparameters)
    step_train = _RequestStep.make("Train", StepTypeEnum.TRAINING, train, "DescribeTrainingJobResponse")

    package = package_request(spec, approval, step_train.properties.ModelArtifacts.S3ModelArtifacts)
    step_register = _RequestStep.make("Register", StepTypeEnum.REGISTER_MODEL, package, "DescribeModelPackageOutput")

    gate = ConditionStep(
        name="F1Gate",
        conditions=[ConditionGreaterThanOrEqualTo(left=step_train.properties.FinalMetricDataList[OBJECTIVE].Value, right=threshold)],
        if_steps=[step_register],
        else_steps=[],
    )
    return Pipeline(
        name=spec.name,
        parameters=[processing_type, training_type, epochs, threshold, raw_data, approval],
        steps=[step_prepare, step_train, gate],
    )


def prepare_bins_request(spec: PipelineSpec, instance_type, raw_data) -> dict:
    """CreateProcessingJob running `train prepare-bins` (no job name: the pipeline
    names each execution's job)."""
    raw_dir = processing.input_path(RAW_INPUT)
    request = processing.processing_request(
        processing.ProcessingSpec(
            image_uri=spec.image_uri,
            role=spec.role,
            command=["train", "prepare-bins", "--images", f"{raw_dir}/images", "--metadata", f"{raw_dir}/metadata"]
            + ["--out", processing.output_path(DATA_OUTPUT)],
            inputs={RAW_INPUT: raw_data},
            outputs={DATA_OUTPUT: spec.data_output_uri},
            instance_type=instance_type,
        ),
        job_name="unused",
    )
    del request["ProcessingJobName"]
    return request


def package_request(spec: PipelineSpec, approval, model_data) -> dict:
    """CreateModelPackage for the trained model, with the registry's content types."""
    return {
        "ModelPackageGroupName": spec.model_package_group,
        "ModelPackageDescription": "sagemaker-vision pipeline model",
        "ModelApprovalStatus": approval,
        "InferenceSpecification": {
            "Containers": [{"Image": spec.image_uri, "ModelDataUrl": model_data}],
            "SupportedContentTypes": registry.CONTENT_TYPES,
            "SupportedResponseMIMETypes": registry.RESPONSE_TYPES,
            "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.xlarge", "ml.g4dn.xlarge"],
            "SupportedTransformInstanceTypes": ["ml.m5.xlarge", "ml.g4dn.xlarge"],
        },
    }


def definition(spec: PipelineSpec) -> str:
    return build(spec).definition()


def boto_client(region: str | None):
    import boto3

    return boto3.Session(region_name=region).client("sagemaker")


def upsert(sagemaker_client, spec: PipelineSpec, pipeline_definition: str) -> dict:
    """Create the pipeline, or update it when it exists (same name)."""
    request = {
        "PipelineName": spec.name,
        "PipelineDefinition": pipeline_definition,
        "PipelineDescription": "sagemaker-vision: prepare-bins -> train -> val_macro_f1 gate -> register",
        "RoleArn": spec.role,
    }
    try:
        arn = sagemaker_client.create_pipeline(**request, **({"Tags": spec.tags} if spec.tags else {}))["PipelineArn"]
        action = "created"
    except ClientError as err:
        message = err.response["Error"].get("Message", "")
        if err.response["Error"]["Code"] not in ("ResourceInUse", "ValidationException") or "already exists" not in message:
            raise
        arn = sagemaker_client.update_pipeline(**request)["PipelineArn"]
        action = "updated"
    return {"pipeline": spec.name, "arn": arn, "action": action, "steps": [s["Name"] for s in json.loads(pipeline_definition)["Steps"]]}


def start(sagemaker_client, name: str, parameters: dict[str, str]) -> dict:
    request = {"PipelineName": name}
    if parameters:
        request["PipelineParameters"] = [{"Name": k, "Value": v} for k, v in parameters.items()]
    arn = sagemaker_client.start_pipeline_execution(**request)["PipelineExecutionArn"]
    return {"pipeline": name, "execution": arn, "parameters": parameters}

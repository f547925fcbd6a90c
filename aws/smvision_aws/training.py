"""Training jobs through SageMaker Python SDK 3's ModelTrainer with our image.

Channels are `name=URI` (s3://bucket/prefix or file:///abs/dir); hyperparameters are
`name=value` with the trainer's own names, checked host-side by the trainer's config
parser (train.config, no torch) so a typo fails here instead of in a paid job.

ModelTrainer builds the CreateTrainingJob request (image, role, compute, spot,
stopping condition, checkpoints, output, channels, tags, metric definitions) and the
job is created through the same `sagemaker.core` TrainingJob.create its train()
calls, with two fields ModelTrainer has no setting for: the exact job name
(`--job-name`; ModelTrainer always appends a timestamp) and Debugger's ProfilerConfig
(off, so no profiler rule jobs are billed next to the job) / DebugHookConfig. The wait
for the job is a boto3 waiter, like process and transform.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import urlparse

from botocore.exceptions import WaiterError

from smvision_aws.sessions import ClientSession, metric_definitions, sdk_session, trainer_schema, without_sdk_role_check
from smvision_aws.usage import UsageError, parse_pairs

log = logging.getLogger(__name__)


def parse_channels(items: list[str] | None, local: bool) -> dict[str, str]:
    channels = parse_pairs(items, "channel")
    if not channels:
        raise UsageError("give at least one --channel, e.g. --channel training=s3://bucket/shapes/")
    for name, uri in channels.items():
        scheme = urlparse(uri).scheme
        if scheme not in ("s3", "file"):
            raise UsageError(f"channel {name}={uri!r}: use s3://bucket/prefix or file:///absolute/dir")
        if scheme == "file" and not local:
            raise UsageError(f"channel {name}={uri!r}: file:// inputs work only with --local")
    return channels


def validate_hyperparameters(hyperparameters: dict[str, str]) -> None:
    """Fail with the trainer's own message (unknown name, bad value, valid names)."""
    container, config, _ = trainer_schema()
    try:
        config.resolve_config(dict(hyperparameters), [])
    except container.ConfigError as err:
        raise UsageError(str(err)) from None


def trainer_field(name: str) -> str:
    """The trainer's field behind a hyperparameter name or alias ('learning_rate' -> 'lr')."""
    return trainer_schema()[1].field_name(name) or name


@dataclass(frozen=True)
class TrainSpec:
    image_uri: str
    role: str
    instance_type: str = "ml.g4dn.xlarge"
    instance_count: int = 1
    channels: dict[str, str] = field(default_factory=dict)
    hyperparameters: dict[str, str] = field(default_factory=dict)
    output_path: str | None = None
    spot: bool = False
    max_run_s: int = 24 * 3600
    max_wait_s: int | None = None
    checkpoint_s3_uri: str | None = None
    tags: list[dict[str, str]] = field(default_factory=list)
    base_job_name: str = "smvision"
    volume_size_gb: int = 30
    debugger_hook: bool = False

    @property
    def max_wait(self) -> int | None:
        """Spot: seconds to wait for capacity and run (SageMaker requires it; 2x max-run by default)."""
        if not self.spot:
            return None
        return self.max_wait_s if self.max_wait_s is not None else 2 * self.max_run_s

    def check(self, local: bool) -> None:
        if self.instance_count < 1:
            raise UsageError("--instance-count must be >= 1")
        if self.spot:
            if local:
                raise UsageError("--spot has no meaning in local mode; drop it or --local")
            # SageMaker's rule: max_wait must be set for spot and be >= max_run.
            if self.max_wait < self.max_run_s:
                raise UsageError(f"--max-wait ({self.max_wait}s) must be >= --max-run ({self.max_run_s}s)")
            if not self.checkpoint_s3_uri:
                raise UsageError(
                    "--spot needs --checkpoint-s3-uri so an interrupted job resumes from /opt/ml/checkpoints instead of starting over"
                )
        elif self.max_wait_s is not None:
            raise UsageError("--max-wait applies only to --spot jobs")
        if self.checkpoint_s3_uri and not self.checkpoint_s3_uri.startswith("s3://"):
            raise UsageError("--checkpoint-s3-uri must be an s3:// URI (local mode mounts no checkpoints)")
        if local and self.output_path and not self.output_path.startswith("file://"):
            raise UsageError("with --local, --output-path must be file:///dir (nothing is uploaded)")


def build_trainer(spec: TrainSpec, session: ClientSession):
    """SDK 3's ModelTrainer for a SageMaker training job of the spec (no AWS call yet)."""
    from sagemaker.core.shapes import CheckpointConfig, MetricDefinition, OutputDataConfig, Tag
    from sagemaker.core.training.configs import Compute, StoppingCondition
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    spec.check(local=False)
    with without_sdk_role_check():
        trainer = ModelTrainer(
            training_mode=Mode.SAGEMAKER_TRAINING_JOB,
            sagemaker_session=sdk_session(session),
            training_image=spec.image_uri,
            role=spec.role,
            base_job_name=spec.base_job_name,
            hyperparameters=dict(spec.hyperparameters),
            compute=Compute(
                instance_type=spec.instance_type,
                instance_count=spec.instance_count,
                volume_size_in_gb=spec.volume_size_gb,
                enable_managed_spot_training=spec.spot or None,
            ),
            stopping_condition=StoppingCondition(max_runtime_in_seconds=spec.max_run_s, max_wait_time_in_seconds=spec.max_wait),
            output_data_config=OutputDataConfig(s3_output_path=spec.output_path),
            checkpoint_config=CheckpointConfig(s3_uri=spec.checkpoint_s3_uri) if spec.checkpoint_s3_uri else None,
            tags=[Tag(key=t["Key"], value=t["Value"]) for t in spec.tags] or None,
        )
    return trainer.with_metric_definitions([MetricDefinition(name=d["Name"], regex=d["Regex"]) for d in metric_definitions()])


def channel_inputs(channels: dict[str, str]) -> list:
    from sagemaker.core.training.configs import InputData

    return [InputData(channel_name=name, data_source=uri) for name, uri in channels.items()]


def start_training_job(
    trainer, spec: TrainSpec, session: ClientSession, job_name: str | None = None, wait: bool = True
) -> tuple[str, str | None]:
    """Create the job; with wait, until it ends. Returns its name and, once Completed,
    its model.tar.gz URI."""
    from sagemaker.core.resources import TrainingJob
    from sagemaker.core.shapes import DebugHookConfig, ProfilerConfig

    request = trainer._create_training_job_args(input_data_config=channel_inputs(spec.channels))
    if job_name:
        request["training_job_name"] = job_name
    # The built-in trainer uses neither: no profiler rule jobs next to it, no hook
    # config in the job. Script-mode smdebug users pass --debugger-hook to get a hook
    # config back, with the job's output path as SDK 2 set it.
    request["profiler_config"] = ProfilerConfig(disable_profiler=True)
    if spec.debugger_hook:
        request["debug_hook_config"] = DebugHookConfig(s3_output_path=spec.output_path)
    name = TrainingJob.create(session=session.boto_session, **request).training_job_name
    log.info("training job %s started; its logs: CloudWatch group /aws/sagemaker/TrainingJobs, streams %s/algo-N-...", name, name)
    if not wait:
        return name, None
    job = wait_for_training_job(session.sagemaker_client, name, spec.max_wait or spec.max_run_s)
    return name, job["ModelArtifacts"]["S3ModelArtifacts"]


def wait_for_training_job(sagemaker_client, name: str, longest_s: int) -> dict:
    """Poll until the job ends (a boto3 waiter, in this session's region: SDK 3's own
    wait reads logs through a client of the default region); fail unless Completed."""
    try:
        # Its longest run or wait plus an hour for start-up and upload.
        attempts = longest_s // 30 + 120
        sagemaker_client.get_waiter("training_job_completed_or_stopped").wait(
            TrainingJobName=name, WaiterConfig={"Delay": 30, "MaxAttempts": attempts}
        )
    except WaiterError:
        pass  # a Failed job ends the waiter with an error; the description below says why
    job = sagemaker_client.describe_training_job(TrainingJobName=name)
    if job["TrainingJobStatus"] != "Completed":
        raise RuntimeError(f"training job {name} {job['TrainingJobStatus']}: {job.get('FailureReason', 'no reason given')}")
    return job

"""Training jobs through the SageMaker SDK's Estimator with our image_uri.

Channels are `name=URI` (s3://bucket/prefix or file:///abs/dir); hyperparameters are
`name=value` with the trainer's own names, checked host-side by the trainer's config
parser (train.config, no torch) so a typo fails here instead of in a paid job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlparse

from smvision_aws.sessions import metric_definitions, trainer_schema


class UsageError(ValueError):
    """Bad command-line input; the message says what to change."""


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """['a=1', 'b=x=y'] -> {'a': '1', 'b': 'x=y'}; rejects items without '='."""
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what} {item!r}: expected NAME=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


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


def parse_tags(items: list[str] | None) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in parse_pairs(items, "tag").items()]


@dataclass
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

    def check(self, local: bool) -> None:
        if self.instance_count < 1:
            raise UsageError("--instance-count must be >= 1")
        if self.spot:
            if local:
                raise UsageError("--spot has no meaning in local mode; drop it or --local")
            # SageMaker's rule: max_wait must be set for spot and be >= max_run.
            if self.max_wait_s is None:
                self.max_wait_s = self.max_run_s * 2
            if self.max_wait_s < self.max_run_s:
                raise UsageError(f"--max-wait ({self.max_wait_s}s) must be >= --max-run ({self.max_run_s}s)")
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


def estimator_kwargs(spec: TrainSpec, session, local: bool) -> dict:
    """Everything handed to sagemaker.estimator.Estimator (separate so tests can read it)."""
    kwargs = dict(
        image_uri=spec.image_uri,
        role=spec.role,
        instance_count=spec.instance_count,
        instance_type=spec.instance_type,
        hyperparameters=dict(spec.hyperparameters),
        metric_definitions=metric_definitions(),
        base_job_name=spec.base_job_name,
        sagemaker_session=session,
        max_run=spec.max_run_s,
        # The built-in trainer uses neither: no debughookconfig.json in the job, no
        # profiler rule jobs billed next to it. Script-mode smdebug users pass
        # --debugger-hook to get SageMaker's hook config back.
        debugger_hook_config=None if spec.debugger_hook else False,
        disable_profiler=True,
    )
    if spec.output_path:
        kwargs["output_path"] = spec.output_path
    if not local:
        kwargs["volume_size"] = spec.volume_size_gb
        if spec.tags:
            kwargs["tags"] = spec.tags
    if spec.spot:
        kwargs.update(use_spot_instances=True, max_wait=spec.max_wait_s)
    if spec.checkpoint_s3_uri:
        kwargs["checkpoint_s3_uri"] = spec.checkpoint_s3_uri
    return kwargs


def build_estimator(spec: TrainSpec, session, local: bool):
    from sagemaker.estimator import Estimator

    spec.check(local)
    return Estimator(**estimator_kwargs(spec, session, local))


def fit(estimator, channels: dict[str, str], wait: bool = True, job_name: str | None = None):
    """Start the job; with wait, stream its logs and return the model artifact URI."""
    estimator.fit(inputs=dict(channels), wait=wait, logs="All" if wait else "None", job_name=job_name)
    job = estimator.latest_training_job
    return job.name, (estimator.model_data if wait else None)

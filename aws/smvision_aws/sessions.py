"""AWS sessions for the commands, and the trainer's torch-free schema (container,
train.config, train.reporting) the tools share."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

# The SDK reads this nested dict as if it came from ~/.sagemaker/config.yaml.
TELEMETRY_OPT_OUT = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}


def trainer_schema():
    """The trainer's torch-free pieces the tools share (never copies of them): the
    `container` contract and `train.config` / `train.reporting`, from the image's own
    package installed on the host (`pip install -e .` in a checkout)."""
    try:
        import container
        from train import config, reporting
    except ImportError as err:
        raise ImportError(
            f"{err}: the host tools use the trainer's config schema; install it from the repository root with `pip install -e .`"
        ) from None
    return container, config, reporting


def metric_definitions() -> list[dict[str, str]]:
    return [dict(d) for d in trainer_schema()[2].METRIC_DEFINITIONS]


def prepare_local_environment(environ=None) -> None:
    """Local mode needs a region and some credentials even though file:// inputs and
    outputs never reach AWS; fill in dummies only where nothing is configured."""
    environ = os.environ if environ is None else environ
    environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    if not (environ.get("AWS_ACCESS_KEY_ID") or environ.get("AWS_PROFILE")):
        environ.setdefault("AWS_ACCESS_KEY_ID", "local-mode")
        environ.setdefault("AWS_SECRET_ACCESS_KEY", "local-mode")


@dataclass(frozen=True)
class ClientSession:
    """The boto3 session every AWS command draws its clients from (sagemaker,
    sagemaker-runtime, application-autoscaling, cloudwatch, s3, tagging) and the
    SageMaker client most of them use."""

    boto_session: object
    sagemaker_client: object

    def client(self, service: str):
        return self.boto_session.client(service)


def make_client_session(region: str | None = None, boto_session=None) -> ClientSession:
    import boto3

    boto_session = boto_session or boto3.Session(region_name=region)
    return ClientSession(boto_session, boto_session.client("sagemaker"))


def sdk_session(session: ClientSession):
    """SDK 3's Session over the same boto3 session (ModelTrainer and the tuner take
    one), with telemetry off; imported here so commands without the SDK start fast."""
    from sagemaker.core.helper.session_helper import Session

    return Session(boto_session=session.boto_session, sagemaker_client=session.sagemaker_client, sagemaker_config=TELEMETRY_OPT_OUT)


@contextlib.contextmanager
def without_sdk_role_check():
    """SDK 3 checks an execution role on this machine before a training job starts:
    it simulates ec2:*NetworkInterface* (VPC jobs) and unconditioned
    cloudwatch:PutMetricData and refuses the role when the simulator denies them. The
    least-privilege training role of `iam-policies` grants neither on purpose, so the
    check would refuse exactly the role this project recommends (whenever the caller
    may call iam:SimulatePrincipalPolicy). SageMaker checks the role itself when the
    job starts. A SAGEMAKER_VALIDATE_ROLE the user set is left as it is."""
    key = "SAGEMAKER_VALIDATE_ROLE"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)

"""SageMaker sessions for AWS and for the SDK's local mode, and the trainer's
torch-free schema (container, train.config, train.reporting) the tools share."""

from __future__ import annotations

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
    """What the boto3-only commands (process, register, cleanup) take from a session;
    an SDK 2 sagemaker.Session has the same two attributes."""

    boto_session: object
    sagemaker_client: object


def make_client_session(region: str | None = None, boto_session=None) -> ClientSession:
    import boto3

    boto_session = boto_session or boto3.Session(region_name=region)
    return ClientSession(boto_session, boto_session.client("sagemaker"))


def make_session(local: bool = False, region: str | None = None, serving_port: int | None = None, boto_session=None):
    """A sagemaker Session (AWS) or LocalSession (docker on this machine).

    Imported lazily so `lambda-package` and `iam-policies` work without the SDK.
    """
    import boto3
    import sagemaker
    from sagemaker.local import LocalSession

    if local:
        prepare_local_environment()
        boto_session = boto_session or boto3.Session(region_name=region or os.environ["AWS_DEFAULT_REGION"])
        session = LocalSession(boto_session=boto_session, sagemaker_config=TELEMETRY_OPT_OUT)
        local_config = {"local_code": True}
        if serving_port:
            local_config["serving_port"] = serving_port
        session.config = {**(session.config or {}), "local": local_config}
        return session
    boto_session = boto_session or boto3.Session(region_name=region)
    return sagemaker.Session(boto_session=boto_session, sagemaker_config=TELEMETRY_OPT_OUT)

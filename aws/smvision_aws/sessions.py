"""SageMaker sessions for AWS and for the SDK's local mode, and the repository
imports (train.reporting, train.config) the tools share with the trainer."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

# The SDK reads this nested dict as if it came from ~/.sagemaker/config.yaml.
TELEMETRY_OPT_OUT = {
    "SchemaVersion": "1.0",
    "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}},
}
REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_module(name: str):
    """Import a module of the trainer (train.reporting, train.config) without torch.

    Works from a checkout whether or not the main package is installed: the tools
    must use the trainer's own metric regexes and hyperparameter names, never copies.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name not in (name, name.split(".")[0]) or not (REPO_ROOT / "train").is_dir():
            raise
        sys.path.insert(0, str(REPO_ROOT))
        return importlib.import_module(name)


def metric_definitions() -> list[dict[str, str]]:
    return [dict(d) for d in repo_module("train.reporting").METRIC_DEFINITIONS]


def prepare_local_environment(environ=None) -> None:
    """Local mode needs a region and some credentials even though file:// inputs and
    outputs never reach AWS; fill in dummies only where nothing is configured."""
    environ = os.environ if environ is None else environ
    environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    if not (environ.get("AWS_ACCESS_KEY_ID") or environ.get("AWS_PROFILE")):
        environ.setdefault("AWS_ACCESS_KEY_ID", "local-mode")
        environ.setdefault("AWS_SECRET_ACCESS_KEY", "local-mode")


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


def local_instance_type(gpu: bool = False) -> str:
    return "local_gpu" if gpu else "local"

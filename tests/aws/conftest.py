"""Host-side tests of aws/: botocore Stubber (and moto for IAM), no torch, no AWS.

Every socket connection to anything but loopback fails the test, so a stub that
stops matching can never turn into a real AWS call, and the Lambda's URL guard is
exercised without sending traffic anywhere but this machine.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

import boto3
import pytest

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, REPO / "aws"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/smvision-execution"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/sagemaker-vision:abc1234"


def _is_loopback(host) -> bool:
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for name, value in {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)

    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise AssertionError(f"test tried to connect to {address}: only loopback is allowed")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        numeric_only = kwargs.get("flags", 0) & socket.AI_NUMERICHOST
        try:
            ipaddress.ip_address(str(host).split("%")[0])
        except ValueError:
            if host not in ("localhost", None) and not numeric_only:
                raise AssertionError(f"test tried to resolve {host!r} through DNS") from None
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def boto_session():
    return boto3.Session(region_name=REGION)


@pytest.fixture
def sm_session(boto_session):
    """A real sagemaker.Session whose clients are stubbed by the test."""
    import sagemaker
    from smvision_aws.sessions import TELEMETRY_OPT_OUT

    sm = boto_session.client("sagemaker")
    runtime = boto_session.client("sagemaker-runtime")
    return sagemaker.Session(
        boto_session=boto_session, sagemaker_client=sm, sagemaker_runtime_client=runtime, sagemaker_config=TELEMETRY_OPT_OUT
    )


@pytest.fixture
def no_sleep(monkeypatch):
    """The SDK's endpoint waiter polls with time.sleep; stubbed answers need no waiting."""
    import sagemaker.session

    monkeypatch.setattr(sagemaker.session.time, "sleep", lambda seconds: None)

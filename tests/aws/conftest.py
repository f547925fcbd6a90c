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


class Matching:
    """An expected request value that equals any string matching the regex (generated names)."""

    def __init__(self, pattern: str):
        import re

        self.regex = re.compile(pattern)

    def __eq__(self, other) -> bool:
        return isinstance(other, str) and self.regex.fullmatch(other) is not None

    def __repr__(self) -> str:
        return f"Matching({self.regex.pattern!r})"


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


# SDK 3 asks for the runtime client under its old name.
_SERVICE_ALIASES = {"runtime.sagemaker": "sagemaker-runtime"}


@pytest.fixture
def boto_session():
    """A boto3 Session that hands out one client per service, whoever asks (our code,
    SDK 3's Session, ModelTrainer, the tuner, sagemaker.core resources), so a test's
    Stubber on `boto_session.client(NAME)` sees every call made to that service."""
    session = boto3.Session(region_name=REGION)
    clients = {}
    make_client = session.client

    def client(service_name, *args, **kwargs):
        name = _SERVICE_ALIASES.get(service_name, service_name)
        if name not in clients:
            clients[name] = make_client(name, region_name=REGION)
        return clients[name]

    session.client = client
    yield session
    # SDK 3 caches clients per boto3 session; let this one go with its stubbed clients.
    from sagemaker.core.utils.utils import SageMakerClient

    SageMakerClient.reset()


@pytest.fixture
def session(boto_session):
    """What the commands take as `session=`: the stub-backed boto3 session."""
    from smvision_aws.sessions import make_client_session

    return make_client_session(boto_session=boto_session)

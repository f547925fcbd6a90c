"""Fixtures of the host-side tests of aws/: botocore Stubber (and moto for IAM), no
torch, no AWS. Shared values and request builders: tests/support/aws.py.

Every socket connection to anything but loopback fails the test, so a stub that
stops matching can never turn into a real AWS call, and the Lambda's URL guard is
exercised without sending traffic anywhere but this machine.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import socket
import sys

import boto3
import pytest
from botocore.stub import Stubber

from tests.support.aws import LAMBDA_ENDPOINT, REGION, REPO

for path in (REPO, REPO / "aws"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


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


@pytest.fixture
def stubber(boto_session):
    """stubber(SERVICE): an active botocore Stubber on the test's client of SERVICE (the
    one `session` and `boto_session` hand out). A call without a queued response fails
    the test, so a Stubber with nothing queued proves no call was made; when the test
    ends, every queued response must have been used."""
    stubs: dict[str, Stubber] = {}

    def stub(service: str) -> Stubber:
        if service not in stubs:
            stubs[service] = Stubber(boto_session.client(service))
            stubs[service].activate()
        return stubs[service]

    yield stub
    try:
        for each in stubs.values():
            each.assert_no_pending_responses()
    finally:
        for each in stubs.values():
            each.deactivate()


@pytest.fixture
def sm_stub(stubber):
    """The Stubber of the SageMaker client (`session.sagemaker_client`)."""
    return stubber("sagemaker")


@pytest.fixture
def runtime_stub(stubber):
    return stubber("sagemaker-runtime")


@pytest.fixture
def s3_stub(stubber):
    return stubber("s3")


# --- the Lambda bridge (aws/lambda/handler.py) ---------------------------------------


@pytest.fixture(scope="session")
def bridge():
    """The handler module, loaded from its file as Lambda loads it (it is no package)."""
    spec = importlib.util.spec_from_file_location("smv_lambda_handler", REPO / "aws" / "lambda" / "handler.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bridge_config(bridge):
    return bridge.Config(
        endpoint_name=LAMBDA_ENDPOINT, allowed_s3_prefix="s3://smv-bucket/shapes/inference/", max_image_bytes=200_000, fetch_timeout_s=2.0
    )


@pytest.fixture
def call_bridge(bridge, runtime_stub, s3_stub):
    """call_bridge(event, config) -> (status, body): one event through the handler, with
    the stubbed runtime and S3 clients; the answer must be API-Gateway shaped."""

    def call(event, config):
        result = bridge.handle(event, config, runtime_stub.client, s3_stub.client)
        assert set(result) == {"statusCode", "headers", "body", "isBase64Encoded"}
        assert result["headers"] == {"Content-Type": "application/json"}
        return result["statusCode"], json.loads(result["body"])

    return call

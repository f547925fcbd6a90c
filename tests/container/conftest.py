"""Harness for tests that drive the real image through the docker SDK.

The image is built once per session with docker/build.sh (layers are cached, so a
code change rebuilds in seconds), or taken as-is from $IMAGE with SKIP_BUILD=1.
Every container, network and volume a test starts is removed afterwards, also on
failure. If docker is unreachable the tests fail: a skip would hide that nothing ran.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # train.synthetic (Pillow only) makes the test data

from train import synthetic  # noqa: E402 (importable only after the path insert above)

DEFAULT_IMAGE = "sagemaker-vision:test"
LABEL = "sagemaker-vision-test"
# One value per pytest session, so the end-of-session sweep removes this session's
# leftovers only, never those of another run sharing the daemon.
SESSION = uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as err:  # noqa: BLE001 - any failure to reach the daemon means the same
        pytest.fail(f"docker is not reachable ({err}); container tests need a running dockerd", pytrace=False)
    yield client
    # Belt and braces: anything a crashed test left behind carries our label.
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}={SESSION}"}):
        container.remove(force=True)
    for network in client.networks.list(filters={"label": f"{LABEL}={SESSION}"}):
        network.remove()


@pytest.fixture(scope="session")
def image(docker_client) -> str:
    name = os.environ.get("IMAGE", DEFAULT_IMAGE)
    if os.environ.get("SKIP_BUILD") != "1":
        subprocess.run([str(REPO / "docker" / "build.sh"), name], check=True, cwd=REPO)
    docker_client.images.get(name)  # fails loudly when the image is missing
    return name


class Containers:
    """Starts containers with the test label and removes them at teardown."""

    def __init__(self, client):
        self.client = client
        self.started = []
        self.networks = []

    def run(self, image, command, **kwargs):
        kwargs.setdefault("detach", True)
        labels = dict(kwargs.pop("labels", {}) or {})
        labels[LABEL] = SESSION
        container = self.client.containers.run(image, command, labels=labels, **kwargs)
        self.started.append(container)
        return container

    def network(self):
        net = self.client.networks.create(f"smv-test-{uuid.uuid4().hex[:8]}", driver="bridge", labels={LABEL: SESSION})
        self.networks.append(net)
        return net

    def cleanup(self):
        for container in self.started:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for net in self.networks:
            with contextlib.suppress(docker.errors.NotFound):
                net.remove()


@pytest.fixture
def containers(docker_client):
    handle = Containers(docker_client)
    yield handle
    handle.cleanup()


def wait_exit(container, timeout: float = 600) -> tuple[int, str]:
    """Exit code and combined logs of a container started detached."""
    result = container.wait(timeout=timeout)
    return result["StatusCode"], container.logs().decode(errors="replace")


def opt_ml(tmp_path: Path) -> Path:
    """An empty /opt/ml tree to bind-mount, world-writable so the container can write."""
    root = tmp_path / "opt_ml"
    for sub in ("input/config", "input/data", "model", "output", "checkpoints"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o777)
    return root


def mount(root: Path) -> dict:
    return {str(root): {"bind": "/opt/ml", "mode": "rw"}}


def host_port(container, port: str = "8080/tcp", timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        ports = container.attrs["NetworkSettings"]["Ports"].get(port)
        if ports:
            return int(ports[0]["HostPort"])
        if container.status == "exited":
            raise AssertionError("container exited before publishing its port:\n" + container.logs().decode(errors="replace"))
        time.sleep(0.2)
    raise AssertionError(f"{port} was never published")


def wait_ping(base_url: str, container, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base_url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        container.reload()
        if container.status == "exited":
            raise AssertionError("server exited:\n" + container.logs().decode(errors="replace"))
        time.sleep(0.5)
    raise AssertionError("/ping never answered 200:\n" + container.logs().decode(errors="replace"))


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    """Coloured-shapes ImageFolder with train/valid/test splits."""
    root = tmp_path_factory.mktemp("shapes")
    synthetic.make_shapes(root, {"train": 40, "valid": 12, "test": 12}, size=64, seed=0)
    return root


@dataclass(frozen=True)
class TrainedRun:
    root: Path  # the bind-mounted /opt/ml
    logs: str

    @property
    def model_dir(self) -> Path:
        return self.root / "model"


@pytest.fixture(scope="session")
def trained(image, docker_client, tmp_path_factory, shapes_data) -> TrainedRun:
    """One training run per session on the shapes data, configured as SageMaker does
    (hyperparameters.json with string values) plus a command-line override."""
    root = opt_ml(tmp_path_factory.mktemp("trained"))
    subprocess.run(["cp", "-r", str(shapes_data), str(root / "input/data/training")], check=True)
    hyperparameters = {"epochs": "3", "batch_size": "16", "learning_rate": "0.003", "image-size": "64", "freeze-backbone": "False"}
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    handle = Containers(docker_client)
    try:
        container = handle.run(image, ["train", "--epochs", "6", "--log-interval", "4"], volumes=mount(root))
        code, logs = wait_exit(container, timeout=900)
        assert code == 0, logs
    finally:
        handle.cleanup()
    return TrainedRun(root, logs)


@pytest.fixture(scope="session")
def trained_model(trained) -> Path:
    """A resnet18 trained on the shapes data (classes red_circle, green_square,
    blue_triangle; image size 64)."""
    return trained.model_dir

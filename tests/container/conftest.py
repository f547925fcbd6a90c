"""Harness for tests that drive the real image through the docker SDK.

The image is built once per session with docker/build.sh (layers are cached, so a
code change rebuilds in seconds), or taken as-is from $IMAGE with SKIP_BUILD=1.
Every container, network and volume a test starts is removed afterwards, also on
failure. If docker is unreachable the tests fail: a skip would hide that nothing ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # train.synthetic (Pillow only) makes the test data

from tests.support.containers import LABEL, SESSION, Containers, mount, opt_ml, wait_exit  # noqa: E402 (after the path insert)
from train import synthetic  # noqa: E402 (importable only after the path insert above)

DEFAULT_IMAGE = "sagemaker-vision:test"


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


@pytest.fixture
def containers(docker_client):
    handle = Containers(docker_client)
    yield handle
    handle.cleanup()


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

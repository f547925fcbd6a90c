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
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # train.synthetic (Pillow only) makes the test data

from tests.support.containers import LABEL, SESSION, Containers, gateway, mount, opt_ml, run_to_completion, serving_engine  # noqa: E402 (after the path insert)
from tests.support.net import free_port  # noqa: E402 (after the path insert)
from tests.support.sdk_local import LOCAL_CONTAINER, NETWORK, TELEMETRY_OPT_OUT  # noqa: E402 (after the path insert)
from train import synthetic  # noqa: E402 (importable only after the path insert above)

DEFAULT_IMAGE = "sagemaker-vision:test"
DEFAULT_CPU_IMAGE = "sagemaker-vision:test-cpu"


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


@pytest.fixture(scope="session")
def cpu_image(docker_client) -> str:
    """The torch-free serving image (docker/build.sh --cpu), built like `image`: $IMAGE_CPU
    as-is with SKIP_BUILD=1."""
    name = os.environ.get("IMAGE_CPU", DEFAULT_CPU_IMAGE)
    if os.environ.get("SKIP_BUILD") != "1":
        subprocess.run([str(REPO / "docker" / "build.sh"), "--cpu", name], check=True, cwd=REPO)
    docker_client.images.get(name)
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
    logs = run_to_completion(docker_client, image, ["train", "--epochs", "6", "--log-interval", "4"], timeout=900, volumes=mount(root))
    return TrainedRun(root, logs)


@pytest.fixture(scope="session")
def trained_model(trained) -> Path:
    """A resnet18 trained on the shapes data (classes red_circle, green_square,
    blue_triangle; image size 64)."""
    return trained.model_dir


# Writes random-init models in the artifact format (vision/artifact.py) inside the image:
# argv: engine_files (0/1), then (out_dir, arch, num_classes)... With engine_files, each
# also gets what the trainer writes for the CPU engines (model.onnx, model.int8.onnx and
# a calibration sample of synthetic shapes), so ONNX Runtime serves it without exporting
# at every start.
MAKE_MODELS = r"""
import os, sys, torch
from pathlib import Path
from vision.models import build_model
from vision.artifact import ModelSpec
engine_files, args = sys.argv[1] == "1", sys.argv[2:]
if engine_files:
    from train import synthetic
    from train.config import TrainConfig
    from train.outputs import save_engine_files
    synthetic.make_shapes(Path("/tmp/shapes"), {"train": 8}, size=80, seed=0)
    samples = [(str(p), i % int(args[2])) for i, p in enumerate(sorted(Path("/tmp/shapes/train").glob("*/*.png")))]
for out, arch, n in zip(args[0::3], args[1::3], args[2::3]):
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_model(arch, int(n)).state_dict(), out / "model.pt")
    ModelSpec(arch, tuple(f"class_{i}" for i in range(int(n))), 64, 73,
              (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).save(out)
    if engine_files:
        save_engine_files(TrainConfig(), {"train": samples}, out)
    for f in out.iterdir(): os.chmod(f, 0o666)
    os.chmod(out, 0o777)
"""


@pytest.fixture(scope="session")
def model_store(image, docker_client, tmp_path_factory) -> Path:
    """store/{r18, r50}: random-init models in the trainer's artifact format, classes
    tests.support.endpoint.CLASSES (serve one with tests.support.endpoint.model_root).
    Under SMV_TEST_ENGINE=onnxruntime they carry the CPU engines' files too, as a model
    trained now does; otherwise not, so `auto` serves them on torch (older artifacts)."""
    store = tmp_path_factory.mktemp("models")
    os.chmod(store, 0o777)
    engine_files = "1" if serving_engine() == "onnxruntime" else "0"
    command = ["python", "-c", MAKE_MODELS, engine_files, "/store/r18", "resnet18", "3", "/store/r50", "resnet50", "3"]
    run_to_completion(docker_client, image, command, timeout=300, volumes={str(store): {"bind": "/store", "mode": "rw"}})
    return store


# --- SageMaker SDK local mode (SDK 2.x and SDK 3 tests; run them under the flock) ---------


@pytest.fixture
def sdk_local_mode(monkeypatch, docker_client):
    """What the SDK's local mode needs to start (a region and dummy credentials: it never
    calls AWS); afterwards the sagemaker-local network is removed if this test's local
    mode created it and nothing is left on it."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local-mode-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local-mode-test")
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    had_network = bool(docker_client.networks.list(names=[NETWORK]))
    yield
    if not had_network:  # the SDK's compose creates it; leave one that was there before
        for network in docker_client.networks.list(names=[NETWORK]):
            network.reload()
            if not network.containers:
                network.remove()


@pytest.fixture
def local_session(sdk_local_mode, docker_client, image):
    """An SDK 2.x LocalSession with local code on a free serving port (never 8080: tests
    share the machine). Its started_containers() are {name: container} of the local-mode
    containers of the test image this test started; they are removed afterwards, also
    on failure."""
    import boto3
    from sagemaker.local import LocalSession

    def ours():
        return {
            c.name: c
            for c in docker_client.containers.list(all=True)
            if LOCAL_CONTAINER.match(c.name) and c.attrs["Config"]["Image"] == image
        }

    before = set(ours())
    session = LocalSession(boto_session=boto3.Session(region_name="us-east-1"), sagemaker_config=TELEMETRY_OPT_OUT)
    session.config = {"local": {"local_code": True, "serving_port": free_port()}}
    session.started_containers = lambda: {name: c for name, c in ours().items() if name not in before}
    yield session
    for container in session.started_containers().values():
        container.remove(force=True)


# --- a real MLflow tracking server (the training and monitoring tracking tests) -------------


@pytest.fixture
def mlflow_server(containers, tmp_path):
    """(tracking URI, network) of a fresh MLflow server on a new docker network's gateway."""
    network = containers.network()
    host = gateway(network)
    port = free_port(host)
    store = tmp_path / "mlflow"
    store.mkdir()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--allowed-hosts",
        f"{host}:{port},{host}",
    ]
    log = (store / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("mlflow server did not start:\n" + (store / "server.log").read_text())
            time.sleep(0.5)
        yield uri, network
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()

"""Models written for AWS's PyTorch inference image, served unchanged by ours.

These follow the shape of AWS's own local integration tests of their PyTorch inference
toolkit (our code): single-model cases go through SageMaker Python SDK 2.x
`PyTorchModel(...).deploy(instance_type="local")`, which repacks the entry point into
the archive's code/ and sets SAGEMAKER_PROGRAM; the multi-model case drives the MME API
of a plain `docker run`. The models are made inside the image (random weights): an
MNIST-shaped CNN and a 784-input MLP saved as state dicts, whose inference.py defines
only model_fn, and a TorchScript ResNet-18 `model.pt` with only a transform_fn, fed a
real photo (the JPEG matplotlib ships as sample data).

Runs in the SDK 2.x venv (requirements-sdk2.txt; tests/run_all.sh makes it): SDK 2.x
cannot share a venv with the SDK 3 the host tools use.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.containers import opt_ml, run_to_completion, wait_exit, wait_ping
from tests.support.endpoint import start_server, until_ok
from tests.support.payloads import npy_bytes
from tests.support.sdk_local import LOCAL_ROLE

DATA = Path(__file__).parent / "data"
WHEEL = "inflection-0.5.1-py2.py3-none-any.whl"  # a tiny pure-Python PyPI package, vendored: no index at test time
BATCH = 32  # AWS's tests send 300 (their 5 MB body cap); fewer rows keep this quick on 2 CPUs

NETS = r"""
import torch
import torch.nn as nn
import torch.nn.functional as F

class Net(nn.Module):
    # The classic MNIST CNN: 1x28x28 in, 10 log-probabilities out.
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(x.view(-1, 320)))
        return F.log_softmax(self.fc2(x), dim=1)

class Flat(nn.Module):
    # The 1-D variant: 784 columns in, 10 out.
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)
"""

MAKE_ARTIFACTS = (
    NETS
    + r"""
import os, shutil, sys, torchvision
import matplotlib.cbook
out = sys.argv[1]
torch.manual_seed(0)
for name, net, filename in (("mnist", Net(), "model.pth"), ("flat", Flat(), "model.pth")):
    os.makedirs(f"{out}/{name}", exist_ok=True)
    torch.save(net.state_dict(), f"{out}/{name}/{filename}")
os.makedirs(f"{out}/resnet18", exist_ok=True)
torch.jit.script(torchvision.models.resnet18(weights=None).eval()).save(f"{out}/resnet18/model.pt")
shutil.copy(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), f"{out}/photo.jpg")
for root, dirs, files in os.walk(out):
    for entry in dirs + files:
        os.chmod(os.path.join(root, entry), 0o777)
"""
)

# model_fn only: AWS's default input_fn, predict_fn and output_fn do the rest.
MNIST_INFERENCE = (
    NETS
    + r"""
import os
import inflection  # installed from code/requirements.txt

def model_fn(model_dir):
    assert inflection.underscore("ModelFn") == "model_fn"
    model = Net()
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu"))
    return model.eval()
"""
)

# model_fn must run once per worker process, never per request.
ONCE_INFERENCE = (
    NETS
    + r"""
import os
LOADED = []

def model_fn(model_dir):
    if LOADED:
        raise RuntimeError(f"model_fn called twice in process {os.getpid()}")
    LOADED.append(os.getpid())
    print(f"model_fn ran in pid {os.getpid()}", flush=True)
    model = Flat()
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pth"), map_location="cpu"))
    return model.eval()
"""
)

# transform_fn only, next to a TorchScript model.pt: the default model_fn loads it.
RESNET_TRANSFORM = r"""
import io, json
import torch
from PIL import Image
from torchvision import transforms

PREPROCESS = transforms.Compose([
    transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
    transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
])

def transform_fn(model, request_body, content_type, accept):
    image = Image.open(io.BytesIO(request_body)).convert("RGB")
    with torch.no_grad():
        output = model(PREPROCESS(image).unsqueeze(0))
    return json.dumps(torch.softmax(output[0], dim=0).tolist()), "application/json"
"""


@pytest.fixture(scope="module")
def artifacts(image, docker_client, tmp_path_factory) -> Path:
    """mnist/model.pth, flat/model.pth, resnet18/model.pt and photo.jpg, made in the image."""
    out = tmp_path_factory.mktemp("aws-models")
    os.chmod(out, 0o777)
    run_to_completion(
        docker_client, image, ["python", "-c", MAKE_ARTIFACTS, "/out"], timeout=300, volumes={str(out): {"bind": "/out", "mode": "rw"}}
    )
    return out


def model_tar(folder: Path, target: Path) -> Path:
    """model.tar.gz of a folder's files at the archive root, as users upload them."""
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)
    return target


class Deployed:
    """PyTorchModel(...).deploy(instance_type="local"), deleted model-first afterwards."""

    def __init__(self, session, image, model_data: Path, entry_point: str, source_dir: str | None = None, **kwargs):
        from sagemaker.pytorch import PyTorchModel

        self.session = session
        self.model = PyTorchModel(
            model_data=model_data.as_uri(),
            entry_point=entry_point,
            source_dir=source_dir,
            image_uri=image,
            role=LOCAL_ROLE,
            framework_version="2.1",
            py_version="py310",
            sagemaker_session=session,
            # Named, so the SDK does not ask STS for the account's default bucket; with
            # local code and a file:// model nothing is uploaded there.
            code_location="s3://local-mode-unused/code",
            **kwargs,
        )

    def __enter__(self):
        self.predictor = self.model.deploy(initial_instance_count=1, instance_type="local")
        return self.predictor

    def __exit__(self, *exc):
        self.predictor.delete_model()
        self.predictor.delete_endpoint()

    def logs(self) -> str:
        return "".join(c.logs().decode(errors="replace") for c in self.session.started_containers().values())


def predict(predictor, data, serializer, deserializer):
    predictor.serializer, predictor.deserializer = serializer, deserializer
    return predictor.predict(data)


def test_model_fn_only_state_dict_json_and_npy_with_each_accept(local_session, image, artifacts, tmp_path):
    from sagemaker.deserializers import CSVDeserializer, JSONDeserializer, NumpyDeserializer
    from sagemaker.serializers import JSONSerializer, NumpySerializer

    code = tmp_path / "code"
    code.mkdir()
    (code / "inference.py").write_text(MNIST_INFERENCE)
    shutil.copy(DATA / WHEEL, code / WHEEL)
    (code / "requirements.txt").write_text("--no-index\n--find-links .\ninflection==0.5.1\n")
    tar = model_tar(artifacts / "mnist", tmp_path / "model.tar.gz")
    batch = np.random.default_rng(0).random((BATCH, 1, 28, 28), dtype=np.float32)

    deployment = Deployed(local_session, image, tar, "inference.py", source_dir=str(code))
    with deployment as predictor:
        answers = {}
        for name, serializer in (("json", JSONSerializer()), ("npy", NumpySerializer())):
            answers[name, "json"] = np.array(predict(predictor, batch, serializer, JSONDeserializer()))
            answers[name, "csv"] = np.array(predict(predictor, batch, serializer, CSVDeserializer()), dtype=np.float32)
            answers[name, "npy"] = predict(predictor, batch, serializer, NumpyDeserializer())
    for key, answer in answers.items():
        assert answer.shape == (BATCH, 10), key
        assert np.allclose(np.exp(answer).sum(axis=1), 1, atol=1e-4), key  # log-probabilities of one model
        assert np.allclose(answer, answers["npy", "npy"], atol=1e-5), key


def test_flat_model_fed_csv_with_two_workers_calls_model_fn_once_each(local_session, image, artifacts, tmp_path):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import CSVSerializer

    entry = tmp_path / "inference.py"
    entry.write_text(ONCE_INFERENCE)
    tar = model_tar(artifacts / "flat", tmp_path / "model.tar.gz")
    rows = np.random.default_rng(1).random((4, 784), dtype=np.float32)

    deployment = Deployed(local_session, image, tar, str(entry), model_server_workers=2)
    with deployment as predictor:
        for _ in range(8):  # several calls, so both workers answer and neither reloads
            answer = np.array(predict(predictor, rows, CSVSerializer(), JSONDeserializer()))
            assert answer.shape == (4, 10)
            assert np.allclose(np.exp(answer).sum(axis=1), 1, atol=1e-4)
        one_row = np.array(predict(predictor, rows[:1], CSVSerializer(), JSONDeserializer()))
        assert one_row.shape == (1, 10) and np.allclose(one_row, answer[:1], atol=1e-5)
        logs = deployment.logs()
    pids = set(re.findall(r"model_fn ran in pid (\d+)", logs))
    assert len(pids) == 2, logs[-3000:]
    assert "called twice" not in logs, logs[-3000:]


def test_torchscript_with_only_transform_fn_and_an_absolute_entry_point(local_session, image, artifacts, tmp_path):
    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.serializers import IdentitySerializer

    entry = tmp_path / "project" / "code" / "transform.py"  # not inference.py: SAGEMAKER_PROGRAM must be honoured
    entry.parent.mkdir(parents=True)
    entry.write_text(RESNET_TRANSFORM)
    tar = model_tar(artifacts / "resnet18", tmp_path / "model.tar.gz")
    photo = (artifacts / "photo.jpg").read_bytes()

    deployment = Deployed(local_session, image, tar, str(entry))  # SDK 2.x sets SAGEMAKER_PROGRAM to this host path
    with deployment as predictor:
        probabilities = predict(predictor, photo, IdentitySerializer("image/jpeg"), JSONDeserializer())
    assert len(probabilities) == 1000
    assert abs(sum(probabilities) - 1) < 1e-3 and min(probabilities) >= 0


# --- multi-model endpoint ----------------------------------------------------------


def test_mme_sequence_with_aws_style_models(containers, image, artifacts, tmp_path):
    root = opt_ml(tmp_path)
    models = root / "models"
    shutil.copytree(artifacts / "resnet18", models / "resnet18")
    (models / "resnet18" / "code").mkdir()
    (models / "resnet18" / "code" / "inference.py").write_text(RESNET_TRANSFORM)
    shutil.copytree(artifacts / "mnist", models / "mnist")
    (models / "mnist" / "code").mkdir()
    (models / "mnist" / "code" / "inference.py").write_text(MNIST_INFERENCE)
    shutil.copy(DATA / WHEEL, models / "mnist" / "code" / WHEEL)
    (models / "mnist" / "code" / "requirements.txt").write_text("--no-index\n--find-links .\ninflection==0.5.1\n")
    container, base = start_server(containers, image, root, env={"SAGEMAKER_MULTI_MODEL": "true"})
    wait_ping(base, container)

    def load(name, url):
        return requests.post(base + "/models", json={"model_name": name, "url": url}, timeout=180)

    def listed():
        return requests.get(base + "/models", timeout=10).json()

    assert listed() == {"models": []}
    assert load("resnet18", "/opt/ml/models/resnet18").status_code == 200, container.logs().decode()[-3000:]
    assert load("mnist", "/opt/ml/models/mnist").status_code == 200, container.logs().decode()[-3000:]
    assert listed() == {
        "models": [
            {"modelName": "resnet18", "modelUrl": "/opt/ml/models/resnet18"},
            {"modelName": "mnist", "modelUrl": "/opt/ml/models/mnist"},
        ]
    }
    assert requests.delete(base + "/models/mnist", timeout=30).status_code == 200
    assert listed() == {"models": [{"modelName": "resnet18", "modelUrl": "/opt/ml/models/resnet18"}]}
    assert load("ghost", "/opt/ml/models/not-there").status_code == 404
    assert requests.delete(base + "/models/mnist", timeout=30).status_code == 404
    assert load("resnet18", "/opt/ml/models/resnet18").status_code == 409
    assert load("mnist", "/opt/ml/models/mnist").status_code == 200

    photo = (artifacts / "photo.jpg").read_bytes()
    response = requests.post(base + "/models/resnet18/invoke", data=photo, headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert response.status_code == 200, response.text
    probabilities = response.json()
    assert len(probabilities) == 1000 and abs(sum(probabilities) - 1) < 1e-3

    headers = {"Content-Type": "application/x-npy", "Accept": "application/json", "X-Amzn-SageMaker-Target-Model": "mnist"}
    response = requests.post(base + "/invocations", data=npy_bytes(np.zeros((3, 1, 28, 28), dtype=np.float32)), headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    assert np.array(response.json()).shape == (3, 10)
    container.kill(signal="SIGTERM")
    assert wait_exit(container, timeout=60)[0] == 0


def test_mms_backend_gives_a_user_model_the_same_defaults(containers, image, artifacts, tmp_path):
    root = opt_ml(tmp_path)
    shutil.rmtree(root / "model")
    shutil.copytree(artifacts / "flat", root / "model")
    (root / "model" / "code").mkdir()
    (root / "model" / "code" / "inference.py").write_text(ONCE_INFERENCE)
    environment = {"SM_VISION_SERVE_BACKEND": "mms", "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    container, base = start_server(containers, image, root, env=environment)
    wait_ping(base, container, timeout=180)
    rows = "\n".join(",".join(["0.5"] * 784) for _ in range(3))
    csv = {"Content-Type": "text/csv", "Accept": "text/csv"}
    # MMS answers /ping before its worker has loaded the model
    response = until_ok(lambda: requests.post(base + "/invocations", data=rows, headers=csv, timeout=30))
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/csv")
    answer = np.loadtxt(io.StringIO(response.text), delimiter=",")
    assert answer.shape == (3, 10) and np.allclose(np.exp(answer).sum(axis=1), 1, atol=1e-4)
    refused = requests.post(base + "/invocations", data=rows, headers={"Content-Type": "text/csv", "Accept": "image/png"}, timeout=30)
    assert refused.status_code == 406 and "Traceback" not in refused.text

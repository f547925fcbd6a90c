"""timm models through the real image (issue 24): `arch=timm/<name>` trains with timm's own
pretrained config (input size, mean/std, interpolation, crop), which travels in the
model spec so the server preprocesses exactly as timm does; pretrained weights come from
a `.safetensors` file in the `pretrained` channel, never from a hub.

timm's `test_*` models (a few hundred thousand parameters) keep it fast; the data is a
few dozen scikit-learn digits as class folders.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from PIL import Image
from sklearn.datasets import load_sample_image

from tests.support import digits as digits_data
from tests.support.containers import Containers, host_port, mount, opt_ml, wait_exit, wait_ping
from tests.support.model_outputs import outputs_in_image
from tests.support.payloads import png_bytes

BASE = {"batch_size": "8", "epochs": "1", "num_workers": "0", "log_interval": "2", "lr": "0.003"}


@pytest.fixture(scope="module")
def digits():
    found = digits_data.load(60)
    return found[:40], found[40:]


def train_job(handle: Containers, image: str, root, hyperparameters: dict) -> str:
    (root / "input/config/hyperparameters.json").write_text(json.dumps({**BASE, **hyperparameters}))
    code, logs = wait_exit(handle.run(image, ["train"], volumes=mount(root)), timeout=900)
    assert code == 0, logs
    return logs


def with_digits(root, digits):
    train, valid = digits
    digits_data.write_image_folder(root / "input/data/training/train", train)
    digits_data.write_image_folder(root / "input/data/training/valid", valid)
    return root


@pytest.fixture(scope="module")
def timm_model(image, docker_client, tmp_path_factory, digits):
    """timm/test_vit from random init, at timm's own input size (no image_size given)."""
    root = with_digits(opt_ml(tmp_path_factory.mktemp("timm")), digits)
    handle = Containers(docker_client)
    try:
        train_job(handle, image, root, {"arch": "timm/test_vit"})
    finally:
        handle.cleanup()
    return root / "model"


def test_a_timm_model_carries_timms_preprocessing_in_its_spec(timm_model):
    spec = json.loads((timm_model / "model_spec.json").read_text())
    assert spec["arch"] == "timm/test_vit" and spec["preprocess"] == "timm"
    # test_vit's pretrained config: 160 pixels, crop_pct 0.95, bicubic (not the 224 / 0.875 / bilinear presets)
    assert (spec["image_size"], spec["crop_pct"], spec["interpolation"], spec["crop_mode"]) == (160, 0.95, "bicubic", "center")
    assert spec["resize_size"] == 168  # floor(160 / 0.95), as timm computes its scale size
    assert "timm" in spec["versions"]


def photos() -> list[bytes]:
    """Detailed pictures (scikit-learn's two sample photos and seeded noise, as PNG): resized
    by a different resampler, their pixels change enough to show in the model's outputs."""
    rng = np.random.default_rng(0)
    pictures = [load_sample_image("china.jpg"), load_sample_image("flower.jpg"), rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)]
    return [png_bytes(Image.fromarray(picture)) for picture in pictures]


def test_the_trainer_exports_a_timm_model_in_center_crop_mode(timm_model):
    spec = json.loads((timm_model / "model_spec.json").read_text())
    assert (spec["onnx_file"], spec["int8_file"], spec["calibration_file"]) == ("model.onnx", "model.int8.onnx", "calibration.npy")


@pytest.mark.parametrize(("engine", "tolerance"), [("torch", 1e-6), ("onnxruntime", 1e-4)])
def test_a_timm_model_is_served_as_timm_preprocesses(image, containers, timm_model, tmp_path, engine, tolerance):
    """The served probabilities equal the model's on timm's own eval transform, built in the
    image by timm.data.create_transform from the model's pretrained config, on each fp32
    engine. On torch the tolerance is tight on purpose: the same geometry through
    torchvision's tensor resize (what the server did before timm models) moves these
    probabilities by ~2e-5, measured; the server's own arithmetic by less than 1e-7. On
    ONNX Runtime the torch-free preprocessing (timm's resize and center crop in Pillow)
    feeds the exported model, which differs by its own arithmetic, ~1e-6 here."""
    inputs = photos()
    expected = outputs_in_image(containers, image, timm_model, inputs, tmp_path, transform="timm")
    server = containers.run(
        image,
        ["serve"],
        volumes={str(timm_model): {"bind": "/opt/ml/model", "mode": "ro"}},
        ports={"8080/tcp": None},
        environment={"SM_VISION_ENGINE": engine, "SM_VISION_PRECISION": "fp32"},
    )
    base = f"http://127.0.0.1:{host_port(server)}"
    wait_ping(base, server)
    assert f"engine {engine}, precision fp32" in server.logs().decode()
    classes = json.loads((timm_model / "model_spec.json").read_text())["classes"]
    for body, probabilities in zip(inputs, expected, strict=True):
        answer = requests.post(f"{base}/invocations", data=body, headers={"Content-Type": "image/png"}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert [answer.json()["probabilities"][c] for c in classes] == pytest.approx(probabilities, rel=0, abs=tolerance)


MAKE_PRETRAINED = """
import timm, torch
from safetensors.torch import save_file
torch.manual_seed(7)
model = timm.create_model("test_convnext", pretrained=False)  # timm's own 1000-class head
save_file(model.state_dict(), "/opt/ml/input/data/pretrained/model.safetensors")
"""

COMPARE = """
import json, torch
from safetensors.torch import load_file
pretrained = load_file("/opt/ml/input/data/pretrained/model.safetensors")
trained = torch.load("/opt/ml/model/model.pt", weights_only=True)
head = [k for k in trained if k.startswith("head.fc.")]
same = [k for k in trained if k not in head and torch.equal(trained[k], pretrained[k])]
print("COMPARED " + json.dumps({"tensors": len(trained), "head": head, "same": len(same), "head_shape": list(trained["head.fc.weight"].shape)}))
"""


def test_a_timm_model_starts_from_a_safetensors_file_in_the_pretrained_channel(image, containers, tmp_path, digits):
    """With the backbone frozen, every tensor but the new 10-class head is still the
    file's after training: the weights came from the channel's .safetensors file."""
    root = with_digits(opt_ml(tmp_path), digits)
    (root / "input/data/pretrained").mkdir()
    code, logs = wait_exit(containers.run(image, ["python", "-c", MAKE_PRETRAINED], volumes=mount(root)), timeout=300)
    assert code == 0, logs
    train_job(containers, image, root, {"arch": "timm/test_convnext", "image_size": "64", "freeze_backbone": "true"})
    code, logs = wait_exit(containers.run(image, ["python", "-c", COMPARE], volumes=mount(root)), timeout=300)
    assert code == 0, logs
    compared = json.loads(next(line for line in logs.splitlines() if line.startswith("COMPARED "))[len("COMPARED ") :])
    assert compared["head"] == ["head.fc.weight", "head.fc.bias"] and compared["head_shape"][0] == 10
    assert compared["same"] == compared["tensors"] - 2
    spec = json.loads((root / "model/model_spec.json").read_text())
    assert spec["image_size"] == 64 and spec["preprocess"] == "timm"

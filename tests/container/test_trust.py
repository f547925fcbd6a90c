"""Predictions people can trust, through the real image over HTTP: the trainer's
temperature scaling (digits), and the per-request options of
X-Amzn-SageMaker-Custom-Attributes on the session's ResNet-18 (trained by the image on
the shapes, 64 px, calibrated): plain answers byte-identical to today's path, Grad-CAM
(structure and the top class; where the heat falls is tests/unit/test_explain.py's
quadrant test, on a model small enough to train there), flip TTA, the abstain flag,
embeddings and OOD scores, bad values, and the batch-transform default
(SM_VISION_CUSTOM_ATTRIBUTES), with micro-batching on and off."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support import digits
from tests.support.containers import Containers, mount, opt_ml, run_to_completion, wait_exit, wait_ping
from tests.support.endpoint import post
from train import synthetic

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
SIZE = 64  # the session model's image size: Grad-CAM's map on a ResNet is SIZE/32 cells a side
ANSWER = {"predicted_label", "confidence", "probabilities", "top_k"}

# Today's path for a plain request, in the server's container: the default input step,
# the classifier's calibrated probabilities, the default JSON encoding.
EXPECTED = r"""
import sys, torch
from pathlib import Path
from container import ServeConfig
from serve import codec
from serve.engines import load_classifier
config = ServeConfig.from_env()
classifier = load_classifier(Path("/opt/ml/model"), torch.device("cpu"), config.precision)
classifier.warm_up()
limits = codec.DecodeLimits.from_config(config, draft_min_side=2 * classifier.spec.resize_size)
for path in sys.argv[1:]:
    decoded = codec.decode(Path(path).read_bytes(), "image/png", classifier.preprocess, limits)
    k = min(config.top_k, len(classifier.classes))
    sys.stdout.write(codec.encode(classifier.probabilities(decoded.inputs), classifier.classes, k, decoded).decode() + "\n")
"""


def writable(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)
    return path


def train(docker_client, image, tmp: Path, hyperparameters: dict, write_data) -> Path:
    """An /opt/ml tree after `train` ran on the data write_data(channel) wrote."""
    root = opt_ml(tmp)
    write_data(root / "input/data/training")
    for path in (root / "input/data").rglob("*"):
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hyperparameters))
    run_to_completion(docker_client, image, ["train"], timeout=1200, volumes=mount(root))
    return root


@pytest.fixture(scope="module")
def monitored_model(image, docker_client, trained_model, tmp_path_factory) -> Path:
    """A copy of the session's model with a monitoring baseline written by `monitor
    baseline` (for the OOD scores)."""
    tmp = tmp_path_factory.mktemp("monitored")
    model = tmp / "model"
    shutil.copytree(trained_model, model)
    for path in [model, *model.rglob("*")]:
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    synthetic.make_shapes(tmp / "data", {"baseline": 16}, size=SIZE, seed=5)
    handle = Containers(docker_client)
    try:
        inside = "/opt/ml/processing/model"
        container = handle.run(
            image,
            ["monitor", "baseline", "--model", inside, "--data", "/data/baseline"],
            volumes={str(model): {"bind": inside, "mode": "rw"}, str(tmp / "data"): {"bind": "/data", "mode": "ro"}},
        )
        code, logs = wait_exit(container, timeout=600)
    finally:
        handle.cleanup()
    assert code == 0 and "wrote the monitoring baseline" in logs, logs
    return model


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> list[Path]:
    """Fresh shapes images to send."""
    root = writable(tmp_path_factory.mktemp("held_out"))
    synthetic.make_shapes(root, {"test": 4}, size=SIZE, seed=11)
    for path in root.rglob("*"):
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    return sorted(root.rglob("*.png"))


def serve(containers, image, model: Path, tmp: Path, env: dict, extra_volumes: dict | None = None):
    root = opt_ml(tmp)
    shutil.rmtree(root / "model")
    shutil.copytree(model, root / "model")
    for path in (root / "model").rglob("*"):
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    # Grad-CAM, embeddings, OOD scores and TTA run on the torch engine (docs/serving.md); the
    # trainer's model would be served on ONNX Runtime on this CPU otherwise.
    env = {"SM_VISION_ENGINE": "torch", **env}
    container = containers.run(
        image, ["serve"], volumes={**mount(root), **(extra_volumes or {})}, environment=env, ports={"8080/tcp": None}
    )
    container.reload()
    base = f"http://127.0.0.1:{container.ports['8080/tcp'][0]['HostPort']}"
    wait_ping(base, container, timeout=180)
    return container, base


def ask(base: str, body: bytes, attributes: str | None = None, **headers) -> requests.Response:
    if attributes is not None:
        headers[HEADER] = attributes
    return post(base, body, "image/png", headers=headers)


@pytest.mark.parametrize("batching", ["on", "off"])
def test_per_request_options_through_the_image(containers, image, monitored_model, held_out, tmp_path, batching):
    folder = held_out[0].parents[2]
    volumes = {str(folder): {"bind": "/held_out", "mode": "ro"}}
    container, base = serve(containers, image, monitored_model, tmp_path, {"SM_VISION_BATCHING": batching}, volumes)

    # A plain request answers exactly what today's path computes in the same container.
    in_image = ["/held_out/" + str(path.relative_to(folder)) for path in held_out]
    code, output = container.exec_run(["python", "-c", EXPECTED, *in_image])
    assert code == 0, output.decode()
    expected = output.decode().splitlines()
    bodies = [path.read_bytes() for path in held_out]
    plain = [ask(base, body) for body in bodies]
    assert [answer.status_code for answer in plain] == [200] * len(bodies)
    assert [answer.text for answer in plain] == expected
    plain = [answer.json() for answer in plain]

    # Grad-CAM: the plain answer plus an explanation of its top class.
    for body, answer in zip(bodies, plain, strict=True):
        explained = ask(base, body, "explain=gradcam")
        assert explained.status_code == 200, explained.text
        explained = explained.json()
        explanation = explained.pop("explanation")
        assert explained == answer
        assert explanation["method"] == "gradcam" and explanation["class"] == answer["predicted_label"]
        grid = np.asarray(explanation["grid"])
        assert grid.shape == (SIZE // 32, SIZE // 32) and grid.min() >= 0 and grid.max() <= 1
        overlay = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"])))
        assert overlay.format == "PNG" and overlay.size == (SIZE, SIZE)
    no_overlay = ask(base, bodies[0], "explain=gradcam;overlay=false").json()
    assert "overlay_png" not in no_overlay["explanation"]

    # Flip TTA: the mean of the image's and its mirror's answers.
    mirror = io.BytesIO()
    Image.open(io.BytesIO(bodies[0])).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror, "PNG")
    mirrored = ask(base, mirror.getvalue()).json()
    averaged = ask(base, bodies[0], "tta=flip").json()
    assert set(averaged) == ANSWER
    for name, value in averaged["probabilities"].items():
        assert value == pytest.approx((plain[0]["probabilities"][name] + mirrored["probabilities"][name]) / 2, abs=1e-3)

    # Abstain: the flag exactly when the top-1 probability is below the threshold.
    least = min(range(len(plain)), key=lambda i: plain[i]["confidence"])
    confidence = plain[least]["confidence"]
    assert confidence < 1.0
    above = ask(base, bodies[least], f"abstain_below={confidence!r}").json()  # equal is not below
    below = ask(base, bodies[least], f"abstain_below={float(np.nextafter(confidence, 2.0))!r}").json()
    assert above == plain[least]
    assert below.pop("abstained") is True and below == plain[least]

    # Embeddings: the penultimate vector (ResNet-18: 512), the same for the same image; OOD scores.
    first, again = (ask(base, bodies[0], "output=embedding, ood=true").json() for _ in range(2))
    assert len(first["embedding"]) == 512 and first["embedding"] == again["embedding"]
    assert 0 <= first["ood"]["percentile"] <= 100 and 0 < first["ood"]["p_value"] <= 1 and first["ood"]["baseline_id"]
    array = ask(base, bodies[0], "output=embedding", Accept="application/x-npy")
    assert array.headers["content-type"] == "application/x-npy"
    assert np.load(io.BytesIO(array.content)).tolist() == [first["embedding"]]

    # A bad value of one of our keys is a 400 naming it; keys of others are left alone.
    bad = ask(base, bodies[0], "explain=shap")
    assert bad.status_code == 400 and bad.json() == {"error": f"{HEADER}: explain='shap': choose gradcam or none"}
    assert ask(base, bodies[0], "trace=abc-123,mine=1").text == expected[0]
    assert "Traceback" not in container.logs().decode()


def test_batch_transform_takes_the_options_from_the_job(containers, image, monitored_model, held_out, tmp_path):
    """CreateTransformJob sends no per-request header: SM_VISION_CUSTOM_ATTRIBUTES (the
    job's Environment) asks every record for an explanation; a header still wins."""
    env = {"SAGEMAKER_BATCH": "true", "SM_VISION_CUSTOM_ATTRIBUTES": "explain=gradcam,overlay=false"}
    _, base = serve(containers, image, monitored_model, tmp_path, env)
    lines = "".join(json.dumps({"image": base64.b64encode(path.read_bytes()).decode()}) + "\n" for path in held_out[:5])
    response = post(base, lines.encode(), "application/jsonlines")
    assert response.status_code == 200, response.text
    records = [json.loads(line) for line in response.text.splitlines()]
    assert len(records) == 5
    for record in records:
        assert record["explanation"]["class"] == record["predicted_label"] and "overlay_png" not in record["explanation"]
    plain = ask(base, held_out[0].read_bytes(), "explain=none").json()
    assert set(plain) == ANSWER


def test_calibration_on_the_digits(containers, image, docker_client, tmp_path):
    """Digits from scratch, no weight decay or label smoothing: the temperature fitted on
    the validation split lowers ECE and NLL on the test split, the served probabilities
    move as T says, and the served labels are unchanged. (The trainer's random-resized
    crops keep this short run under- rather than overconfident; the overconfident case
    is tests/unit/test_calibration.py's, on an MLP.)"""
    data = digits.load(1100)

    def write(out: Path):
        for split, part in (("train", data[:400]), ("valid", data[400:700]), ("test", data[700:])):
            digits.write_files(out, part, split)

    hyperparameters = {
        "epochs": "12",
        "batch_size": "32",
        "learning_rate": "0.003",
        "image-size": "32",
        "weight-decay": "0",
        "label-smoothing": "0",
    }
    root = train(docker_client, image, tmp_path / "train", hyperparameters, write)
    report = json.loads((root / "output/data/metrics.json").read_text())
    calibration = report["calibration"]
    assert calibration["split"] == "test" and calibration["fitted_on"] == "valid" and calibration["images"] == 400
    assert calibration["ece_after"] < calibration["ece_before"], calibration
    assert calibration["nll_after"] < calibration["nll_before"], calibration
    assert (root / "output/data/reliability_diagram.png").is_file()
    spec = json.loads((root / "model/model_spec.json").read_text())
    assert spec["temperature"] == calibration["temperature"] != 1.0

    uncalibrated = tmp_path / "uncalibrated_model"
    shutil.copytree(root / "model", uncalibrated)
    (uncalibrated / "model_spec.json").write_text(json.dumps({**spec, "temperature": 1.0}))
    answers = {}
    for name, model in (("calibrated", root / "model"), ("uncalibrated", uncalibrated)):
        container, base = serve(containers, image, model, tmp_path / f"serve_{name}", {})
        with requests.Session() as session:
            answers[name] = [
                session.post(base + "/invocations", data=digit.png(), headers={"Content-Type": "image/png"}, timeout=30).json()
                for digit in data[700:]
            ]
        container.remove(force=True)
    labels = {name: [answer["predicted_label"] for answer in answered] for name, answered in answers.items()}
    assert labels["calibrated"] == labels["uncalibrated"]  # accuracy unchanged
    correct = sum(label == digit.name for label, digit in zip(labels["calibrated"], data[700:], strict=True))
    assert correct / 400 > 0.5  # the served model is the trained one (chance: 0.1)
    # softmax(logits / T): the top probability falls for T > 1 (an overconfident model), rises for T < 1
    temperature = spec["temperature"]
    pairs = [(a["confidence"], b["confidence"]) for a, b in zip(answers["calibrated"], answers["uncalibrated"], strict=True)]
    if temperature > 1:
        assert all(calibrated <= raw for calibrated, raw in pairs) and any(calibrated < raw for calibrated, raw in pairs)
    else:
        assert all(calibrated >= raw for calibrated, raw in pairs) and any(calibrated > raw for calibrated, raw in pairs)

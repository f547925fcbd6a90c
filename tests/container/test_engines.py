"""The CPU engines through the real images (docs/serving.md, "Engines and precision").

The trainer's artifact carries model.onnx, its int8 variant and the calibration sample;
the full image serves that model on each engine (SM_VISION_ENGINE / SM_VISION_PRECISION)
and names engine and precision in the ready line and /metrics; the torch-free image
(docker/build.sh --cpu) stays under 1 GB, has no torch, serves the same model through
HTTP with the full image's ONNX Runtime answers, and fails /ping, naming the full image,
for a model that needs torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import requests

from tests.support.containers import Containers, opt_ml, run_to_completion, wait_guard, wait_ping
from tests.support.endpoint import post, start_server
from train import synthetic

CLASSES = tuple(synthetic.SHAPE_CLASSES)
TIE_MARGIN = 0.05  # vision.guard's: a top-1 change counts only where fp32's top two are further apart
ENGINE_METRIC = re.compile(r"^sm_vision_model_engine\{([^}]*)\} 1\.0$", re.MULTILINE)
FULL_IMAGE_HINT = "full sagemaker-vision image"
# The torch-free image as users run it: its one engine, whatever SMV_TEST_ENGINE asks of the full image.
SLIM_DEFAULTS = {"SM_VISION_ENGINE": "auto"}


def serving_root(tmp_path: Path, model: Path) -> Path:
    """An /opt/ml tree whose model/ is a copy of `model`."""
    root = opt_ml(tmp_path)
    shutil.rmtree(root / "model")
    shutil.copytree(model, root / "model")
    os.chmod(root / "model", 0o777)
    return root


def split_images(shapes_data: Path) -> list[Path]:
    return sorted((shapes_data / "test").glob("*/*.png"))


def serve_and_predict(client, image: str, root: Path, images: list[Path], env: dict) -> dict:
    """Starts `image` on `root`, predicts every image, returns the answers, the engine
    labels of /metrics and the logs; the container is removed whatever happens."""
    containers = Containers(client)
    try:
        container, base = start_server(containers, image, root, env)
        wait_ping(base, container, timeout=300)
        wait_guard(base, container)  # int8 serves once its guard passes: every answer below comes from one precision
        answers = []
        for path in images:
            response = post(base, path.read_bytes(), "image/png")
            assert response.status_code == 200, response.text
            answers.append(response.json()["probabilities"])
        # The per-request extras after the plain answers: on ONNX Runtime they load the torch copy.
        extras = {
            attributes: post(base, images[0].read_bytes(), "image/png", headers={"X-Amzn-SageMaker-Custom-Attributes": attributes})
            for attributes in ("output=embedding", "explain=gradcam,overlay=false", "tta=flip")
        }
        labels = ENGINE_METRIC.findall(requests.get(f"{base}/metrics", timeout=10).text)
        return {
            "answers": answers,
            "engine_labels": labels,
            "extras": {key: (r.status_code, r.json()) for key, r in extras.items()},
            "logs": container.logs().decode(errors="replace"),
        }
    finally:
        containers.cleanup()


@pytest.fixture(scope="module")
def served(docker_client, image, cpu_image, trained_model, shapes_data, tmp_path_factory):
    """The trained model's answers on the shapes test split, per (image, engine, precision),
    each server started once."""
    cache: dict[tuple[str, str, str], dict] = {}

    def get(which: str, engine: str, precision: str) -> dict:
        key = (which, engine, precision)
        if key not in cache:
            root = serving_root(tmp_path_factory.mktemp("served"), trained_model)
            env = {"SM_VISION_ENGINE": engine, "SM_VISION_PRECISION": precision}
            cache[key] = serve_and_predict(docker_client, cpu_image if which == "cpu" else image, root, split_images(shapes_data), env)
        return cache[key]

    return get


def top1(answer: dict) -> str:
    return max(answer, key=answer.get)


def decisive(answer: dict) -> bool:
    first, second = sorted(answer.values())[-2:][::-1]
    return first - second > TIE_MARGIN


def test_trained_artifact_carries_the_engine_files(trained, trained_model):
    spec = json.loads((trained_model / "model_spec.json").read_text())
    assert (spec["onnx_file"], spec["int8_file"], spec["calibration_file"]) == ("model.onnx", "model.int8.onnx", "calibration.npy")
    for name in ("model.onnx", "model.int8.onnx", "calibration.npy"):
        assert (trained_model / name).stat().st_size > 0, name
    assert "wrote the CPU engines' files" in trained.logs
    # int8 was checked against the validation split's labels (36 images) and kept
    check = spec["int8_check"]
    assert check["passed"] is True and check["images"] == 36, check
    assert check["int8_accuracy"] >= check["fp32_accuracy"] - 0.5 and check["max_drop"] == 0.5
    assert json.loads((trained.root / "output/data/metrics.json").read_text())["int8_check"] == check
    assert "int8 vs fp32 on 36 validation images" in trained.logs


@pytest.mark.parametrize(("engine", "precision"), [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("auto", "auto")])
def test_full_image_serves_on_each_engine_and_names_it(served, engine, precision):
    result = served("full", engine, precision)
    expected_engine = "onnxruntime" if engine == "auto" else engine  # auto on this x86 CPU (an AVX2 or AVX-512 class)
    expected_precision = "int8" if precision == "auto" else precision
    [labels] = result["engine_labels"]
    assert f'engine="{expected_engine}"' in labels and f'precision="{expected_precision}"' in labels, labels
    assert f"engine {expected_engine}, precision {expected_precision}" in result["logs"]
    reference = served("full", "torch", "fp32")["answers"]
    for ours, fp32 in zip(result["answers"], reference, strict=True):
        if expected_precision == "fp32":
            assert top1(ours) == top1(fp32)
            assert max(abs(ours[c] - fp32[c]) for c in CLASSES) < 1e-3
        elif decisive(fp32):
            assert top1(ours) == top1(fp32), (ours, fp32)


@pytest.mark.parametrize(("engine", "precision"), [("torch", "fp32"), ("onnxruntime", "int8")])
def test_full_image_answers_per_request_extras_on_each_engine(served, engine, precision):
    """Embeddings and Grad-CAM need the torch module: beside ONNX Runtime the server loads
    the same weights on torch fp32 at the first such request, so they answer on every
    engine, with torch fp32's numbers; flip TTA runs on the served engine."""
    result = served("full", engine, precision)
    reference = served("full", "torch", "fp32")["extras"]
    for attributes, (status, body) in result["extras"].items():
        assert status == 200, (attributes, body)
    embedding, reference_embedding = (
        result["extras"]["output=embedding"][1]["embedding"],
        reference["output=embedding"][1]["embedding"],
    )
    assert len(embedding) == len(reference_embedding) > 0
    assert max(abs(a - b) for a, b in zip(embedding, reference_embedding, strict=True)) < 1e-3
    explained, expected = (answers["explain=gradcam,overlay=false"][1]["explanation"] for answers in (result["extras"], reference))
    assert explained["class"] == expected["class"]
    assert (
        max(abs(a - b) for line, other in zip(explained["grid"], expected["grid"], strict=True) for a, b in zip(line, other, strict=True))
        <= 2e-3
    )
    beside = "explain and embeddings on torch fp32 beside onnxruntime" in result["logs"]
    assert beside == (engine == "onnxruntime"), result["logs"][-3000:]


def test_cpu_image_refuses_per_request_extras_naming_the_full_image(served):
    for attributes, (status, body) in served("cpu", "auto", "auto")["extras"].items():
        assert status == 400 and FULL_IMAGE_HINT in body["error"], (attributes, body)


def test_int8_guard_is_logged_with_its_numbers(served):
    logs = served("full", "onnxruntime", "int8")["logs"]
    assert re.search(r"accuracy guard: int8 kept \(int8 vs fp32 on 64 images: 0 decisive top-1 flips", logs), logs


def test_cpu_image_is_small_and_has_no_torch(docker_client, cpu_image):
    size = docker_client.images.get(cpu_image).attrs["Size"]
    assert size < 1_000_000_000, f"{cpu_image} is {size / 1e9:.2f} GB"
    command = ["python", "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)"]
    run_to_completion(docker_client, cpu_image, command, timeout=120, entrypoint=[])


def test_cpu_image_answers_as_the_full_image_does(served):
    slim, full = served("cpu", "auto", "auto"), served("full", "onnxruntime", "int8")
    [labels] = slim["engine_labels"]
    assert 'engine="onnxruntime"' in labels and 'precision="int8"' in labels, labels
    for ours, theirs in zip(slim["answers"], full["answers"], strict=True):
        assert top1(ours) == top1(theirs)
        assert max(abs(ours[c] - theirs[c]) for c in CLASSES) < 1e-4
    assert "torch" not in " ".join(line for line in slim["logs"].splitlines() if "Traceback" in line)


def test_cpu_image_answers_before_the_int8_guard_has_run(containers, cpu_image, trained_model, shapes_data, tmp_path):
    """Ready as soon as fp32 is loaded: the ready line says int8 waits for its guard, the
    first prediction is answered, and the switch to int8 is logged after both. The time
    from start to the first answer is printed (benchmarks/serving/cold_start.py measures
    it; a timed assertion on this shared machine would only measure the load)."""
    root, body = serving_root(tmp_path, trained_model), split_images(shapes_data)[0].read_bytes()
    started = time.monotonic()
    container, base = start_server(containers, cpu_image, root, SLIM_DEFAULTS)
    first = None
    while first is None:
        assert time.monotonic() - started < 300, container.logs().decode(errors="replace")
        try:
            response = post(base, body, "image/png")
            first = response if response.status_code == 200 else None
        except requests.ConnectionError:
            pass
        if first is None:
            container.reload()
            assert container.status != "exited", container.logs().decode(errors="replace")
            time.sleep(0.05)
    first_prediction_s = time.monotonic() - started
    metrics = wait_guard(base, container)
    logs = container.logs().decode(errors="replace")
    ready = logs.index("model ready")
    assert "precision fp32 (int8 once its accuracy guard passes, running in the background)" in logs[ready:].splitlines()[0], logs
    switched = re.search(r"accuracy guard: int8 kept \(.*top-1 agreement \d+/64\); switched to engine onnxruntime, precision int8", logs)
    assert switched and switched.start() > logs.index('"path": "/invocations", "status": 200') > ready, logs  # answered by fp32
    assert 'sm_vision_model_guard{model="model",precision="int8",state="passed"} 1.0' in metrics, metrics
    [labels] = ENGINE_METRIC.findall(metrics)
    assert 'engine="onnxruntime"' in labels and 'precision="int8"' in labels, labels
    print(f"start -> first prediction {first_prediction_s:.2f} s (resnet18, 64 px; a loaded shared machine)")


def _with_inference_script(model: Path) -> None:
    (model / "code").mkdir()
    (model / "code" / "inference.py").write_text("def model_fn(model_dir):\n    return None\n")


def _without_onnx_files(model: Path) -> None:
    spec = json.loads((model / "model_spec.json").read_text())
    spec.update(onnx_file="", int8_file="")
    (model / "model_spec.json").write_text(json.dumps(spec))
    (model / "model.onnx").unlink()
    (model / "model.int8.onnx").unlink()


@pytest.mark.parametrize(
    ("change", "reason"),
    [(_with_inference_script, "inference.py"), (_without_onnx_files, "has no model.onnx")],
    ids=["inference.py", "no-onnx"],
)
def test_cpu_image_fails_ping_naming_the_full_image_for_a_model_that_needs_torch(
    containers, cpu_image, trained_model, tmp_path, change, reason
):
    root = serving_root(tmp_path, trained_model)
    change(root / "model")
    container, base = start_server(containers, cpu_image, root, SLIM_DEFAULTS)
    status, body = None, {}
    for _ in range(240):
        try:
            response = requests.get(f"{base}/ping", timeout=2)
            status, body = response.status_code, response.json()
        except requests.ConnectionError:
            pass
        if status not in (None, 503):
            break
        container.reload()
        assert container.status != "exited", container.logs().decode(errors="replace")
        time.sleep(0.5)
    assert status == 500 and body["status"] == "failed", body
    assert FULL_IMAGE_HINT in body["error"] and reason in body["error"], body

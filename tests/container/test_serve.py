"""`serve` through the real image: content types, batches, top_k, errors, URL guard,
/ping states, user hooks in model.tar.gz, batch-transform parameters, SIGTERM drain,
and a model trained by `train` predicting correctly."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from container.serving import ENGINE_PRECISIONS
from tests.support.bombs import blank_png
from tests.support.containers import Containers, opt_ml, serving_engine, wait_exit, wait_ping
from tests.support.endpoint import CLASSES, IMG, assert_prediction, model_root, post, start_loopback_helper, start_server
from tests.support.payloads import jpeg_bytes, npy_bytes, png_bytes
from train import synthetic

# A seed-style inference.py (as written for AWS's PyTorch images): torchvision model,
# input_fn for image/jpeg bytes and {"url"} JSON (a str body), predict_fn taking
# context, output_fn returning (body, content_type); imports a requirements.txt wheel.
SEED_INFERENCE = r"""
import io, json, os
import requests
import torch
import torchvision
from PIL import Image
from torchvision import transforms
import smv_testdep

def model_fn(model_dir):
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Linear(512, 3)
    model.load_state_dict(torch.load(os.path.join(model_dir, "model.pt"), map_location="cpu"))
    model.eval()
    return model

def input_fn(request_body, content_type):
    if content_type == "image/jpeg":
        return Image.open(io.BytesIO(request_body))
    if content_type == "application/json":
        assert isinstance(request_body, str), type(request_body)
        url = json.loads(request_body)["url"]
        return Image.open(io.BytesIO(requests.get(url).content))
    raise Exception("Requested unsupported ContentType: " + content_type)

def predict_fn(input_object, model, context):
    tensor = transforms.Compose([transforms.Resize((64, 64)), transforms.ToTensor()])(input_object.convert("RGB"))
    with torch.no_grad():
        logits = model(tensor.unsqueeze(0))
    return logits, context.system_properties["model_dir"]

def output_fn(prediction, accept):
    logits, model_dir = prediction
    return json.dumps({"logits": logits.tolist(), "dep": smv_testdep.VALUE, "model_dir": model_dir}), accept
"""


def make_wheel(folder: Path) -> str:
    """A minimal pure-Python wheel, so requirements.txt installs without any index."""
    name = "smv_testdep-0.1-py3-none-any.whl"
    files = {
        "smv_testdep/__init__.py": "VALUE = 'installed-from-requirements'\n",
        "smv_testdep-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: smv-testdep\nVersion: 0.1\n",
        "smv_testdep-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(folder / name, "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)
        whl.writestr("smv_testdep-0.1.dist-info/RECORD", "".join(f"{p},,\n" for p in files) + "smv_testdep-0.1.dist-info/RECORD,,\n")
    return name


def write_user_script(root: Path, source: str, name: str = "inference.py") -> None:
    """A user's hook module in model/code/, where model.tar.gz would put it."""
    code = root / "model" / "code"
    code.mkdir(exist_ok=True)
    (code / name).write_text(source)


def cpu_runs_bf16() -> bool:
    """What `auto` should pick on this machine's CPU (the containers share its /proc/cpuinfo)."""
    flags = Path("/proc/cpuinfo").read_text().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def served_precision(container) -> str:
    """The precision the classifier serves in: the ready line's, or the one it switched to
    once its accuracy guard passed in the background (ONNX Runtime int8)."""
    lines = [line for line in container.logs().decode().splitlines() if "model ready in" in line or "; switched to engine" in line]
    return re.search(r"precision (\w+)", lines[-1].split("; switched to ")[-1])[1]


def expected_precision(requested: str) -> str:
    """What a model_store model is served in on this CPU, by the run's engine: ONNX
    Runtime's auto is int8 (the store's models carry a calibration sample then)."""
    if serving_engine() == "onnxruntime" and requested in ENGINE_PRECISIONS["onnxruntime"]:
        return {"auto": "int8"}.get(requested, requested)
    return {"auto": "bf16" if cpu_runs_bf16() else "fp32"}.get(requested, requested)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@pytest.fixture(scope="module", params=PRECISIONS)
def server(request, image, docker_client, model_store, tmp_path_factory):
    """One default server for the read-only tests, with a loopback helper on :9000
    (allow-listed) inside its own container; the module runs once per precision mode."""
    handle = Containers(docker_client)
    try:
        root = model_root(tmp_path_factory.mktemp("server"), model_store)
        env = {"SM_VISION_URL_ALLOW": "127.0.0.1:9000", "SM_VISION_PRECISION": request.param}
        container, base = start_server(handle, image, root, env=env)
        wait_ping(base, container)
        assert served_precision(container) == expected_precision(request.param), container.logs().decode()[-2000:]
        start_loopback_helper(container)
        yield base, container
    finally:
        handle.cleanup()


@pytest.mark.parametrize(
    "ctype, body",
    [
        ("image/png", png_bytes(IMG)),
        ("image/jpeg", jpeg_bytes(IMG)),
        ("application/x-image", jpeg_bytes(IMG)),
        ("application/octet-stream", png_bytes(IMG)),
        ("image/webp", None),  # any Pillow-readable format
        ("application/json", json.dumps({"image": base64.b64encode(png_bytes(IMG)).decode()}).encode()),
        ("application/json; charset=utf-8", json.dumps({"image": base64.b64encode(jpeg_bytes(IMG)).decode()}).encode()),
        ("application/json", json.dumps({"url": "http://127.0.0.1:9000/img.png"}).encode()),
        ("application/x-npy", npy_bytes(np.asarray(IMG))),
        ("application/x-npy", npy_bytes(np.random.rand(3, 64, 64).astype(np.float32))),
    ],
    ids=["png", "jpeg", "x-image", "octet-stream", "webp", "json-b64", "json-charset", "json-url", "npy-uint8", "npy-float"],
)
def test_single_input_types(server, ctype, body):
    base, _ = server
    if body is None:
        buffer = io.BytesIO()
        IMG.save(buffer, "WEBP")
        body = buffer.getvalue()
    response = post(base, body, ctype)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_prediction(response.json())


def test_red_image_same_answer_across_encodings(server):
    base, _ = server
    answers = {
        post(base, png_bytes(IMG), "image/png").json()["predicted_label"],
        post(base, npy_bytes(np.asarray(IMG)), "application/x-npy").json()["predicted_label"],
    }
    assert len(answers) == 1


def test_batches(server):
    base, _ = server
    b64 = base64.b64encode(png_bytes(IMG)).decode()
    instances = [{"image": b64}, b64, {"b64": base64.b64encode(jpeg_bytes(Image.new("RGB", (64, 64), (20, 200, 20)))).decode()}]
    response = post(base, json.dumps({"instances": instances}).encode(), "application/json")
    assert response.status_code == 200, response.text
    results = response.json()
    assert isinstance(results, list) and len(results) == 3
    for result in results:
        assert_prediction(result)
    assert results[0] == results[1]
    # a bare JSON list and an N x H x W x 3 array are batches too
    listed = post(base, json.dumps([b64, b64]).encode(), "application/json").json()
    assert isinstance(listed, list) and len(listed) == 2
    stacked = post(base, npy_bytes(np.stack([np.asarray(IMG)] * 4)), "application/x-npy").json()
    assert len(stacked) == 4 and stacked[0]["probabilities"] == pytest.approx(results[0]["probabilities"], abs=1e-4)
    # jsonlines (batch transform): one answer line per record
    lines = (json.dumps({"image": b64}) + "\n" + json.dumps({"image": b64}) + "\n").encode()
    response = post(base, lines, "application/jsonlines")
    assert response.status_code == 200, response.text
    assert [json.loads(line)["predicted_label"] for line in response.text.splitlines()] == [results[0]["predicted_label"]] * 2


def test_per_request_extras_answer_on_each_engine(server):
    """output=embedding (like explain and ood) needs the torch module: the served one on
    the torch engine; on ONNX Runtime the first such request loads the weights on torch
    fp32 beside it, and the log says so. Plain answers stay on the served engine."""
    base, container = server
    engine = re.search(r"engine (\w+)", next(line for line in container.logs().decode().splitlines() if "model ready in" in line))[1]
    plain = post(base, png_bytes(IMG), "image/png").json()
    response = post(base, png_bytes(IMG), "image/png", headers={"X-Amzn-SageMaker-Custom-Attributes": "output=embedding"})
    assert response.status_code == 200 and len(response.json()["embedding"]) == 512, response.text  # resnet18's features
    beside = "explain and embeddings on torch fp32 beside onnxruntime" in container.logs().decode()
    assert beside == (engine == "onnxruntime"), engine
    assert post(base, png_bytes(IMG), "image/png").json() == plain


def test_top_k(server):
    base, _ = server
    body = png_bytes(IMG)
    assert len(post(base, body, "image/png", params={"top_k": 2}).json()["top_k"]) == 2
    assert len(post(base, body, "image/png", headers={"X-Top-K": "1"}).json()["top_k"]) == 1
    assert len(post(base, body, "image/png", params={"top_k": 50}).json()["top_k"]) == 3  # capped at the class count
    bad = post(base, body, "image/png", params={"top_k": "zero"})
    assert bad.status_code == 400 and "top_k" in bad.json()["error"]


def test_accept(server):
    base, _ = server
    body = png_bytes(IMG)
    for accept in ("application/json", "*/*", "text/html, application/json;q=0.9"):
        assert post(base, body, "image/png", headers={"Accept": accept}).status_code == 200
    response = post(base, body, "image/png", headers={"Accept": "text/csv"})
    assert response.status_code == 406 and "error" in response.json()


def test_prediction_alias_and_unknown_route(server):
    base, _ = server
    assert post(base, png_bytes(IMG), "image/png", path="/predictions/model").status_code == 200
    missing = requests.get(base + "/nope", timeout=5)
    assert missing.status_code == 404 and "error" in missing.json()


def _url(url):
    return json.dumps({"url": url}).encode()


GOOD_JPEG = jpeg_bytes(IMG)
BAD_INPUTS = {
    "truncated-jpeg": ("image/jpeg", GOOD_JPEG[: len(GOOD_JPEG) // 2], 400),
    "zero-bytes": ("image/jpeg", b"", 400),
    "text-as-image": ("image/png", b"this is not an image, honest", 400),
    "bomb-10k": ("image/png", blank_png(10_000, 10_000), 413),  # tiny file, 100 megapixels
    "wrong-content-type": ("text/csv", b"1,2,3", 415),
    "no-content-type": ("", GOOD_JPEG, 415),
    "broken-json": ("application/json", b'{"image": "abc', 400),
    "broken-base64": ("application/json", b'{"image": "!!not*base64"}', 400),
    "json-no-image": ("application/json", b'{"pixels": 1}', 422),
    "empty-batch": ("application/json", b'{"instances": []}', 422),
    "npy-wrong-shape": ("application/x-npy", npy_bytes(np.zeros((5,), dtype=np.uint8)), 422),
    "npy-pickle": ("application/x-npy", npy_bytes(np.array([{"a": 1}], dtype=object), allow_pickle=True), 400),
    "over-6mb": ("image/jpeg", os.urandom(7 * 1024 * 1024), 413),
    "url-file": ("application/json", _url("file:///etc/passwd"), 400),
    "url-loopback": ("application/json", _url("http://127.0.0.1:8080/ping"), 400),
    "url-localhost-name": ("application/json", _url("http://localhost:8080/ping"), 400),
    "url-ipv6-loopback": ("application/json", _url("http://[::1]:8080/ping"), 400),
    "url-metadata": ("application/json", _url("http://169.254.169.254/latest/meta-data/"), 400),
    "url-redirect-metadata": ("application/json", _url("http://127.0.0.1:9000/redirect-metadata"), 400),
    "url-redirect-private": ("application/json", _url("http://127.0.0.1:9000/redirect-private"), 400),
    "url-redirect-loopback": ("application/json", _url("http://127.0.0.1:9000/redirect-loopback"), 400),
    "url-not-string": ("application/json", b'{"url": 5}', 400),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_corpus(server, case):
    base, container = server
    ctype, body, status = BAD_INPUTS[case]
    headers = {"Content-Type": ctype} if ctype else {}
    response = requests.post(base + "/invocations", data=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert 400 <= response.status_code < 500
    assert set(response.json()) == {"error"} and response.json()["error"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    good = post(base, png_bytes(IMG), "image/png")
    assert good.status_code == 200, good.text
    container.reload()
    assert container.status == "running"


def test_access_log_lines(server):
    base, container = server
    before = container.logs().decode().count("serve.access")
    post(base, b"junk", "image/png", path="/predictions/junk")
    deadline = time.monotonic() + 15  # the line is written just after the response is sent
    while time.monotonic() < deadline:
        lines = [line for line in container.logs().decode().splitlines() if "serve.access" in line]
        # A previous test's last line may land after `before` on a loaded machine: wait for ours.
        ours = [line for line in lines[before:] if '"/predictions/junk"' in line]
        if ours:
            break
        time.sleep(0.1)
    assert ours, lines[before:]
    record = json.loads(ours[-1].split("serve.access: ", 1)[1])
    assert record["path"] == "/predictions/junk" and record["status"] == 400 and record["latency_ms"] >= 0
    assert set(record) == {"method", "path", "status", "latency_ms"}
    assert "Traceback" not in container.logs().decode()  # bad input is not a server error


def test_batch_transform_settings(containers, image, model_store, tmp_path):
    root = model_root(tmp_path, model_store)
    env = {
        "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "4",
        "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1",
        "SAGEMAKER_BIND_TO_PORT": "9090",
    }
    container, base = start_server(containers, image, root, env=env, port="9090/tcp")
    wait_ping(base, container)
    params = requests.get(base + "/execution-parameters", timeout=5).json()
    assert params == {"MaxConcurrentTransforms": 4, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 1}
    assert post(base, os.urandom(1024 * 1024 + 10), "image/jpeg").status_code == 413
    assert post(base, png_bytes(IMG), "image/png").status_code == 200


def _ping_timed(base) -> tuple[int, float]:
    start = time.monotonic()
    status = requests.get(base + "/ping", timeout=2).status_code
    return status, time.monotonic() - start


def test_ping_loading_then_ready(containers, image, model_store, tmp_path):
    root = model_root(tmp_path, model_store)
    # model_fn takes a while (a big model, a slow disk): /ping must say 503, quickly.
    write_user_script(
        root,
        name="inference.py",
        source="import time\nfrom pathlib import Path\nfrom serve.engines import load_classifier\nimport torch\n"
        "def model_fn(model_dir):\n    time.sleep(6)\n    return load_classifier(Path(model_dir), torch.device('cpu'))\n",
    )
    container, base = start_server(containers, image, root)
    seen = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            status, elapsed = _ping_timed(base)
        except requests.ConnectionError:
            time.sleep(0.2)
            continue
        assert elapsed < 2
        seen.append(status)
        if status == 200:
            break
        time.sleep(0.3)
    assert seen and seen[-1] == 200 and 503 in seen, seen
    assert post(base, png_bytes(IMG), "image/png").status_code == 200


def test_ping_failed_model(containers, image, model_store, tmp_path):
    root = model_root(tmp_path, model_store)
    (root / "model" / "model.pt").unlink()
    # ONNX Runtime serves model.onnx without the weights (the store carries one under
    # SMV_TEST_ENGINE=onnxruntime); without it, it exports from the weights, which are gone.
    (root / "model" / "model.onnx").unlink(missing_ok=True)
    container, base = start_server(containers, image, root)
    deadline = time.monotonic() + 60
    status = None
    while time.monotonic() < deadline:
        try:
            status, elapsed = _ping_timed(base)
            assert elapsed < 2
            if status == 500:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    assert status == 500
    response = post(base, png_bytes(IMG), "image/png")
    assert response.status_code == 503 and "model.pt" in response.json()["error"]
    time.sleep(0.5)
    logs = container.logs().decode()
    assert logs.count("MODEL LOAD FAILED") == 1 and "model.pt is missing" in logs


def _tar_model(model_dir: Path, out: Path, extra: dict[str, bytes]) -> None:
    """model.tar.gz as SageMaker's SDK builds it: model files at the top, code/ beside."""
    with tarfile.open(out, "w:gz") as tar:
        for name in ("model.pt", "model_spec.json"):
            tar.add(model_dir / name, arcname=name)
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_user_inference_in_model_tar(containers, image, model_store, tmp_path):
    root = opt_ml(tmp_path)
    wheel_dir = tmp_path / "wheel"
    wheel_dir.mkdir()
    wheel = make_wheel(wheel_dir)
    _tar_model(
        model_store / "r18",
        root / "model" / "model.tar.gz",
        {
            "code/inference.py": SEED_INFERENCE.encode(),
            "code/requirements.txt": f"./{wheel}\n".encode(),
            f"code/{wheel}": (wheel_dir / wheel).read_bytes(),
        },
    )
    container, base = start_server(containers, image, root, env={"SM_VISION_URL_ALLOW": "127.0.0.1:9000"})
    wait_ping(base, container, timeout=180)
    response = post(base, jpeg_bytes(IMG), "image/jpeg")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["dep"] == "installed-from-requirements"  # requirements.txt was installed
    assert len(result["logits"][0]) == 3  # the user's output_fn, not ours
    assert result["model_dir"].endswith("model") or "/tmp/" in result["model_dir"]  # context arrived
    # the user's input_fn fetches the URL itself with requests and gets a str body
    start_loopback_helper(container)
    response = post(base, json.dumps({"url": "http://127.0.0.1:9000/img.png"}), "application/json")
    assert response.status_code == 200, response.text
    assert response.json()["logits"][0] == pytest.approx(result["logits"][0], abs=0.05)  # PNG and JPEG of a flat colour agree
    # the user's own error is a 500 with a message, no traceback, and the server stays up
    response = post(base, png_bytes(IMG), "image/png")
    assert response.status_code == 500 and "unsupported ContentType" in response.json()["error"]
    assert "Traceback" not in response.text
    assert post(base, jpeg_bytes(IMG), "image/jpeg").status_code == 200


def test_sagemaker_program_and_transform_fn(containers, image, model_store, tmp_path):
    root = model_root(tmp_path, model_store)
    write_user_script(
        root,
        name="infernce2.py",
        source="import json\n"
        "def transform_fn(model, body, content_type, accept, context):\n"
        "    probs = model.probabilities(model.preprocess(__import__('PIL.Image').Image.open(__import__('io').BytesIO(body)).convert('RGB')).unsqueeze(0))\n"
        "    return json.dumps({'n': len(body), 'ctype': content_type, 'model': context.model_name, 'classes': list(model.classes), 'p': probs[0].tolist()}), 'application/json'\n",
    )
    container, base = start_server(containers, image, root, env={"SAGEMAKER_PROGRAM": "infernce2.py"})
    wait_ping(base, container)
    body = png_bytes(IMG)
    result = post(base, body, "image/png").json()
    assert result["n"] == len(body) and result["ctype"] == "image/png" and result["classes"] == list(CLASSES)


def test_sigterm_drains_in_flight(containers, image, model_store, tmp_path):
    root = model_root(tmp_path, model_store)
    write_user_script(
        root,
        name="inference.py",
        source="import time\ndef predict_fn(data, model):\n    time.sleep(3)\n    return model.probabilities(data)\n",
    )
    container, base = start_server(containers, image, root)
    wait_ping(base, container)
    results = {}

    def slow():
        results["response"] = post(base, png_bytes(IMG), "image/png")

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(1)
    container.kill(signal="SIGTERM")
    thread.join(timeout=30)
    assert results["response"].status_code == 200, results["response"].text
    assert_prediction(results["response"].json())
    code, logs = wait_exit(container, timeout=30)
    assert code == 0, logs
    assert "Waiting for background tasks" in logs or "Shutting down" in logs


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("batching", ["on", "off"])
def test_trained_model_predicts_shapes(containers, image, trained_model, tmp_path, precision, batching):
    """The artifact `train` wrote, served unchanged, predicts unseen images correctly in
    every precision mode, micro-batched or not."""
    root = opt_ml(tmp_path)
    shutil.rmtree(root / "model")
    shutil.copytree(trained_model, root / "model")
    env = {"SM_VISION_PRECISION": precision, "SM_VISION_BATCHING": batching}
    container, base = start_server(containers, image, root, env=env)
    wait_ping(base, container)
    assert ("micro-batched" in container.logs().decode()) == (batching == "on")
    correct = 0
    names = list(synthetic.SHAPE_CLASSES)
    for seed in range(10):
        for name in names:
            result = post(base, png_bytes(synthetic.make_image(name, seed=1000 + seed)), "image/png").json()
            assert set(result["probabilities"]) == set(names)
            correct += result["predicted_label"] == name
    assert correct >= 0.8 * 10 * len(names), correct

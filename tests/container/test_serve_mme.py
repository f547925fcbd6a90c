"""Multi-model endpoint (SAGEMAKER_MULTI_MODEL=true) and the opt-in MMS backend,
through the real image."""

from __future__ import annotations

import shutil
import tarfile
import time

import requests

from tests.support.containers import mount, opt_ml, wait_exit, wait_ping
from tests.support.endpoint import CLASSES, IMG, assert_prediction, model_root, post, start_server, until_ok
from tests.support.payloads import png_bytes

# A per-model transform_fn: AWS's toolkit ignores hooks on MME; we must not.
HOOKED = (
    "import json\n"
    "def transform_fn(model, body, content_type, accept):\n"
    "    return json.dumps({'hooked': True, 'bytes': len(body)}), 'application/json'\n"
)


def mme_root(tmp_path, model_store, hooked_b=True):
    root = opt_ml(tmp_path)
    for name, source in (("a", "r18"), ("b", "r18"), ("big", "r50")):
        target = root / "models" / name / "model"
        shutil.copytree(model_store / source, target)
    if hooked_b:
        (root / "models" / "b" / "model" / "code").mkdir()
        (root / "models" / "b" / "model" / "code" / "inference.py").write_text(HOOKED)
    return root


def load(base, name, url):
    return requests.post(base + "/models", json={"model_name": name, "url": url}, timeout=120)


def test_mme_load_invoke_unload(containers, image, model_store, tmp_path):
    root = mme_root(tmp_path, model_store)
    container, base = start_server(containers, image, root, env={"SAGEMAKER_MULTI_MODEL": "true"})
    wait_ping(base, container)
    assert requests.get(base + "/models", timeout=5).json() == {"models": []}
    assert load(base, "a", "/opt/ml/models/a/model").status_code == 200
    assert load(base, "b", "/opt/ml/models/b/model").status_code == 200
    listed = requests.get(base + "/models", timeout=5).json()["models"]
    assert sorted(m["modelName"] for m in listed) == ["a", "b"]
    assert requests.get(base + "/models/a", timeout=5).json() == {"modelName": "a", "modelUrl": "/opt/ml/models/a/model"}
    assert load(base, "a", "/opt/ml/models/a/model").status_code == 409

    body = png_bytes(IMG)
    a = post(base, body, "image/png", path="/models/a/invoke")
    assert a.status_code == 200, a.text
    assert_prediction(a.json(), CLASSES)
    by_header = post(base, body, "image/png", headers={"X-Amzn-SageMaker-Target-Model": "a"})
    assert by_header.json() == a.json()
    b = post(base, body, "image/png", headers={"X-Amzn-SageMaker-Target-Model": "b"})
    assert b.json() == {"hooked": True, "bytes": len(body)}  # b's own inference.py

    unknown = post(base, body, "image/png", path="/models/nope/invoke")
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert post(base, body, "image/png").status_code == 400  # no target model named
    assert load(base, "c", "/opt/ml/models/missing").status_code == 404

    assert requests.delete(base + "/models/a", timeout=10).status_code == 200
    assert post(base, body, "image/png", path="/models/a/invoke").status_code == 404
    assert requests.delete(base + "/models/a", timeout=10).status_code == 404
    assert [m["modelName"] for m in requests.get(base + "/models", timeout=5).json()["models"]] == ["b"]
    assert post(base, body, "image/png", path="/models/b/invoke").status_code == 200


def test_mme_lru_eviction_and_507(containers, image, model_store, tmp_path):
    root = mme_root(tmp_path, model_store, hooked_b=False)
    # resnet18 is ~45 MB (~11 MB once ONNX Runtime int8 takes over), resnet50 ~95 MB: room
    # for one resnet18 at a time, never resnet50.
    env = {"SAGEMAKER_MULTI_MODEL": "true", "SM_VISION_MME_MEMORY_MB": "50"}
    container, base = start_server(containers, image, root, env=env)
    wait_ping(base, container)
    assert load(base, "a", "/opt/ml/models/a/model").status_code == 200
    assert post(base, png_bytes(IMG), "image/png", path="/models/a/invoke").status_code == 200
    assert load(base, "b", "/opt/ml/models/b/model").status_code == 200
    assert [m["modelName"] for m in requests.get(base + "/models", timeout=5).json()["models"]] == ["b"]
    big = load(base, "big", "/opt/ml/models/big/model")
    assert big.status_code == 507 and "budget" in big.json()["error"]
    assert post(base, png_bytes(IMG), "image/png", path="/models/b/invoke").status_code == 200
    assert "unloaded least recently used model a" in container.logs().decode()


def test_mms_backend_same_model_and_hooks(containers, image, model_store, tmp_path):
    """`serve --backend mms` runs our default handlers and the user's hooks in AWS's stack."""
    root = model_root(tmp_path, model_store)
    container, base = start_server(containers, image, root, command=("serve", "--backend", "mms"))
    wait_ping(base, container, timeout=180)
    body = png_bytes(IMG)
    response = until_ok(lambda: post(base, body, "image/png"))  # MMS answers /ping before its worker has loaded the model
    assert response.status_code == 200, response.text
    assert_prediction(response.json(), CLASSES)
    assert post(base, body, "text/plain").status_code == 415  # (text/csv: MMS itself fails decoding to str, a 500)
    container.kill(signal="SIGTERM")
    wait_exit(container, timeout=60)

    root2 = model_root(tmp_path / "hooked", model_store)
    (root2 / "model" / "code").mkdir()
    (root2 / "model" / "code" / "inference.py").write_text(HOOKED)
    container2, base2 = start_server(containers, image, root2, env={"SM_VISION_SERVE_BACKEND": "mms"})
    wait_ping(base2, container2, timeout=180)
    response = until_ok(lambda: post(base2, body, "image/png"))
    assert response.json() == {"hooked": True, "bytes": len(body)}


def test_mms_backend_honours_the_model_extract_cap(containers, image, model_store, tmp_path):
    """SM_VISION_MAX_MODEL_EXTRACT_MB holds under MMS as under our server: a model.tar.gz
    that expands past it is refused (the worker's load fails naming the setting) and no
    request is answered with a prediction."""
    root = opt_ml(tmp_path)
    with tarfile.open(root / "model" / "model.tar.gz", "w:gz") as tar:
        for path in (model_store / "r18").iterdir():  # ~45 MB expanded, far past 1 MiB
            tar.add(path, arcname=path.name)
    env = {"SM_VISION_SERVE_BACKEND": "mms", "SM_VISION_MAX_MODEL_EXTRACT_MB": "1", "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    container, base = start_server(containers, image, root, env=env)
    wait_ping(base, container, timeout=180)
    refusal = "expands past 1 MiB (SM_VISION_MAX_MODEL_EXTRACT_MB)"
    deadline = time.monotonic() + 180
    while refusal not in container.logs().decode(errors="replace") and time.monotonic() < deadline:
        time.sleep(2)
    logs = container.logs().decode(errors="replace")
    assert refusal in logs, logs[-3000:]
    try:
        status = post(base, png_bytes(IMG), "image/png").status_code
    except requests.Timeout:
        status = None  # MMS holds the request while it restarts the worker that failed
    assert status != 200


def scratch_bytes(container) -> int:
    """Bytes of model files extracted under the scratch dir (SM_VISION_SCRATCH_DIR)."""
    script = "import os; print(sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk('/tmp/sm-vision-models') for f in fs))"
    return int(container.exec_run(["python", "-c", script]).output.decode().strip() or 0)


def model_series(base: str) -> list[str]:
    """The /metrics lines labelled with a model name."""
    text = requests.get(base + "/metrics", timeout=10).text
    return [line for line in text.splitlines() if 'model="m' in line and not line.startswith("#")]


def test_mme_unload_and_eviction_leave_no_files_or_metric_series(containers, image, model_store, tmp_path):
    """Each model.tar.gz is extracted for its model; a model unloaded or evicted used to
    leave that copy (~45 MB here) and all its metric series behind: 20 cycles left
    855 MB and 321 series. A load refused for memory leaves no copy either."""
    root = opt_ml(tmp_path)
    for name, source in (("m", "r18"), ("big", "r50")):
        archive = root / "models" / name / "model" / "model.tar.gz"
        archive.parent.mkdir(parents=True)
        with tarfile.open(archive, "w:gz") as tar:
            for path in (model_store / source).iterdir():
                tar.add(path, arcname=path.name)
        for folder in (root / "models", archive.parent.parent, archive.parent):
            folder.chmod(0o755)
        archive.chmod(0o644)
    one_copy = sum(path.stat().st_size for path in (model_store / "r18").iterdir())
    # Room for one resnet18 (~45 MB, charged once whatever engine files it carries; once
    # ONNX Runtime int8 takes over it holds ~11 MB, still too much beside a second one at
    # fp32): each load evicts the model before it; a resnet50 (~95 MB) never fits.
    container, base = start_server(containers, image, root, env={"SAGEMAKER_MULTI_MODEL": "true", "SM_VISION_MME_MEMORY_MB": "50"})
    wait_ping(base, container)
    names = [f"m{i}" for i in range(4)]
    for name in names:
        assert load(base, name, "/opt/ml/models/m/model").status_code == 200
        assert post(base, png_bytes(IMG), "image/png", path=f"/models/{name}/invoke").status_code == 200
        assert scratch_bytes(container) == one_copy  # this model's copy only
        assert model_series(base)
    assert container.logs().decode().count("unloaded least recently used model") == len(names) - 1
    refused = load(base, "big", "/opt/ml/models/big/model")
    assert refused.status_code == 507 and "budget" in refused.json()["error"], refused.text
    assert scratch_bytes(container) == one_copy  # nothing of the refused model stays
    assert [m["modelName"] for m in requests.get(base + "/models", timeout=5).json()["models"]] == [names[-1]]
    assert requests.delete(base + f"/models/{names[-1]}", timeout=30).status_code == 200
    assert scratch_bytes(container) == 0
    assert model_series(base) == []


def in_container_get(container, url: str, method: str = "GET") -> int | str:
    """The status of a request made from inside the container (its loopback), or the error."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    print(urllib.request.urlopen(urllib.request.Request({url!r}, method={method!r}), timeout=5).status)\n"
        "except urllib.error.HTTPError as err:\n"
        "    print(err.code)\n"
        "except Exception as err:\n"
        "    print(type(err).__name__)\n"
    )
    output = container.exec_run(["python", "-c", script]).output.decode().strip()
    return int(output) if output.isdigit() else output


def test_mms_listens_where_it_is_told_and_keeps_its_management_api_local(containers, image, model_store, tmp_path):
    """MMS's management API (which loads a model from any URL, its handler then run
    in the container) used to listen on 0.0.0.0:8080, and SM_VISION_BIND_HOST was ignored."""
    root = model_root(tmp_path, model_store)
    env = {"SM_VISION_SERVE_BACKEND": "mms", "SM_VISION_BIND_HOST": "127.0.0.1", "SAGEMAKER_MODEL_SERVER_WORKERS": "1"}
    container, base = start_server(containers, image, root, env=env)
    deadline = time.monotonic() + 180
    while in_container_get(container, "http://127.0.0.1:8080/ping") != 200:
        assert time.monotonic() < deadline, container.logs().decode(errors="replace")[-3000:]
        time.sleep(2)
    try:
        reached = requests.get(base + "/ping", timeout=5).status_code
    except requests.ConnectionError:
        reached = None
    assert reached is None, "MMS answered on the container's external address"
    assert in_container_get(container, "http://127.0.0.1:8080/models") == 404  # the inference API only
    loaded = in_container_get(container, "http://127.0.0.1:8080/models?url=http://127.0.0.1:9/evil.mar", "POST")
    assert loaded in (404, 405), loaded
    properties = container.exec_run(["cat", "/tmp/sm-vision-models/mms.properties"]).output.decode()
    management = next(line.split("=", 1)[1] for line in properties.splitlines() if line.startswith("management_address="))
    assert management.startswith("http://127.0.0.1:") and not management.endswith(":8080"), properties
    assert in_container_get(container, management + "/models") == 200  # where it is, it works


def test_mms_backend_refuses_multi_model_endpoints(containers, image, tmp_path):
    root = opt_ml(tmp_path)
    (root / "models").mkdir()
    container = containers.run(image, ["serve", "--backend", "mms"], volumes=mount(root), environment={"SAGEMAKER_MULTI_MODEL": "true"})
    code, logs = wait_exit(container, timeout=120)
    assert code == 2 and "use the default backend" in logs, logs

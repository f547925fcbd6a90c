"""Unit tests for serve/: codecs, the URL guard, hooks' calling convention, the
micro-batcher, model-dir preparation and the ASGI app driven in-process."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tarfile
import time

import numpy as np
import pytest
import torch

from container import ConfigError, ServeConfig
from serve import codec, errors
from serve.archive import ExtractLimits
from serve.fetch import FetchPolicy, fetch_url
from serve.hooks import Context, call, find_script
from serve.model import prepare_model_dir
from serve.runner import BatchRunner
from tests.support.asgi import request, wait_ready, with_lifespan
from tests.support.net import Site, redirect, respond
from tests.support.payloads import npy_bytes as npy
from tests.support.payloads import png_bytes as png
from tests.support.serving import fetch_policy
from vision.presets import eval_transform

PRE = eval_transform(32, 36)
LIMITS = codec.DecodeLimits.from_config(ServeConfig(max_image_pixels=1_000_000, max_batch_items=4), draft_min_side=0)


def test_decode_image_json_npy():
    one = codec.decode(png(), "image/png", PRE, LIMITS)
    assert one.inputs.shape == (1, 3, 32, 32) and not one.batch
    b64 = base64.b64encode(png()).decode()
    batch = codec.decode(json.dumps({"instances": [b64, {"image": b64}]}).encode(), "application/json; charset=utf-8", PRE, LIMITS)
    assert batch.inputs.shape == (2, 3, 32, 32) and batch.batch
    assert torch.equal(batch.inputs[0], one.inputs[0])
    arr = codec.decode(npy(np.zeros((2, 30, 40, 3), np.uint8)), "application/x-npy", PRE, LIMITS)
    assert arr.inputs.shape == (2, 3, 32, 32) and arr.batch
    raw = codec.decode(npy(np.ones((3, 20, 20), np.float32)), "application/x-npy", PRE, LIMITS)
    assert raw.inputs.shape == (1, 3, 20, 20) and not raw.batch


@pytest.mark.parametrize(
    "body, ctype, error",
    [
        (b"", "image/jpeg", errors.BadInput),
        (b"not an image", "image/png", errors.BadInput),
        (png()[:60], "image/png", errors.BadInput),
        (png(size=(2000, 1000)), "image/png", errors.PayloadTooLarge),  # over max_pixels
        (b"{", "application/json", errors.BadInput),
        (b'{"image": "%%%"}', "application/json", errors.BadInput),
        (b'{"instances": []}', "application/json", errors.Unprocessable),
        (json.dumps({"instances": [base64.b64encode(png()).decode()] * 5}).encode(), "application/json", errors.Unprocessable),
        (b"1,2", "text/csv", errors.UnsupportedMediaType),
        (b"x", None, errors.UnsupportedMediaType),
        (npy(np.zeros(4, np.int64)), "application/x-npy", errors.Unprocessable),
        (b"\x93NUMPY garbage", "application/x-npy", errors.BadInput),
    ],
)
def test_decode_errors(body, ctype, error):
    with pytest.raises(error):
        codec.decode(body, ctype, PRE, LIMITS)


def test_accept_and_encode():
    assert codec.check_accept(None) == codec.JSON
    assert codec.check_accept("text/html, */*;q=0.1") == codec.JSON
    with pytest.raises(errors.NotAcceptable):
        codec.check_accept("text/csv")
    probs = torch.tensor([[0.1, 0.7, 0.2]])
    result = json.loads(codec.encode(probs, ("a", "b", "c"), 2, codec.Decoded(probs, batch=False)))
    assert result["predicted_label"] == "b" and [e["label"] for e in result["top_k"]] == ["b", "c"]
    assert json.loads(codec.encode(probs, ("a", "b", "c"), 1, codec.Decoded(probs, batch=True)))[0]["top_k"] == [
        {"label": "b", "probability": pytest.approx(0.7)}
    ]


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x",
        "http://127.0.0.1/",
        "http://localhost:8080/",
        "http://[::1]/",
        "http://169.254.169.254/latest/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_url_guard_refuses_before_connecting(url):
    with pytest.raises(errors.BadInput):
        fetch_url(url, fetch_policy(timeout_s=0.5))


def test_url_allow_list_and_redirect_check():
    with Site(routes={"/img": respond(png()), "/redirect": redirect("http://169.254.169.254/")}) as site:
        port = site.port
        allowed = fetch_policy(allow=FetchPolicy.parse_allow(f" 127.0.0.1:{port} "), timeout_s=2)
        assert fetch_url(f"http://127.0.0.1:{port}/img", allowed) == png()
        with pytest.raises(errors.BadInput, match="non-public"):
            fetch_url(f"http://127.0.0.1:{port}/redirect", allowed)
        with pytest.raises(errors.PayloadTooLarge):
            fetch_url(f"http://127.0.0.1:{port}/img", fetch_policy(allow=allowed.allow, max_bytes=10))
        with pytest.raises(errors.BadInput):  # another port on the same host is not allowed
            fetch_url(f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/img", allowed)
        assert fetch_url(f"http://127.0.0.1:{port}/img", fetch_policy(allow=(f"127.0.0.0/8:{port}",))) == png()


def test_call_passes_context_only_when_asked():
    ctx = Context("m", "/opt/ml/model", None, {"x-a": "1"})
    assert call(lambda body, ctype: (body, ctype), b"x", "t", context=ctx) == (b"x", "t")
    assert call(lambda body, ctype, context: context.system_properties["model_dir"], b"x", "t", context=ctx) == "/opt/ml/model"
    with pytest.raises(TypeError):
        call(lambda a: a, 1, 2, context=ctx)


def test_find_script(tmp_path):
    assert find_script(tmp_path, None) is None
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text("")
    assert find_script(tmp_path, "missing.py").name == "inference.py"  # AWS's fallback
    (tmp_path / "code" / "other.py").write_text("")
    assert find_script(tmp_path, "other").name == "other.py"


def test_batcher_merges_concurrent_requests():
    sizes = []

    def forward(batch):
        sizes.append(batch.shape[0])
        time.sleep(0.05)
        return batch * 2

    runner = BatchRunner(forward, max_batch_size=8, max_delay_ms=50)

    async def main():
        inputs = [torch.full((1, 2), float(i)) for i in range(6)] + [torch.ones(2, 2)]
        return inputs, await asyncio.gather(*(runner.run(x) for x in inputs))

    try:
        inputs, outputs = asyncio.run(main())
    finally:
        runner.close()
    for x, y in zip(inputs, outputs, strict=False):
        assert torch.equal(y, x * 2)
    assert sum(sizes) == 8 and len(sizes) < 7  # fewer forwards than requests


def test_prepare_model_dir_extracts_and_refuses_traversal(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with tarfile.open(model_dir / "model.tar.gz", "w:gz") as tar:
        data = b"{}"
        info = tarfile.TarInfo("model_spec.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    out = prepare_model_dir(model_dir, tmp_path / "scratch", ExtractLimits())
    assert (out / "model_spec.json").read_bytes() == b"{}"
    evil = tmp_path / "evil"
    evil.mkdir()
    with tarfile.open(evil / "model.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ConfigError, match="refusing"):
        prepare_model_dir(evil, tmp_path / "scratch2", ExtractLimits())
    assert not (tmp_path / "escape").exists()


# --- the app, driven in-process through ASGI -------------------------------------


def test_app_ping_invoke_errors(model_dir, serve_app):
    app = serve_app(model_dir, max_payload_mb=1, max_image_pixels=1_000_000, max_batch_items=4)

    async def body():
        assert await wait_ready(app) == 200
        status, out = await request(app, "POST", "/invocations?top_k=2", png(), [("content-type", "image/png")])
        assert status == 200 and len(json.loads(out)["top_k"]) == 2
        status, out = await request(app, "POST", "/invocations", b"x" * ((1 << 20) + 1), [("content-type", "image/png")])
        assert status == 413 and "error" in json.loads(out)
        status, out = await request(app, "POST", "/invocations", b"junk", [("content-type", "image/png")])
        assert status == 400 and set(json.loads(out)) == {"error"}
        status, out = await request(app, "POST", "/models", b"{}", [("content-type", "application/json")])
        assert status == 404  # not a multi-model endpoint

    asyncio.run(with_lifespan(app, body))


def test_app_ping_failed(tmp_path, serve_app):
    app = serve_app(tmp_path / "empty")

    async def body():
        assert await wait_ready(app) == 500
        status, out = await request(app, "POST", "/invocations", png(), [("content-type", "image/png")])
        assert status == 503 and "model_spec.json" in json.loads(out)["error"]

    asyncio.run(with_lifespan(app, body))


def test_app_batching_mode(model_dir, serve_app):
    app = serve_app(model_dir, batching="on", max_batch_size=4, max_batch_delay_ms=20)

    async def body():
        assert await wait_ready(app) == 200
        results = await asyncio.gather(*(request(app, "POST", "/invocations", png(), [("content-type", "image/png")]) for _ in range(6)))
        answers = [json.loads(out) for status, out in results if status == 200]
        assert len(answers) == 6
        assert all(a["probabilities"] == pytest.approx(answers[0]["probabilities"], abs=1e-5) for a in answers)

    asyncio.run(with_lifespan(app, body))


def test_app_timeout_and_user_hook_error(model_dir, serve_app):
    (model_dir / "code").mkdir()
    (model_dir / "code" / "inference.py").write_text(
        "import time\n"
        "def predict_fn(data, model):\n"
        "    if data.shape[0] > 1:\n        raise ValueError('only one image, please')\n"
        "    time.sleep(1.5)\n    return model.probabilities(data)\n"
    )
    app = serve_app(model_dir, timeout_s=1, workers=1)

    async def body():
        assert await wait_ready(app) == 200
        status, out = await request(app, "POST", "/invocations", png(), [("content-type", "image/png")])
        assert status == 504 and "SAGEMAKER_MODEL_SERVER_TIMEOUT" in json.loads(out)["error"]
        await asyncio.sleep(1.5)  # the timed-out forward still holds the one inference thread
        b64 = base64.b64encode(png()).decode()
        status, out = await request(app, "POST", "/invocations", json.dumps([b64, b64]).encode(), [("content-type", "application/json")])
        assert status == 500 and json.loads(out) == {"error": "internal error: ValueError: only one image, please"}

    asyncio.run(with_lifespan(app, body))


def test_answer_shapes_ours_multi_label_and_the_built_in_algorithms():
    probs = torch.tensor([[0.9, 0.2, 0.6]])
    classes, decoded = ("cat", "dog", "outdoor"), codec.Decoded(probs, batch=False)
    multi = json.loads(codec.encode(probs, classes, 2, decoded, thresholds=(0.5, 0.1, 0.7)))
    assert multi["predicted_labels"] == ["cat", "dog"]  # at or above each class's own threshold, most probable first
    assert multi["thresholds"] == {"cat": 0.5, "dog": 0.1, "outdoor": 0.7}
    assert [entry["label"] for entry in multi["top_k"]] == ["cat", "outdoor"]
    builtin = json.loads(codec.encode(probs, classes, 2, decoded, shape="prediction"))
    assert builtin == {"prediction": pytest.approx([0.9, 0.2, 0.6])}
    lines = codec.encode(torch.cat([probs, probs]), classes, 2, codec.Decoded(probs, batch=True, lines=True), shape="prediction")
    assert lines.decode().splitlines() == [json.dumps({"prediction": torch.tensor([0.9, 0.2, 0.6]).tolist()})] * 2


@pytest.mark.parametrize(
    "accept, expected",
    [
        (None, "labels"),
        ("application/json", "labels"),
        ("application/json; shape=prediction", "prediction"),
        ('application/jsonlines;shape="Prediction"', "prediction"),
        ("text/html, application/json; q=0.9; shape=labels", "labels"),
    ],
)
def test_the_answer_shape_comes_from_accept_else_the_setting(accept, expected):
    assert codec.response_shape(accept, "labels") == expected
    assert codec.response_shape("application/json", "prediction") == "prediction"


def test_an_unknown_shape_is_not_acceptable():
    with pytest.raises(errors.NotAcceptable, match="shape='scores' is not one of labels, prediction"):
        codec.response_shape("application/json; shape=scores", "labels")
    assert codec.wants_json_lines("application/jsonlines") and not codec.wants_json_lines("application/json")

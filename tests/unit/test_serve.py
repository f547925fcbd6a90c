"""Unit tests for serve/: codecs, the URL guard, hooks' calling convention, the
micro-batcher, model-dir preparation and the ASGI app driven in-process."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tarfile
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from container import ConfigError
from serve import codec, errors
from serve.app import Settings, create_app
from serve.fetch import FetchPolicy, fetch_url
from serve.hooks import Context, call, find_script
from serve.model import prepare_model_dir
from serve.runner import BatchRunner
from vision.artifact import ModelSpec
from vision.models import build_model
from vision.presets import eval_transform

PRE = eval_transform(32, 36)
LIMITS = codec.DecodeLimits(max_pixels=1_000_000, max_batch=4)


def png(size=(40, 30), colour=(10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


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
        (png((2000, 1000)), "image/png", errors.PayloadTooLarge),  # over max_pixels
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
        fetch_url(url, FetchPolicy(timeout_s=0.5))


def test_url_allow_list_and_redirect_check():
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/img":
                body = png()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/")
                self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        allowed = FetchPolicy(allow=FetchPolicy.parse_allow(f" 127.0.0.1:{port} "), timeout_s=2)
        assert fetch_url(f"http://127.0.0.1:{port}/img", allowed) == png()
        with pytest.raises(errors.BadInput, match="non-public"):
            fetch_url(f"http://127.0.0.1:{port}/redirect", allowed)
        with pytest.raises(errors.PayloadTooLarge):
            fetch_url(f"http://127.0.0.1:{port}/img", FetchPolicy(allow=allowed.allow, max_bytes=10))
        with pytest.raises(errors.BadInput):  # another port on the same host is not allowed
            fetch_url(f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}/img", allowed)
        assert fetch_url(f"http://127.0.0.1:{port}/img", FetchPolicy(allow=(f"127.0.0.0/8:{port}",))) == png()
    finally:
        server.shutdown()


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
    out = prepare_model_dir(model_dir, tmp_path / "scratch")
    assert (out / "model_spec.json").read_bytes() == b"{}"
    evil = tmp_path / "evil"
    evil.mkdir()
    with tarfile.open(evil / "model.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ConfigError, match="refusing"):
        prepare_model_dir(evil, tmp_path / "scratch2")
    assert not (tmp_path / "escape").exists()


# --- the app, driven in-process through ASGI -------------------------------------


async def asgi_call(app, method, path, body=b"", headers=()):
    """(status, response headers, body) of one request, driven in-process through ASGI."""
    sent = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # a connected client: as uvicorn, no disconnect until it leaves

    async def send(message):
        sent.append(message)

    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "scheme": "http",
        "server": ("t", 80),
        "http_version": "1.1",
    }
    await app(scope, receive, send)
    start = sent[0]
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, b"".join(m.get("body", b"") for m in sent[1:])


async def request(app, method, path, body=b"", headers=()):
    """(status, body) of one request."""
    status, _, out = await asgi_call(app, method, path, body, headers)
    return status, out


async def with_lifespan(app, body):
    queue: asyncio.Queue = asyncio.Queue()
    await queue.put({"type": "lifespan.startup"})
    replies = []

    async def receive():
        return await queue.get()

    async def send(message):
        replies.append(message)

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send))
    try:
        return await body()
    finally:
        await queue.put({"type": "lifespan.shutdown"})
        await task


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    torch.save(build_model("resnet18", 3).state_dict(), directory / "model.pt")
    ModelSpec("resnet18", ("a", "b", "c"), 32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).save(directory)
    return directory


async def wait_ready(app):
    for _ in range(300):
        status, _ = await request(app, "GET", "/ping")
        if status != 503:
            return status
        await asyncio.sleep(0.05)
    return status


def test_app_ping_invoke_errors(model_dir, tmp_path):
    app = create_app(Settings(model_dir=model_dir, scratch=tmp_path / "s", max_payload_bytes=100_000, limits=LIMITS))

    async def body():
        assert await wait_ready(app) == 200
        status, out = await request(app, "POST", "/invocations?top_k=2", png(), [("content-type", "image/png")])
        assert status == 200 and len(json.loads(out)["top_k"]) == 2
        status, out = await request(app, "POST", "/invocations", b"x" * 100_001, [("content-type", "image/png")])
        assert status == 413 and "error" in json.loads(out)
        status, out = await request(app, "POST", "/invocations", b"junk", [("content-type", "image/png")])
        assert status == 400 and set(json.loads(out)) == {"error"}
        status, out = await request(app, "POST", "/models", b"{}", [("content-type", "application/json")])
        assert status == 404  # not a multi-model endpoint

    asyncio.run(with_lifespan(app, body))


def test_app_ping_failed(tmp_path):
    app = create_app(Settings(model_dir=tmp_path / "empty", scratch=tmp_path / "s"))

    async def body():
        assert await wait_ready(app) == 500
        status, out = await request(app, "POST", "/invocations", png(), [("content-type", "image/png")])
        assert status == 503 and "model_spec.json" in json.loads(out)["error"]

    asyncio.run(with_lifespan(app, body))


def test_app_batching_mode(model_dir, tmp_path):
    app = create_app(Settings(model_dir=model_dir, scratch=tmp_path / "s", batching=True, max_batch_size=4, max_delay_ms=20, limits=LIMITS))

    async def body():
        assert await wait_ready(app) == 200
        results = await asyncio.gather(*(request(app, "POST", "/invocations", png(), [("content-type", "image/png")]) for _ in range(6)))
        answers = [json.loads(out) for status, out in results if status == 200]
        assert len(answers) == 6
        assert all(a["probabilities"] == pytest.approx(answers[0]["probabilities"], abs=1e-5) for a in answers)

    asyncio.run(with_lifespan(app, body))


def test_app_timeout_and_user_hook_error(model_dir, tmp_path):
    (model_dir / "code").mkdir()
    (model_dir / "code" / "inference.py").write_text(
        "import time\n"
        "def predict_fn(data, model):\n"
        "    if data.shape[0] > 1:\n        raise ValueError('only one image, please')\n"
        "    time.sleep(1.5)\n    return model.probabilities(data)\n"
    )
    app = create_app(Settings(model_dir=model_dir, scratch=tmp_path / "s", timeout_s=0.5, limits=LIMITS))

    async def body():
        assert await wait_ready(app) == 200
        status, out = await request(app, "POST", "/invocations", png(), [("content-type", "image/png")])
        assert status == 504 and "SAGEMAKER_MODEL_SERVER_TIMEOUT" in json.loads(out)["error"]
        await asyncio.sleep(1.5)  # the timed-out forward still holds the one inference thread
        b64 = base64.b64encode(png()).decode()
        status, out = await request(app, "POST", "/invocations", json.dumps([b64, b64]).encode(), [("content-type", "application/json")])
        assert status == 500 and json.loads(out) == {"error": "internal error: ValueError: only one image, please"}

    asyncio.run(with_lifespan(app, body))

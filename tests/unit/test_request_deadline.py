"""Issue 22 in-process: a request's work honours its one deadline (checked between
items, the decode pool for the decodes a thread cannot bound), a JSON body is parsed
once, ambiguous framing is refused by the protocol, and a multi-model endpoint's
unloaded models leave nothing behind."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import tarfile
import time
from unittest import mock

import h11
import numpy as np
import pytest
import torch
import uvicorn
from uvicorn.server import ServerState

from container import ServeConfig
from serve import arrays, codec, decode_pool, errors
from serve.connections import HeaderTimeoutProtocol, _UnambiguousConnection, with_header_timeout
from serve.deadline import Deadline
from serve.decode_pool import DecodePool
from serve.handler import Call, requested_top_k
from tests.support import bombs
from tests.support.asgi import request, wait_ready, with_lifespan
from tests.support.payloads import png_bytes as png
from vision import images
from vision.presets import eval_transform

PRE = eval_transform(32, 36)
LIMITS = codec.DecodeLimits.from_config(ServeConfig(), draft_min_side=0)


def batch(count: int) -> codec.Parsed:
    return codec.parse(json.dumps([base64.b64encode(png()).decode()] * count).encode(), "application/json", LIMITS)


def test_items_stop_once_the_deadline_has_passed_or_the_answer_has_gone():
    assert codec.to_inputs(batch(3), PRE, LIMITS, deadline=Deadline(30)).shape == (3, 3, 32, 32)
    with pytest.raises(errors.Timeout, match="deadline passed"):
        codec.to_inputs(batch(3), PRE, LIMITS, deadline=Deadline(0))
    gone = Deadline(30)
    gone.abandon()  # the client left: nothing more is decoded for it
    with pytest.raises(errors.Timeout):
        codec.to_inputs(batch(3), PRE, LIMITS, deadline=gone)


def test_what_a_thread_cannot_bound_is_decoded_in_the_pool():
    """A progressive JPEG goes to the pool and comes back as the same input; a scan
    bomb in the pool is killed at the deadline (and when the answer goes)."""
    pool = DecodePool(1).start()
    try:
        progressive = bombs.progressive_jpeg((48, 40))
        parsed = codec.parse(progressive, "image/jpeg", LIMITS)
        in_thread = codec.to_inputs(parsed, PRE, LIMITS)
        assert torch.equal(codec.to_inputs(parsed, PRE, LIMITS, deadline=Deadline(30), pool=pool), in_thread)
        assert pool.status().busy == 0
        lifted = codec.DecodeLimits.from_config(ServeConfig(max_jpeg_scans=1_000_000), draft_min_side=0)
        bomb = codec.parse(bombs.scan_bomb(4_000, (1024, 1024)), "image/jpeg", lifted)
        started = time.monotonic()
        with pytest.raises(errors.Timeout):
            codec.to_inputs(bomb, PRE, lifted, deadline=Deadline(0.5), pool=pool)
        assert time.monotonic() - started < 2
        assert pool.status().replaced == 1
    finally:
        pool.close()


def test_decode_limits_carry_the_settings():
    limits = codec.DecodeLimits.from_config(
        ServeConfig(max_image_pixels=1000, max_jpeg_scans=7, max_payload_mb=100, max_array_mb=8), draft_min_side=0
    )
    assert (limits.image.max_jpeg_scans, limits.image.max_decode_bytes) == (7, 4000)  # default: what an RGB frame takes
    assert limits.arrays.max_bytes == 100 << 20  # never below the payload cap
    assert codec.DecodeLimits.from_config(ServeConfig(max_decode_bytes=123), 0).image.max_decode_bytes == 123
    assert images.ImageLimits().max_decode_bytes == ServeConfig.max_image_pixels * 4


@pytest.mark.parametrize("raw", ["\u00b2", "9" * 5000, "\u0663", "1_0", "0", "-1", " "])
def test_top_k_is_parsed_strictly(raw):
    with pytest.raises(errors.BadInput, match="top_k") as refused:
        requested_top_k(raw)
    assert len(str(refused.value)) < 200
    assert requested_top_k(" 3 ") == 3 and requested_top_k(None) is None


def test_a_json_body_is_parsed_once(model_dir, monkeypatch):
    """Telling an image request from numbers used to parse the body, then the decoder
    parsed it again."""
    from serve.handler import Handler
    from serve.hooks import Context

    parses = []
    real = arrays.load_json
    monkeypatch.setattr(arrays, "load_json", lambda body, limits: (parses.append(len(body)), real(body, limits))[1])
    identity = model_dir / "identity"
    identity.mkdir()
    (identity / "code").mkdir()
    (identity / "code" / "inference.py").write_text("import torch\ndef model_fn(model_dir):\n    return torch.nn.Identity()\n")
    from serve.hooks import UserHooks

    handler = Handler.load(
        identity,
        UserHooks.load(identity / "code" / "inference.py", "smv_once"),
        Context("m", str(identity), None),
        ServeConfig(device="cpu"),
    )
    assert handler.decode(b"[[1, 2], [3, 4]]", Call("application/json", None, Context("m", "", None))).tolist() == [[1, 2], [3, 4]]
    image = json.dumps({"image": base64.b64encode(png()).decode()}).encode()
    assert handler.decode(image, Call("application/json", None, Context("m", "", None))).shape == (1, 3, 224, 224)
    assert parses == [16, len(image)]


def test_a_request_framed_by_both_length_headers_is_refused():
    connection = _UnambiguousConnection(h11.SERVER)
    connection.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    with pytest.raises(h11.RemoteProtocolError, match="both Content-Length and Transfer-Encoding") as refused:
        connection.next_event()
    assert refused.value.error_status_hint == 400
    plain = _UnambiguousConnection(h11.SERVER)
    plain.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert isinstance(plain.next_event(), h11.Request)


def test_a_connection_made_after_the_drain_began_is_closed_too():
    """uvicorn asks the connections it knows to close when SIGTERM comes; one accepted just
    before the listener closed is made after that round and must not hold the drain."""

    async def made_one_each():
        async def app(scope, receive, send):  # never called: no request is sent
            raise AssertionError(scope)

        config = uvicorn.Config(app=app, http=with_header_timeout(5.0), lifespan="off")
        config.load()
        state = ServerState()

        def connection() -> tuple[HeaderTimeoutProtocol, mock.Mock]:
            protocol = config.http_protocol_class(config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop())
            transport = mock.Mock(spec=asyncio.Transport, **{"get_extra_info.return_value": None, "is_closing.return_value": False})
            protocol.connection_made(transport)
            return protocol, transport

        known, known_transport = connection()
        known.shutdown()  # uvicorn's round
        late, late_transport = connection()
        closed = known_transport.close.called, late_transport.close.called
        for protocol in (known, late):
            protocol.connection_lost(None)
        return closed

    assert asyncio.run(made_one_each()) == (True, True)
    with_header_timeout(5.0)  # the next server in this process starts undrained
    assert not HeaderTimeoutProtocol.draining


def test_unloaded_and_evicted_models_leave_no_files_modules_or_series(model_dir, tmp_path, serve_app):
    archive = tmp_path / "opt_ml" / "models" / "packed" / "model.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        for path in model_dir.iterdir():
            tar.add(path, arcname=path.name)
    shutil.copytree(model_dir, tmp_path / "opt_ml" / "models" / "plain")
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    app = serve_app(multi_model=True, mme_memory_mb=int(size * 1.5) >> 20)  # room for one: each load evicts the last
    scratch = tmp_path / "scratch"

    async def load(name, folder):
        body = json.dumps({"model_name": name, "url": str(tmp_path / "opt_ml" / "models" / folder)}).encode()
        return (await request(app, "POST", "/models", body, [("content-type", "application/json")]))[0]

    async def series(name) -> list[str]:
        _, text = await request(app, "GET", "/metrics")
        return [line for line in text.decode().splitlines() if f'model="{name}"' in line and not line.startswith("#")]

    async def body():
        assert await wait_ready(app) == 200
        for name in ("m1", "m2"):
            assert await load(name, "packed") == 200
            assert (await request(app, "POST", f"/models/{name}/invoke", png(), [("content-type", "image/png")]))[0] == 200
            assert [p.name for p in scratch.iterdir()] == [name]  # its own copy, the evicted one's removed
            assert await series(name)
        assert await series("m1") == []  # evicted
        assert await load("m3", "plain") == 200  # not extracted: its directory is the models folder's, kept
        assert list(scratch.iterdir()) == [] and (tmp_path / "opt_ml" / "models" / "plain").is_dir()
        assert (await request(app, "DELETE", "/models/m3"))[0] == 200
        assert await series("m2") == [] and await series("m3") == []

    asyncio.run(with_lifespan(app, body))


def test_a_pool_that_cannot_start_workers_makes_ping_say_so(model_dir, serve_app, monkeypatch):
    """Workers lost (the OOM killer) are replaced on the next decode; when that fails
    (no memory, no processes left) /ping answers 500 until one starts again."""
    app = serve_app(model_dir)

    async def body():
        assert await wait_ready(app) == 200
        pool = app.state.models.pools.images
        pool.start()
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
        # the forkserver reports a death a moment later; a request sent before that finds
        # its worker gone mid-exchange (a 507, the path of a death during a decode)
        gone_by = time.monotonic() + 10
        while pool.pids() and time.monotonic() < gone_by:
            await asyncio.sleep(0.01)
        assert not pool.pids()

        def no_process(context):
            raise OSError(11, "Resource temporarily unavailable")

        monkeypatch.setattr(decode_pool, "_Worker", no_process)
        assert (await request(app, "GET", "/ping"))[0] == 200  # nothing has needed a new worker yet
        status, _ = await request(app, "POST", "/invocations", bombs.progressive_jpeg(), [("content-type", "image/jpeg")])
        assert status == 500
        status, out = await request(app, "GET", "/ping")
        assert status == 500 and "decode workers cannot start" in json.loads(out)["error"]
        monkeypatch.undo()
        status, _ = await request(app, "POST", "/invocations", bombs.progressive_jpeg(), [("content-type", "image/jpeg")])
        assert status == 200 and (await request(app, "GET", "/ping"))[0] == 200

    asyncio.run(with_lifespan(app, body))


def test_the_array_limit_follows_the_setting():
    small = arrays.ArrayLimits(max_bytes=1 << 10)
    with pytest.raises(errors.PayloadTooLarge):
        arrays.load_npy(bombs.npy_header((512,)) + bytes(2048), small)
    assert arrays.load_npy(bombs.npy_header((4,)) + bytes(16), small).tolist() == [0, 0, 0, 0]
    assert arrays.ArrayLimits().max_bytes == ServeConfig.max_array_mb << 20
    assert np.array_equal(arrays.load_csv(b"1,2\n", small), [[1, 2]])

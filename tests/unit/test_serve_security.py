"""The serving stack under load and abuse, in-process: the micro-batcher survives
cancelled work and errors, back-pressure (503 + Retry-After), abandoned requests are
skipped, batch transform accepts what it advertises, model archives and names are
checked, settings are parsed strictly."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import io
import json
import os
import shutil
import stat
import tarfile
import threading
import time

import pytest
import torch

from container import ConfigError, ServeConfig
from serve import archive, codec, errors
from serve.deadline import Deadline
from serve.model import Classifier, prepare_model_dir
from serve.runner import Admission, BatchRunner, ClientGone, until_done_or_gone
from tests.support.asgi import asgi_call, http_scope, request, wait_ready, with_lifespan
from tests.support.payloads import png_bytes as png

# --- the micro-batcher ------------------------------------------------------------------


def _submit(runner: BatchRunner, rows: int = 1) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    runner.queue.put((torch.ones(rows, 2), future))
    return future


def test_batcher_collects_what_queues_while_every_forward_is_busy():
    started, release = threading.Semaphore(0), threading.Event()
    sizes = []

    def forward(batch):
        sizes.append(batch.shape[0])
        started.release()
        release.wait(5)
        return batch

    runner = BatchRunner(forward, max_batch_size=4, max_delay_ms=0, concurrency=2)
    try:
        first = []
        for _ in range(2):  # no delay and a free slot: each runs alone at once
            first.append(_submit(runner))
            assert started.acquire(timeout=5)
        queued = [_submit(runner) for _ in range(5)]  # both forwards busy: these wait together
        release.set()
        for future in first + queued:
            assert future.result(timeout=5).shape == (1, 2)
    finally:
        release.set()
        runner.close()
    assert sizes[:2] == [1, 1] and sorted(sizes[2:]) == [1, 4]


def test_batcher_skips_cancelled_work_and_keeps_running():
    calls = []

    def forward(batch):
        calls.append(batch.shape[0])
        return batch * 2

    runner = BatchRunner(forward, max_batch_size=8, max_delay_ms=50)
    try:
        cancelled = _submit(runner, 3)
        cancelled.cancel()  # a request that timed out before its batch ran
        kept = _submit(runner, 1)
        assert kept.result(timeout=5).shape == (1, 2)
        assert calls == [1] and runner.alive
        assert _submit(runner).result(timeout=5).shape == (1, 2)
    finally:
        runner.close()
    assert not runner.alive


def test_batcher_cancelled_while_running_does_not_kill_the_thread():
    started, release = threading.Event(), threading.Event()

    def forward(batch):
        started.set()
        release.wait(5)
        return batch

    runner = BatchRunner(forward, max_batch_size=1, max_delay_ms=1)
    try:
        first = _submit(runner)
        started.wait(5)
        first.cancel()  # too late to skip: the result is simply dropped
        release.set()
        assert _submit(runner).result(timeout=5).shape == (1, 2) and runner.alive
    finally:
        runner.close()


def test_batcher_survives_any_exception():
    outputs = iter([ValueError("boom"), 42, None])

    def forward(batch):
        result = next(outputs)
        if isinstance(result, Exception):
            raise result
        return batch if result is None else result

    runner = BatchRunner(forward, max_batch_size=1, max_delay_ms=1)
    try:
        with pytest.raises(ValueError, match="boom"):
            _submit(runner).result(timeout=5)
        with pytest.raises(Exception):  # noqa: B017 - slicing an int fails inside the batcher
            _submit(runner).result(timeout=5)
        assert _submit(runner).result(timeout=5).shape == (1, 2) and runner.alive
    finally:
        runner.close()


def test_batcher_queue_is_bounded():
    release = threading.Event()
    runner = BatchRunner(lambda b: (release.wait(5), b)[1], max_batch_size=1, max_delay_ms=1, max_queued=2)

    async def submit():
        return await runner.run(torch.ones(1, 2))

    async def body():
        tasks = [asyncio.ensure_future(submit()) for _ in range(4)]
        await asyncio.sleep(0.2)
        failed = [t for t in tasks if t.done() and isinstance(t.exception(), errors.Overloaded)]
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return failed

    try:
        assert len(asyncio.run(body())) >= 1
    finally:
        release.set()
        runner.close()


def test_ping_is_unhealthy_when_the_batcher_is_gone(model_dir, serve_app):
    app = serve_app(model_dir, batching="on")

    async def body():
        assert await wait_ready(app) == 200
        app.state.models.model.batcher.close()  # however it stopped
        status, out = await request(app, "GET", "/ping")
        assert status == 500 and json.loads(out)["status"] == "unhealthy"

    asyncio.run(with_lifespan(app, body))


def test_batching_endpoint_recovers_after_a_timeout(model_dir, serve_app, monkeypatch):
    real = Classifier.probabilities
    slow = {"on": True}

    def probabilities(self, batch):
        if slow["on"]:
            time.sleep(2.5)
        return real(self, batch)

    monkeypatch.setattr(Classifier, "probabilities", probabilities)
    app = serve_app(model_dir, batching="on", timeout_s=1)

    async def body():
        slow["on"] = False
        assert await wait_ready(app) == 200
        slow["on"] = True
        status, _ = await request(app, "POST", "/invocations", png(), [("content-type", "image/png")])
        assert status == 504
        await asyncio.sleep(2.7)  # the timed-out batch finishes
        slow["on"] = False
        status, out = await request(app, "POST", "/invocations", png(), [("content-type", "image/png")])
        assert status == 200, out
        assert (await request(app, "GET", "/ping"))[0] == 200

    asyncio.run(with_lifespan(app, body))


# --- admission and abandoned work -------------------------------------------------------


def test_admission_bounds_requests_in_progress():
    admission = Admission(2)
    with admission.slot(), admission.slot(), pytest.raises(errors.Overloaded, match="SM_VISION_MAX_PENDING"), admission.slot():
        pass
    with admission.slot():
        assert admission.active == 1


def test_overload_is_503_with_retry_after(model_dir, serve_app, monkeypatch):
    real = Classifier.probabilities
    monkeypatch.setattr(Classifier, "probabilities", lambda self, batch: (time.sleep(0.3), real(self, batch))[1])
    app = serve_app(model_dir, max_pending=2, batching="off")

    async def body():
        assert await wait_ready(app) == 200
        results = await asyncio.gather(*(request(app, "POST", "/invocations", png(), [("content-type", "image/png")]) for _ in range(6)))
        return [status for status, _ in results]

    statuses = asyncio.run(with_lifespan(app, body))
    assert statuses.count(200) >= 2 and statuses.count(503) >= 1 and set(statuses) <= {200, 503}


def test_retry_after_header_is_sent(model_dir, serve_app, monkeypatch):
    app = serve_app(model_dir, max_pending=1, batching="off")
    release = threading.Event()

    async def body():
        assert await wait_ready(app) == 200
        real = Classifier.probabilities
        monkeypatch.setattr(Classifier, "probabilities", lambda self, batch: (release.wait(30), real(self, batch))[1])
        held = asyncio.ensure_future(request(app, "POST", "/invocations", png(), [("content-type", "image/png")]))
        await asyncio.sleep(0.3)  # admitted, its forward waiting for `release`
        refused = await asgi_call(app, "POST", "/invocations", png(), [("content-type", "image/png")])
        release.set()
        return refused, await held

    (status, headers, _), (held_status, _) = asyncio.run(with_lifespan(app, body))
    assert status == 503 and headers.get("retry-after") == "1"
    assert held_status == 200


def trickling(body: bytes, pause_s: float):
    """An ASGI receive sending `body` a byte at a time, `pause_s` apart."""
    chunks = [body[i : i + 1] for i in range(len(body))]

    async def receive():
        if chunks:
            await asyncio.sleep(pause_s)
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await asyncio.Event().wait()

    return receive


def test_a_body_still_arriving_holds_no_admission_slot(model_dir, serve_app):
    app = serve_app(model_dir, max_pending=1)

    async def body():
        assert await wait_ready(app) == 200
        scope = http_scope("POST", "/invocations", [("content-type", "image/png")])
        sent = []

        async def keep(message):
            sent.append(message)

        slow = asyncio.ensure_future(app(scope, trickling(png(), 0.05), keep))
        await asyncio.sleep(0.2)  # still sending
        status, _ = await request(app, "POST", "/invocations", png(), [("content-type", "image/png")])
        await slow
        return status, sent[0]["status"]

    assert asyncio.run(with_lifespan(app, body)) == (200, 200)


def test_a_body_slower_than_the_minimum_rate_is_408_and_closes(model_dir, serve_app):
    app = serve_app(model_dir, body_timeout_s=0.3, body_min_rate_kib_s=1)

    async def body():
        assert await wait_ready(app) == 200
        scope = http_scope("POST", "/invocations", [("content-type", "image/png")])
        sent = []

        async def keep(message):
            sent.append(message)

        started = time.monotonic()
        await app(scope, trickling(png(), 0.5), keep)  # 2 bytes a second: under 1 KiB/s, past the 0.3 s grace
        return sent, time.monotonic() - started

    sent, took = asyncio.run(with_lifespan(app, body))
    assert sent[0]["status"] == 408 and (b"connection", b"close") in sent[0]["headers"]
    assert "SM_VISION_BODY_TIMEOUT_S" in json.loads(sent[1]["body"])["error"]
    assert took < 2


def test_until_done_or_gone_cancels_work_when_the_client_leaves():
    cancelled = []

    async def work():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    deadline = Deadline(5)

    async def body():
        async def receive():
            await asyncio.sleep(0.1)
            return {"type": "http.disconnect"}

        with pytest.raises(ClientGone):
            await until_done_or_gone(work(), receive, deadline)
        await asyncio.sleep(0)

    asyncio.run(body())
    assert cancelled == [True]
    assert deadline.passed  # the answer has gone: work still running stops at its next item
    with pytest.raises(errors.Timeout):
        deadline.check()


def test_work_queued_for_a_departed_client_is_skipped(model_dir, serve_app, monkeypatch):
    real = Classifier.probabilities
    forwards = []

    def probabilities(self, batch):
        forwards.append(batch.shape[0])
        time.sleep(1.0)
        return real(self, batch)

    app = serve_app(model_dir, workers=1, batching="off")  # the inference pool's queue (the batcher's: above)
    scope = http_scope("POST", "/invocations", [("content-type", "image/png")])

    def client(leave_after: float | None):
        messages = [{"type": "http.request", "body": png(), "more_body": False}]
        sent = []

        async def receive():
            if messages:
                return messages.pop(0)
            if leave_after is None:
                await asyncio.Event().wait()
            await asyncio.sleep(leave_after)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        return app(dict(scope), receive, send), sent

    async def body():
        assert await wait_ready(app) == 200
        monkeypatch.setattr(Classifier, "probabilities", probabilities)
        stay, stay_sent = client(None)
        stay = asyncio.ensure_future(stay)
        while not forwards:  # `stay` holds the only inference worker
            await asyncio.sleep(0.01)
        leave, leave_sent = client(0.1)  # queued behind `stay`, gone before its turn
        await asyncio.gather(stay, leave)
        return stay_sent[0]["status"], leave_sent[0]["status"]

    assert asyncio.run(with_lifespan(app, body)) == (200, 499)
    assert forwards == [1]  # the departed client's forward never ran


# --- batch transform: what /execution-parameters advertises is accepted -----------------


@pytest.mark.parametrize("batching", ["on", "off"])
def test_batch_transform_accepts_many_small_records(model_dir, serve_app, batching):
    import base64

    app = serve_app(model_dir, batch=True, max_batch_items=4, batching=batching)
    record = json.dumps({"image": base64.b64encode(png(size=(8, 8))).decode()})
    lines = ("\n".join([record] * 65) + "\n").encode()

    async def body():
        assert await wait_ready(app) == 200
        status, out = await request(app, "GET", "/execution-parameters")
        params = json.loads(out)
        assert params["BatchStrategy"] == "MULTI_RECORD" and len(lines) < params["MaxPayloadInMB"] * 1024 * 1024
        status, out = await request(app, "POST", "/invocations", lines, [("content-type", "application/jsonlines")])
        assert status == 200, out
        answers = [json.loads(line) for line in out.decode().splitlines()]
        assert len(answers) == 65 and all(a["predicted_label"] == answers[0]["predicted_label"] for a in answers)

    asyncio.run(with_lifespan(app, body))


def test_real_time_endpoint_keeps_its_item_cap(model_dir, serve_app):
    app = serve_app(model_dir, max_batch_items=4)

    async def body():
        assert await wait_ready(app) == 200
        import base64

        items = json.dumps([base64.b64encode(png(size=(8, 8))).decode()] * 5).encode()
        status, _ = await request(app, "POST", "/invocations", items, [("content-type", "application/json")])
        assert status == 422

    asyncio.run(with_lifespan(app, body))


# --- model archives and names -----------------------------------------------------------


def make_tar(path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_info(name: str, data: bytes, mode: int = 0o644, uid: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), mode, uid, uid, "someone", "someone"
    return info, data


def test_extraction_drops_special_bits_and_owners(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    archive_path = make_tar(
        src / "model.tar.gz",
        [
            file_info("model.pt", b"w", 0o6755, uid=4242),
            file_info("code/run.sh", b"#!/bin/sh\n", 0o4777, uid=4242),
            file_info("notes.txt", b"n", 0o666),
        ],
    )
    out = archive.extract_model_archive(archive_path, tmp_path / "out")
    for name, expected in (("model.pt", 0o755), ("code/run.sh", 0o755), ("notes.txt", 0o644)):
        info = os.stat(out / name)
        assert stat.S_IMODE(info.st_mode) == expected, name
        assert info.st_uid == os.getuid(), name


@pytest.mark.parametrize(
    "member",
    [
        lambda: file_info("../escape.txt", b"x"),
        lambda: file_info("/abs.txt", b"x"),
        lambda: file_info("a/../../escape.txt", b"x"),
        lambda: (lambda i: (setattr(i, "type", tarfile.SYMTYPE), setattr(i, "linkname", "/etc/passwd"), (i, None))[-1])(
            tarfile.TarInfo("link")
        ),
        lambda: (lambda i: (setattr(i, "type", tarfile.LNKTYPE), setattr(i, "linkname", "model.pt"), (i, None))[-1])(
            tarfile.TarInfo("hard")
        ),
        lambda: (lambda i: (setattr(i, "type", tarfile.FIFOTYPE), (i, None))[-1])(tarfile.TarInfo("fifo")),
        lambda: (lambda i: (setattr(i, "type", tarfile.CHRTYPE), (i, None))[-1])(tarfile.TarInfo("dev")),
    ],
    ids=["dotdot", "absolute", "inner-dotdot", "symlink", "hardlink", "fifo", "device"],
)
def test_unsafe_members_are_refused_and_nothing_is_left(tmp_path, member):
    archive_path = make_tar(tmp_path / "model.tar.gz", [file_info("model.pt", b"w"), member()])
    with pytest.raises(ConfigError, match="refusing member"):
        archive.extract_model_archive(archive_path, tmp_path / "scratch" / "m")
    assert list((tmp_path / "scratch").iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_expanded_size_is_capped(tmp_path):
    archive_path = make_tar(tmp_path / "model.tar.gz", [file_info("big.bin", b"\0" * (3 << 20))])
    with pytest.raises(ConfigError, match="SM_VISION_MAX_MODEL_EXTRACT_MB"):
        archive.extract_model_archive(archive_path, tmp_path / "out", archive.ExtractLimits(max_bytes=2 << 20))
    assert not (tmp_path / "out").exists()


def test_gzip_bomb_is_refused_while_reading(tmp_path):
    """~70 KB of gzip that expands to 80 MiB: refused by the expansion ratio, even
    though the total cap (default 20 GiB) is far away; the header lies about its size."""
    info = tarfile.TarInfo("weights.bin")
    info.size = 80 << 20
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    path = tmp_path / "model.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=9))
    assert path.stat().st_size < 200_000
    with pytest.raises(ConfigError, match="decompression bomb"):
        archive.extract_model_archive(path, tmp_path / "out")


def test_prepare_model_dir_uses_the_checked_extraction(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    make_tar(model_dir / "model.tar.gz", [file_info("x/../../../escape.txt", b"x")])
    with pytest.raises(ConfigError):
        prepare_model_dir(model_dir, tmp_path / "scratch" / "model", archive.ExtractLimits())
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize(
    "name",
    ["a", "model-1", "Model--2", "8f14e45fceea167a5a36dedd4bea2543", "a" * 255, "traced_resnet18", "a.b", "m-1.tar.gz", "-a", "a-", "_"],
)
def test_valid_model_names(name):
    assert archive.check_model_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "../x", "/abs", "a/b", "a\\b", ".", "..", ".a", "a.", "a..b", "a b", "a\x00b", "é", "a\u2024b", "a" * 256, 5, None]
)
def test_invalid_model_names(name):
    with pytest.raises(ValueError, match="not valid"):
        archive.check_model_name(name)


def test_mme_refuses_a_path_as_model_name(model_dir, tmp_path, serve_app):
    store = tmp_path / "opt_ml" / "models" / "m"
    store.mkdir(parents=True)
    with tarfile.open(store / "model.tar.gz", "w:gz") as tar:
        for path in model_dir.iterdir():
            tar.add(path, arcname=path.name)
    scratch = tmp_path / "deep" / "scratch"
    app = serve_app(multi_model=True, scratch_dir=str(scratch))

    async def body():
        for name in ("../../escaped", "/tmp/abs", "a/b"):
            payload = json.dumps({"model_name": name, "url": str(store)}).encode()
            status, out = await request(app, "POST", "/models", payload, [("content-type", "application/json")])
            assert status == 400 and "not valid" in json.loads(out)["error"], (name, out)
        payload = json.dumps({"model_name": "good-1", "url": str(store)}).encode()
        status, out = await request(app, "POST", "/models", payload, [("content-type", "application/json")])
        assert status == 200, out

    asyncio.run(with_lifespan(app, body))
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    assert sorted(p.name for p in scratch.iterdir() if not p.name.startswith(".")) == ["good-1"]


# --- strict settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "variable, value",
    [
        ("SM_VISION_URL_FETCH", "flase"),
        ("SM_VISION_URL_FETCH", "disabled"),
        ("SM_VISION_URL_TIMEOUT_S", "5s"),
        ("SM_VISION_URL_TIMEOUT_S", "nan"),
        ("SM_VISION_MAX_IMAGE_PIXELS", "40M"),
        ("SM_VISION_MAX_BATCH_ITEMS", "0"),
        ("SM_VISION_MAX_ASPECT_RATIO", "0.5"),
    ],
)
def test_security_settings_are_parsed_strictly(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        ServeConfig.from_env()


@pytest.mark.parametrize("value, enabled", [("false", False), ("0", False), ("off", False), ("True", True), ("", True)])
def test_url_fetch_switch(monkeypatch, value, enabled):
    monkeypatch.setenv("SM_VISION_URL_FETCH", value)
    assert codec.DecodeLimits.from_config(ServeConfig.from_env(), draft_min_side=0).fetch.enabled is enabled


# --- multi-model loading: urls, failed loads, each model's own helpers --------------------


def mme_app(serve_app, tmp_path, model_dir, budget_mb):
    store = tmp_path / "opt_ml" / "models"  # serve_app's /opt/ml
    for name in ("a", "b"):
        shutil.copytree(model_dir, store / name)
    (store / "broken").mkdir(parents=True)
    (store / "broken" / "model_spec.json").write_text("{not json")
    return serve_app(multi_model=True, mme_memory_mb=budget_mb), store


async def load(app, name, url):
    payload = json.dumps({"model_name": name, "url": str(url)}).encode()
    return await request(app, "POST", "/models", payload, [("content-type", "application/json")])


def test_mme_url_must_be_under_the_models_root(model_dir, tmp_path, serve_app):
    app, store = mme_app(serve_app, tmp_path, model_dir, 4 << 10)

    async def body():
        for url in (model_dir, "/etc", store / ".." / "models" / "a", "relative/a"):
            status, out = await load(app, "x", url)
            assert status == 400 and "must be a directory under" in json.loads(out)["error"], (url, out)
        assert (await load(app, "a", store / "a"))[0] == 200

    asyncio.run(with_lifespan(app, body))


def test_mme_failed_load_unloads_nothing(model_dir, tmp_path, serve_app):
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    app, store = mme_app(serve_app, tmp_path, model_dir, int(size * 1.5) >> 20)  # room for one model only

    async def body():
        assert (await load(app, "a", store / "a"))[0] == 200
        status, _ = await load(app, "broken", store / "broken")
        assert status == 400
        status, out = await request(app, "GET", "/models")
        assert [m["modelName"] for m in json.loads(out)["models"]] == ["a"]  # still loaded
        assert (await load(app, "b", store / "b"))[0] == 200  # a successful load evicts a
        status, out = await request(app, "GET", "/models")
        assert [m["modelName"] for m in json.loads(out)["models"]] == ["b"]

    asyncio.run(with_lifespan(app, body))


def test_each_model_imports_its_own_helper_module(tmp_path):
    from serve.hooks import UserHooks, safe_module_name

    scripts = {}
    for name in ("first", "second"):
        code = tmp_path / name / "code"
        code.mkdir(parents=True)
        (code / "helper.py").write_text(f"OWNER = {name!r}\n")
        (code / "inference.py").write_text("import helper\n\ndef model_fn(model_dir):\n    return helper.OWNER\n")
        scripts[name] = code / "inference.py"
    first = UserHooks.load(scripts["first"], safe_module_name("first"))
    second = UserHooks.load(scripts["second"], safe_module_name("second"))
    assert second.functions["model_fn"]("") == "second"  # not the first model's cached helper
    assert first.functions["model_fn"]("") == "first"


# --- response bodies name no container paths (item 13) ------------------------------------


@pytest.mark.parametrize(
    "message, expected",
    [
        ("/opt/ml/model/model.pt is missing", "model.pt is missing"),
        ("cannot extract /tmp/sm-vision-models/a/model.tar.gz: bad header", "cannot extract model.tar.gz: bad header"),
        ("cannot load '/opt/ml/model/x.pth' into resnet18", "cannot load 'x.pth' into resnet18"),
        ("fetch http://example.com/a/b.png failed", "fetch http://example.com/a/b.png failed"),
        ("code/inference.py has no model_fn", "code/inference.py has no model_fn"),
    ],
)
def test_redact_paths(message, expected):
    assert errors.redact_paths(message) == expected


def test_load_failure_body_names_the_file_not_its_path(model_dir, tmp_path, serve_app):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.pt").unlink()
    app = serve_app(broken)

    async def body():
        assert await wait_ready(app) == 500
        for method, path in (("GET", "/ping"), ("POST", "/invocations")):
            status, out = await request(app, method, path, png(), [("content-type", "image/png")])
            assert status in (500, 503) and "model.pt" in json.loads(out)["error"], out
            assert str(tmp_path) not in out.decode(), out

    asyncio.run(with_lifespan(app, body))


def test_a_hook_error_body_names_no_path(model_dir, serve_app):
    code = model_dir / "code"
    code.mkdir(exist_ok=True)
    (code / "inference.py").write_text(
        "def input_fn(body, content_type):\n    raise OSError('cannot read /opt/ml/model/code/labels.txt')\n"
    )
    app = serve_app(model_dir)

    async def body():
        assert await wait_ready(app) == 200
        status, out = await request(app, "POST", "/invocations", png(), [("content-type", "image/png")])
        assert status == 500 and json.loads(out) == {"error": "internal error: OSError: cannot read labels.txt"}

    asyncio.run(with_lifespan(app, body))

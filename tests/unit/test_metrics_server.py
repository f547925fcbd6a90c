"""Unit tests for the server's Prometheus metrics and request log (serve/metrics.py,
serve/access_log.py), with the app driven in-process through ASGI."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import textwrap

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve.access_log import RequestLog
from serve.metrics import NoMetrics, ServerMetrics, route_label
from tests.support.asgi import asgi_call as call
from tests.support.asgi import wait_ready, with_lifespan
from tests.support.payloads import png_bytes as png


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_route_labels_are_templates():
    assert route_label("/invocations") == "/invocations"
    assert route_label("/models/resnet/invoke") == "/models/{name}/invoke"
    assert route_label("/models/resnet") == "/models/{name}"
    assert route_label("/predictions/x") == "/predictions/{name}"
    assert route_label("/predictions/x/y") == "other"
    assert route_label("/etc/passwd") == "other"


def test_metrics_count_exactly_the_requests_sent(model_dir, serve_app):
    app = serve_app(model_dir)
    image = [("content-type", "image/png")]

    async def body():
        assert await wait_ready(app) == 200
        status, _, before = await call(app, "GET", "/metrics")
        assert status == 200
        for _ in range(3):
            assert (await call(app, "POST", "/invocations", png(), image))[0] == 200
        assert (await call(app, "POST", "/invocations", b"junk", image))[0] == 400
        assert (await call(app, "GET", "/nowhere"))[0] == 404
        status, headers, after = await call(app, "GET", "/metrics")
        assert headers["content-type"].startswith("text/plain")
        return samples(before.decode()), samples(after.decode())

    before, after = asyncio.run(with_lifespan(app, body))

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("sm_vision_requests_total", route="/invocations", model="model", status_class="2xx") == 3
    assert moved("sm_vision_requests_total", route="/invocations", model="model", status_class="4xx") == 1
    assert moved("sm_vision_requests_total", route="other", model="", status_class="4xx") == 1
    assert moved("sm_vision_requests_total", route="/metrics", model="", status_class="2xx") == 1
    assert moved("sm_vision_request_duration_seconds_count", route="/invocations") == 4
    # The bad body fails in decode: three decodes, forwards and encodes finished.
    for stage in ("decode", "forward", "encode"):
        assert moved(f"sm_vision_{stage}_duration_seconds_count", model="model") == 3
    assert after[("sm_vision_model_state", (("model", "model"), ("state", "ready")))] == 1
    assert after[("sm_vision_model_state", (("model", "model"), ("state", "loading")))] == 0
    assert after[("sm_vision_models_loaded", ())] == 1
    assert after[("sm_vision_model_memory_bytes", (("model", "model"),))] > 1_000_000
    assert after[("sm_vision_model_load_duration_seconds", (("model", "model"),))] > 0
    assert after[("sm_vision_requests_in_flight", ())] == 1  # the scrape itself
    assert after[("process_resident_memory_bytes", ())] > 0


def test_batch_sizes_are_counted(model_dir, serve_app):
    app = serve_app(model_dir, batching="on", max_batch_size=4, max_batch_delay_ms=50)

    async def body():
        assert await wait_ready(app) == 200
        requests = [call(app, "POST", "/invocations", png(), [("content-type", "image/png")]) for _ in range(4)]
        assert [status for status, _, _ in await asyncio.gather(*requests)] == [200] * 4
        return samples((await call(app, "GET", "/metrics"))[2].decode())

    after = asyncio.run(with_lifespan(app, body))
    rows = after[("sm_vision_batch_size_sum", (("model", "model"),))]
    batches = after[("sm_vision_batch_size_count", (("model", "model"),))]
    assert rows == 4  # one row per request (the warm-up forward bypasses the batcher)
    assert 1 <= batches <= 4


def test_request_ids_and_json_access_log(model_dir, tmp_path):
    stream = io.StringIO()

    async def ok(scope, receive, send):
        if scope["path"].startswith("/models/"):
            scope["sm_vision.model"] = "m1"  # as a route does once it has found the model
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hi"})

    app = RequestLog(ok, NoMetrics(), "json", stream)

    async def body():
        given = await call(app, "POST", "/models/m1/invoke", headers=[("X-Amzn-RequestId", "abc-123")])
        fresh = await call(app, "GET", "/ping")
        return given, fresh

    (status, headers, _), (_, fresh_headers, _) = asyncio.run(body())
    assert status == 201 and headers["x-amzn-requestid"] == "abc-123" and headers["x-request-id"] == "abc-123"
    assert len(fresh_headers["x-request-id"]) == 32 and fresh_headers["x-amzn-requestid"] == fresh_headers["x-request-id"]
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert set(first) == {"time", "method", "path", "route", "model", "status", "latency_ms", "request_id"}
    assert (first["route"], first["model"], first["status"], first["request_id"]) == ("/models/{name}/invoke", "m1", 201, "abc-123")
    assert second["request_id"] == fresh_headers["x-request-id"] and second["model"] == ""
    with pytest.raises(ValueError, match="log, json, off"):
        RequestLog(ok, NoMetrics(), "xml")


def test_metrics_off_has_no_route(model_dir, serve_app):
    app = serve_app(model_dir, metrics=False, access_log="off")

    async def body():
        assert await wait_ready(app) == 200
        return await call(app, "GET", "/metrics")

    status, headers, _ = asyncio.run(with_lifespan(app, body))
    assert status == 404 and "x-request-id" in headers
    assert isinstance(ServerMetrics.from_env(False, {}), NoMetrics)


def test_multiprocess_mode_sums_over_processes(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR, /metrics of one process shows every process's requests."""
    record = textwrap.dedent(
        """
        import sys
        from serve.metrics import ServerMetrics
        metrics = ServerMetrics.from_env(True)
        for _ in range(int(sys.argv[1])):
            metrics.request_started()
            metrics.request_finished("/invocations", "model", 200, 0.01)
        if len(sys.argv) > 2:
            print(metrics.exposition(None)[0].decode())
        """
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for count in ("2", "3"):
        subprocess.run([sys.executable, "-c", record, count], check=True, env=env)
    out = subprocess.run([sys.executable, "-c", record, "1", "show"], check=True, env=env, capture_output=True, text=True).stdout
    values = samples(out)
    assert values[("sm_vision_requests_total", (("model", "model"), ("route", "/invocations"), ("status_class", "2xx")))] == 6
    assert values[("sm_vision_request_duration_seconds_count", (("route", "/invocations"),))] == 6
    assert values[("sm_vision_requests_in_flight", ())] == 0


def test_gpu_memory_gauges_on_a_cuda_device(monkeypatch, test_machine):
    """The CUDA branch of the scrape, with torch.cuda's readers faked (no GPU here)."""
    import torch

    from container import ServeConfig
    from serve.metrics import HostCollector
    from serve.pools import Pools

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (6 << 30, 16 << 30))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 3 << 30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 4 << 30)
    host = type("Host", (), {"model": None, "state": "loading"})()
    pools = Pools(ServeConfig().resolve(test_machine), test_machine)
    try:
        metrics = ServerMetrics()
        metrics.watch(HostCollector(host, pools, "cuda:0"))
        values = samples(metrics.exposition(None)[0].decode())
    finally:
        pools.close()
    device = (("device", "cuda:0"),)
    assert values[("sm_vision_gpu_memory_allocated_bytes", device)] == 3 << 30
    assert values[("sm_vision_gpu_memory_reserved_bytes", device)] == 4 << 30
    assert values[("sm_vision_gpu_memory_used_bytes", device)] == 10 << 30
    assert values[("sm_vision_gpu_memory_total_bytes", device)] == 16 << 30
    assert values[("sm_vision_model_state", (("model", "model"), ("state", "loading")))] == 1
    assert values[("sm_vision_models_loaded", ())] == 0

    def lost(device):
        raise RuntimeError("CUDA error: device lost")

    monkeypatch.setattr(torch.cuda, "mem_get_info", lost)
    cpu_values = samples(metrics.exposition(None)[0].decode())  # a failing GPU read must not break the scrape
    assert ("sm_vision_gpu_memory_total_bytes", device) not in cpu_values and ("sm_vision_models_loaded", ()) in cpu_values

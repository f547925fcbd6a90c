"""The server's Prometheus /metrics, request ids and JSON access log, through the real image.

Each scrape is parsed with prometheus_client's own parser; the counters and histogram
counts must move by exactly the requests this test sent.
"""

from __future__ import annotations

import json
import shutil

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.containers import opt_ml, wait_ping
from tests.support.endpoint import IMG, model_root, post, start_server
from tests.support.payloads import png_bytes


def scrape(base) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} from GET /metrics."""
    response = requests.get(base + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def key(name, **labels):
    return name, tuple(sorted(labels.items()))


def test_metrics_move_by_exactly_the_requests_sent(containers, image, model_store, tmp_path):
    root = model_root(tmp_path, model_store)
    container, base = start_server(containers, image, root, env={"SM_VISION_ACCESS_LOG": "json"})
    wait_ping(base, container)
    before = scrape(base)

    good = [post(base, png_bytes(IMG), "image/png") for _ in range(3)]
    assert [r.status_code for r in good] == [200] * 3
    bad_body = post(base, b"not an image", "image/png", headers={"X-Amzn-RequestId": "client-id-1"})
    bad_type = post(base, b"x,y", "text/plain")
    unknown = requests.get(base + "/no/such/route", timeout=10)
    assert (bad_body.status_code, bad_type.status_code, unknown.status_code) == (400, 415, 404)
    after = scrape(base)

    def moved(name, **labels):
        return after.get(key(name, **labels), 0) - before.get(key(name, **labels), 0)

    invocations = {"route": "/invocations", "model": "model"}
    assert moved("sm_vision_requests_total", **invocations, status_class="2xx") == 3
    assert moved("sm_vision_requests_total", **invocations, status_class="4xx") == 2
    assert moved("sm_vision_requests_total", route="other", model="", status_class="4xx") == 1
    assert moved("sm_vision_requests_total", route="/metrics", model="", status_class="2xx") == 1  # the first scrape
    assert moved("sm_vision_request_duration_seconds_count", route="/invocations") == 5
    assert moved("sm_vision_request_duration_seconds_bucket", route="/invocations", le="+Inf") == 5
    # Both bad requests fail in decode: stages count the three good ones only.
    for stage in ("decode", "forward", "encode"):
        assert moved(f"sm_vision_{stage}_duration_seconds_count", model="model") == 3
        assert moved(f"sm_vision_{stage}_duration_seconds_sum", model="model") > 0
    assert after[key("sm_vision_requests_in_flight")] == 1  # the scrape being answered
    assert after[key("sm_vision_model_state", model="model", state="ready")] == 1
    assert after[key("sm_vision_model_state", model="model", state="failed")] == 0
    assert after[key("sm_vision_models_loaded")] == 1
    assert after[key("sm_vision_model_memory_bytes", model="model")] > 10_000_000  # resnet18's weights
    assert 0 < after[key("sm_vision_model_load_duration_seconds", model="model")] < 120
    assert after[key("sm_vision_queue_depth", queue="inference")] == 0
    assert after[key("process_resident_memory_bytes")] > 100_000_000

    # Request ids: the client's is echoed under both names, else a new one.
    assert bad_body.headers["X-Amzn-RequestId"] == bad_body.headers["X-Request-Id"] == "client-id-1"
    assert len(good[0].headers["X-Request-Id"]) == 32 and good[0].headers["X-Request-Id"] != good[1].headers["X-Request-Id"]
    lines = [json.loads(line) for line in container.logs(stdout=True, stderr=False).decode().splitlines() if line.startswith("{")]
    by_id = {line["request_id"]: line for line in lines}
    record = by_id["client-id-1"]
    assert (record["route"], record["model"], record["status"], record["method"]) == ("/invocations", "model", 400, "POST")
    assert record["latency_ms"] >= 0 and record["time"].endswith("+00:00")
    assert by_id[good[0].headers["X-Request-Id"]]["status"] == 200


def test_multi_model_metrics_count_loads_and_evictions(containers, image, model_store, tmp_path):
    root = opt_ml(tmp_path)
    shutil.copytree(model_store / "r18", root / "models" / "r18")
    # Room for one resnet18 (~45 MB; ~11 MB once ONNX Runtime int8 takes over), not two:
    # the second load evicts the first.
    env = {"SAGEMAKER_MULTI_MODEL": "true", "SM_VISION_MME_MEMORY_MB": "50"}
    container, base = start_server(containers, image, root, env=env)
    wait_ping(base, container)
    for name in ("first", "second"):
        assert requests.post(base + "/models", json={"model_name": name, "url": "/opt/ml/models/r18"}, timeout=120).status_code == 200
    assert post(base, png_bytes(IMG), "image/png", path="/models/second/invoke").status_code == 200
    assert post(base, png_bytes(IMG), "image/png", path="/models/first/invoke").status_code == 404
    assert post(base, png_bytes(IMG), "image/png", path="/models/made-up-name/invoke").status_code == 404
    values = scrape(base)
    assert values[key("sm_vision_models_loaded")] == 1
    assert values[key("sm_vision_model_evictions_total")] == 1
    assert values[key("sm_vision_model_memory_budget_bytes")] == 50 * 1024 * 1024
    assert values[key("sm_vision_model_memory_bytes", model="second")] > 10_000_000
    assert key("sm_vision_model_memory_bytes", model="first") not in values
    assert values[key("sm_vision_requests_total", route="/models/{name}/invoke", model="second", status_class="2xx")] == 1
    # Unknown names never become labels: both 404s count under model="".
    assert values[key("sm_vision_requests_total", route="/models/{name}/invoke", model="", status_class="4xx")] == 2
    assert values[key("sm_vision_requests_total", route="/models", model="", status_class="2xx")] == 2


def test_metrics_off(containers, image, model_store, tmp_path):
    root = model_root(tmp_path, model_store)
    container, base = start_server(containers, image, root, env={"SM_VISION_METRICS": "false"})
    wait_ping(base, container)
    assert requests.get(base + "/metrics", timeout=10).status_code == 404
    assert post(base, png_bytes(IMG), "image/png").status_code == 200

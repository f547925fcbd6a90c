"""The server's capture (serve/capture.py): Data Capture's records and hourly layout, read
back by the monitor's own reader; sampling; the bounded queue and its drops; failing
destinations; S3 uploads asserted with botocore's Stubber; one folder per model on a
multi-model endpoint; and the whole app, in-process, counting it all in /metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from datetime import datetime, timezone

import boto3
import pytest
from botocore.stub import Stubber
from prometheus_client.parser import text_string_to_metric_families

from container import ConfigError, ServeConfig
from monitor.captures import WindowCounts, read_window
from serve.capture import Capture, NoCapture, capture_line
from tests.support.asgi import asgi_call, wait_ready, with_lifespan
from tests.support.payloads import png_bytes as png

ANSWER = (json.dumps({"predicted_label": "b", "confidence": 0.9}).encode(), "application/json")
HOUR = re.compile(r"ep/AllTraffic/\d{4}/\d{2}/\d{2}/\d{2}/\d{2}-\d{2}-\d{3}-[0-9a-f]{12}\.jsonl")


class Recorded:
    """The metrics calls the capture makes."""

    def __init__(self):
        self.calls: list[tuple] = []

    def capture(self, model, outcome):
        self.calls.append(("capture", model, outcome))

    def capture_write(self, destination, outcome, count):
        self.calls.append(("write", destination, outcome, count))


def config(**fields) -> ServeConfig:
    return ServeConfig(**{"capture_percent": 100.0, "capture_endpoint": "ep", **fields})


def capture_files(root):
    return sorted(path for path in root.rglob("*.jsonl"))


def test_records_are_data_capture_records_the_monitor_reads(tmp_path):
    capture = Capture.start(config(capture_dir=str(tmp_path)), Recorded())
    image = png(size=(20, 10))
    batch = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
    capture.offer("model", image, "image/png", {}, ANSWER)
    capture.offer(
        "model", batch, "application/json", {"x-amzn-sagemaker-inference-id": "req-7"}, (b'[{"predicted_label": "a"}]', "application/json")
    )
    capture.close()
    [path] = capture_files(tmp_path)
    assert HOUR.fullmatch(path.relative_to(tmp_path).as_posix()), path
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["captureData"]["endpointInput"] == {
        "observedContentType": "image/png", "mode": "INPUT", "data": base64.b64encode(image).decode(), "encoding": "BASE64",
    }  # fmt: skip
    # JSON is stored as JSON text, as Data Capture stores the content types declared JSON.
    assert first["captureData"]["endpointOutput"] == {
        "observedContentType": "application/json", "mode": "OUTPUT", "data": ANSWER[0].decode(), "encoding": "JSON",
    }  # fmt: skip
    assert second["captureData"]["endpointInput"]["encoding"] == "JSON" and second["captureData"]["endpointInput"]["data"] == batch.decode()
    assert set(first["eventMetadata"]) == {"eventId", "inferenceId", "inferenceTime"} and first["eventVersion"] == "0"
    assert second["eventMetadata"]["inferenceId"] == "req-7"
    assert path.parent.relative_to(tmp_path / "ep/AllTraffic").as_posix() == first["eventMetadata"]["inferenceTime"][:13].replace(
        "-", "/"
    ).replace("T", "/")
    # The monitor reads them back: the images and the labels the endpoint answered.
    counts = WindowCounts()
    items = list(read_window(tmp_path, None, None, counts))
    assert counts.records == 2 and [item.payload for item in items] == [image, image]
    assert [item.captured_label for item in items] == ["b", "a"]


def test_only_the_sampled_share_is_captured(tmp_path):
    draws = iter([0.10, 0.30, 0.24, 0.99])
    metrics = Recorded()
    capture = Capture(config(capture_percent=25.0, capture_dir=str(tmp_path)), metrics, [], sample=lambda: next(draws))
    for _ in range(4):
        capture.offer("model", b"x", "image/png", {}, ANSWER)
    capture.close()
    assert [call for call in metrics.calls if call[0] == "capture"] == [("capture", "model", "captured")] * 2


def test_a_full_queue_drops_and_counts_never_waits(tmp_path):
    metrics = Recorded()
    capture = Capture.start(config(capture_dir=str(tmp_path), capture_queue_mb=1), metrics)
    capture.stopping.set()  # the writer takes nothing more: the queue only fills
    capture.thread.join()
    started = time.perf_counter()
    capture.offer("model", b"a" * 600_000, "image/png", {}, ANSWER)
    capture.offer("model", b"b" * 600_000, "image/png", {}, ANSWER)  # over 1 MiB together
    capture.offer("model", b"c" * 10, "image/png", {}, ANSWER)
    assert time.perf_counter() - started < 0.05
    assert metrics.calls == [("capture", "model", "captured"), ("capture", "model", "dropped"), ("capture", "model", "captured")]
    assert len(capture.queue) == 2


def test_a_failing_destination_is_counted_and_requests_never_fail(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    metrics = Recorded()
    capture = Capture.start(config(capture_dir=str(blocked)), metrics)
    capture.offer("model", b"x", "image/png", {}, ANSWER)
    capture.offer("model", b"x", "image/png", {}, None)  # a broken answer: logged, never raised
    capture.close()
    assert ("write", "local", "failed", 1) in metrics.calls


def test_a_multi_model_endpoint_captures_each_model_in_its_own_folder(tmp_path):
    capture = Capture.start(config(capture_dir=str(tmp_path), multi_model=True), Recorded())
    capture.offer("resnet-a", b"x", "image/png", {}, ANSWER)
    capture.offer("resnet-b", b"y", "image/png", {}, ANSWER)
    capture.close()
    assert sorted(path.relative_to(tmp_path).parts[:2] for path in capture_files(tmp_path)) == [("ep", "resnet-a"), ("ep", "resnet-b")]


class JsonLines:
    """A Body parameter: UTF-8 JSON lines holding these input bodies, in order."""

    def __init__(self, bodies: list[bytes]):
        self.bodies = bodies

    def __eq__(self, other) -> bool:
        records = [json.loads(line) for line in other.decode().splitlines()]
        return [base64.b64decode(r["captureData"]["endpointInput"]["data"]) for r in records] == self.bodies


class Key:
    def __init__(self, prefix: str):
        self.pattern = re.compile(re.escape(prefix) + HOUR.pattern)

    def __eq__(self, other) -> bool:
        return isinstance(other, str) and self.pattern.fullmatch(other) is not None


def test_records_are_uploaded_to_s3_with_the_process_credentials():
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        expected = {
            "Bucket": "captures",
            "Key": Key("monitoring/capture/"),
            "Body": JsonLines([b"one", b"two"]),
            "ContentType": "application/jsonlines",
        }
        stub.add_response("put_object", {}, expected)
        metrics = Recorded()
        capture = Capture.start(config(capture_s3_uri="s3://captures/monitoring/capture/"), metrics, s3_client=client)
        capture.offer("model", b"one", "image/png", {}, ANSWER)
        capture.offer("model", b"two", "image/png", {}, ANSWER)
        capture.close()  # shutdown uploads what waits, before the 60 s interval
        stub.assert_no_pending_responses()
    assert ("write", "s3", "written", 2) in metrics.calls


def test_an_s3_refusal_is_counted_not_raised():
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_client_error("put_object", "AccessDenied", http_status_code=403)
        metrics = Recorded()
        capture = Capture.start(config(capture_s3_uri="s3://captures"), metrics, s3_client=client)
        capture.offer("model", b"one", "image/png", {}, ANSWER)
        capture.close()
    assert ("write", "s3", "failed", 1) in metrics.calls


def test_capture_lines_are_compact_and_one_per_line():
    from serve.capture import Captured

    item = Captured(
        datetime(2026, 12, 1, 15, 4, 5, tzinfo=timezone.utc).timestamp(),
        "ep/AllTraffic",
        "model",
        b"\xff",
        "image/png",
        b"\xfe",
        "application/x-npy",
        None,
    )
    line = capture_line(item)
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["eventMetadata"]["inferenceTime"] == "2026-12-01T15:04:05Z"
    assert record["captureData"]["endpointOutput"]["encoding"] == "BASE64"
    assert item.hour_folder() == "ep/AllTraffic/2026/12/01/15"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"capture_percent": 10.0}, "SM_VISION_CAPTURE_PERCENT=10: set SM_VISION_CAPTURE_DIR and/or SM_VISION_CAPTURE_S3_URI"),
        ({"capture_percent": 120.0, "capture_dir": "/tmp"}, "SM_VISION_CAPTURE_PERCENT=120.0: must be <= 100.0"),
        ({"capture_s3_uri": "captures/prefix"}, "SM_VISION_CAPTURE_S3_URI='captures/prefix': expected s3://bucket/prefix"),
        ({"capture_s3_uri": "s3:///prefix"}, "expected s3://bucket/prefix"),
    ],
)
def test_capture_settings_are_checked_at_start(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ServeConfig(**fields)


def test_off_by_default():
    assert isinstance(Capture.start(ServeConfig(), Recorded()), NoCapture)


def samples(text: str) -> dict[tuple, float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_server_captures_its_answers_and_counts_them_in_metrics(model_dir, serve_app, tmp_path):
    captures = tmp_path / "captures"
    app = serve_app(model_dir, capture_percent=100.0, capture_dir=str(captures), capture_endpoint="shapes")
    image = [("content-type", "image/png")]

    async def body():
        assert await wait_ready(app) == 200
        for _ in range(3):
            assert (await asgi_call(app, "POST", "/invocations", png(), image))[0] == 200
        assert (await asgi_call(app, "POST", "/invocations", b"junk", image))[0] == 400  # refused: not captured
        deadline = time.monotonic() + 10
        while len([line for path in capture_files(captures) for line in path.read_text().splitlines()]) < 3:
            assert time.monotonic() < deadline, "the writer did not write within 10 s"
            await asyncio.sleep(0.2)
        return samples((await asgi_call(app, "GET", "/metrics"))[2].decode())

    metrics = asyncio.run(with_lifespan(app, body))
    assert metrics[("sm_vision_capture_records_total", (("model", "model"), ("outcome", "captured")))] == 3
    assert metrics[("sm_vision_capture_writes_total", (("destination", "local"), ("outcome", "written")))] == 3
    records = [json.loads(line) for path in capture_files(captures) for line in path.read_text().splitlines()]
    assert all(path.relative_to(captures).parts[:2] == ("shapes", "AllTraffic") for path in capture_files(captures))
    answers = [json.loads(record["captureData"]["endpointOutput"]["data"]) for record in records]
    assert {answer["predicted_label"] for answer in answers} <= {"a", "b", "c"}

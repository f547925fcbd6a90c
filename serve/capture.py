"""Capture for monitoring: a sample of answered requests, written as SageMaker Data
Capture writes them, where SageMaker has no Data Capture (serverless and multi-model
endpoints, EC2, local docker), so one `monitor` reads both.

    {dir or s3 prefix}/{endpoint}/{variant}/yyyy/mm/dd/hh/{MM}-{SS}-{mmm}-{id}.jsonl

one JSON line per request (the hour of its inferenceTime, UTC):

    {"captureData": {"endpointInput":  {"observedContentType", "mode": "INPUT",  "data", "encoding"},
                     "endpointOutput": {"observedContentType", "mode": "OUTPUT", "data", "encoding"}},
     "eventMetadata": {"eventId", "inferenceId", "inferenceTime": "2026-12-01T15:04:05Z"},
     "eventVersion": "0"}

JSON bodies (our answers, JSON requests) are stored as text with encoding JSON, as
Data Capture stores the content types its CaptureContentTypeHeader declares JSON;
everything else as BASE64. A multi-model endpoint's records go under each model's
name in place of the variant, so each model is monitored on its own.

It never slows a request beyond noise and never fails one: HostedModel.invoke hands
the answered request to `offer` (a coin flip, then an append under a lock; no copy,
no encoding), and one writer thread per process encodes and writes what queued up,
every second. The queue is bounded in bytes (SM_VISION_CAPTURE_QUEUE_MB): a sampled
request that does not fit is dropped and counted, as is every record a destination
fails to take. Local files are appended every second; S3 objects (written with the
process's own credentials, on SageMaker the endpoint's role) are uploaded every
SM_VISION_CAPTURE_UPLOAD_S seconds or when 8 MiB wait, and at shutdown.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from container import ServeConfig
from serve.codec import JSON, JSONLINES, media_type

log = logging.getLogger("serve.capture")

WRITE_INTERVAL_S = 1.0  # the writer wakes this often
UPLOAD_BYTES = 8 << 20  # an S3 object is uploaded once this much waits for it
INFERENCE_ID_HEADER = "x-amzn-sagemaker-inference-id"
JSON_TYPES = frozenset({JSON, *JSONLINES})


@dataclass(frozen=True)
class Captured:
    """One sampled request, as `offer` queues it: references, nothing encoded yet."""

    when: float  # seconds since the epoch, when it was answered
    folder: str  # {endpoint}/{variant or model}
    model: str
    body: bytes
    content_type: str | None
    answer: bytes
    answer_type: str
    inference_id: str | None

    @property
    def size(self) -> int:
        return len(self.body) + len(self.answer)

    def hour_folder(self) -> str:
        return f"{self.folder}/{time.strftime('%Y/%m/%d/%H', time.gmtime(self.when))}"


def capture_part(data: bytes | str, content_type: str | None, mode: str) -> dict:
    """endpointInput / endpointOutput: JSON text as JSON, anything else as base64."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    if media_type(content_type) in JSON_TYPES:
        try:
            return {"observedContentType": content_type, "mode": mode, "data": data.decode("utf-8"), "encoding": "JSON"}
        except UnicodeDecodeError:
            pass
    return {"observedContentType": content_type or "", "mode": mode, "data": base64.b64encode(data).decode("ascii"), "encoding": "BASE64"}


def capture_line(item: Captured) -> str:
    """Data Capture's record of one request, as one JSON line."""
    event = str(uuid.uuid4())
    record = {
        "captureData": {
            "endpointInput": capture_part(item.body, item.content_type, "INPUT"),
            "endpointOutput": capture_part(item.answer, item.answer_type, "OUTPUT"),
        },
        "eventMetadata": {
            "eventId": event,
            "inferenceId": item.inference_id or event,
            "inferenceTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(item.when)),
        },
        "eventVersion": "0",
    }
    return json.dumps(record, separators=(",", ":")) + "\n"


def object_name(when: float) -> str:
    """A capture file's name: the minute, second and millisecond of its first record, and
    a unique part (Data Capture's own naming), so processes and uploads never collide."""
    return f"{time.strftime('%M-%S', time.gmtime(when))}-{int(when * 1000) % 1000:03d}-{uuid.uuid4().hex[:12]}.jsonl"


class LocalFiles:
    """Appends records to one file per hour folder and process; a past hour's file is closed."""

    destination = "local"

    def __init__(self, root: Path):
        self.root = root
        self.files: dict[str, object] = {}

    def write(self, hour: str, lines: list[str], first: float) -> None:
        handle = self.files.get(hour)
        if handle is None:
            for old in list(self.files):
                self.files.pop(old).close()
            folder = self.root / hour
            folder.mkdir(parents=True, exist_ok=True)
            handle = self.files[hour] = open(folder / object_name(first), "a", encoding="utf-8")  # noqa: SIM115 - kept open for the hour
        handle.writelines(lines)
        handle.flush()

    def due(self, now: float, final: bool) -> list[tuple[str, int]]:
        return []

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()
        self.files.clear()


class S3Uploads:
    """Buffers records per hour folder; each upload is one new object."""

    destination = "s3"

    def __init__(self, uri: str, interval_s: float, client=None):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket, self.prefix, self.interval_s = bucket, prefix.strip("/"), interval_s
        self.client = client
        self.buffers: dict[str, tuple[float, list[str]]] = {}  # hour folder -> (first record's time, lines)
        self.buffered = 0
        self.last_upload = time.monotonic()

    def write(self, hour: str, lines: list[str], first: float) -> None:
        start, buffered = self.buffers.setdefault(hour, (first, []))
        buffered.extend(lines)
        self.buffered += sum(map(len, lines))

    def due(self, now: float, final: bool) -> list[tuple[str, int]]:
        """Uploads what waits when it is time (or `final`): (outcome, records) per object."""
        if not self.buffers or not (final or self.buffered >= UPLOAD_BYTES or now - self.last_upload >= self.interval_s):
            return []
        buffers, self.buffers, self.buffered, self.last_upload = self.buffers, {}, 0, now
        outcomes = []
        for hour, (first, lines) in buffers.items():
            key = "/".join(part for part in (self.prefix, hour, object_name(first)) if part)
            try:
                if self.client is None:
                    import boto3

                    self.client = boto3.client("s3")
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body="".join(lines).encode("utf-8"), ContentType="application/jsonlines"
                )
            except Exception as err:  # noqa: BLE001 - S3 refusing (permissions, network) must not stop the writer
                log.warning(
                    "capture: cannot upload s3://%s/%s (%s: %s); %d records lost", self.bucket, key, type(err).__name__, err, len(lines)
                )
                outcomes.append(("failed", len(lines)))
                continue
            outcomes.append(("written", len(lines)))
        return outcomes

    def close(self) -> None:
        pass


class Capture:
    """The sampler, the bounded queue and the writer thread of one server process."""

    enabled = True

    def __init__(self, config: ServeConfig, metrics, destinations: list, sample=random.random):
        self.percent, self.metrics, self.destinations, self.sample = config.capture_percent, metrics, destinations, sample
        self.endpoint, self.variant, self.multi_model = config.capture_endpoint, config.capture_variant, config.multi_model
        self.limit, self.queued = config.capture_queue_bytes, 0
        self.queue: collections.deque[Captured] = collections.deque()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, config: ServeConfig, metrics, s3_client=None) -> Capture | NoCapture:
        """The process's capture, or NoCapture when SM_VISION_CAPTURE_PERCENT is 0."""
        if not config.capture_percent:
            return NoCapture()
        destinations: list = []
        if config.capture_dir:
            destinations.append(LocalFiles(Path(config.capture_dir)))
        if config.capture_s3_uri:
            destinations.append(S3Uploads(config.capture_s3_uri, config.capture_upload_s, s3_client))
        where = " and ".join(filter(None, (config.capture_dir, config.capture_s3_uri)))
        log.info("capturing %g%% of answered requests to %s (%s/%s/...)", config.capture_percent, where, config.capture_endpoint,
                 "<model>" if config.multi_model else config.capture_variant)  # fmt: skip
        return cls(config, metrics, destinations)

    # --- the request path ----------------------------------------------------------------

    def offer(self, model: str, body: bytes, content_type: str | None, headers: dict[str, str], answer: tuple[bytes, str]) -> None:
        """Queue one answered request when the sample picks it: never raises, never waits."""
        try:
            if self.percent < 100 and self.sample() * 100 >= self.percent:
                return
            folder = f"{self.endpoint}/{model if self.multi_model else self.variant}"
            item = Captured(time.time(), folder, model, body, content_type, answer[0], answer[1], headers.get(INFERENCE_ID_HEADER))
            with self.lock:
                fits = self.queued + item.size <= self.limit
                if fits:
                    self.queued += item.size
                    self.queue.append(item)
            self.metrics.capture(model, "captured" if fits else "dropped")
        except Exception:  # noqa: BLE001 - capture must never fail a request
            log.exception("capture: a request could not be queued")

    # --- the writer thread ---------------------------------------------------------------

    def _take(self) -> list[Captured]:
        with self.lock:
            items, self.queue, self.queued = list(self.queue), collections.deque(), 0
        return items

    def _run(self) -> None:
        while True:
            final = self.stopping.wait(WRITE_INTERVAL_S)
            try:
                self._write(self._take())
                for destination in self.destinations:
                    for outcome, count in destination.due(time.monotonic(), final):
                        self.metrics.capture_write(destination.destination, outcome, count)
            except Exception:  # noqa: BLE001 - the writer must outlive any one failure
                log.exception("capture: the writer failed; it continues")
            if final:
                return

    def _write(self, items: list[Captured]) -> None:
        by_hour: dict[str, list[Captured]] = {}
        for item in items:
            by_hour.setdefault(item.hour_folder(), []).append(item)
        for hour, members in by_hour.items():
            lines = [capture_line(item) for item in members]
            for destination in self.destinations:
                try:
                    destination.write(hour, lines, members[0].when)
                except OSError as err:  # a full or read-only disk
                    log.warning("capture: cannot write %s under %s (%s); %d records lost", hour, destination.destination, err, len(lines))
                    self.metrics.capture_write(destination.destination, "failed", len(lines))
                    continue
                if destination.destination == "local":
                    self.metrics.capture_write("local", "written", len(lines))

    def close(self) -> None:
        """Write and upload what is queued, then stop (the server's shutdown)."""
        self.stopping.set()
        self.thread.join(timeout=60)
        for destination in self.destinations:
            destination.close()


class NoCapture:
    """SM_VISION_CAPTURE_PERCENT=0: nothing sampled, no thread."""

    enabled = False

    def offer(self, model: str, body: bytes, content_type: str | None, headers: dict[str, str], answer: tuple[bytes, str]) -> None:
        pass

    def close(self) -> None:
        pass

"""SageMaker Data Capture files -> the captured inputs of a time window, item by item.

A capture file is JSON Lines under {endpoint}/{variant}/yyyy/mm/dd/hh/, one record per
request:

    {"captureData": {"endpointInput":  {"observedContentType": "image/jpeg", "mode": "INPUT",
                                        "data": "...", "encoding": "BASE64"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "{...}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "...", "inferenceId": "...", "inferenceTime": "2026-12-01T15:04:05Z"},
     "eventVersion": "0"}

Records are kept when start <= inferenceTime < end, wherever their file lies (Model
Monitor may download more than the window). A request body becomes the images the
server would have decoded from it, by the server's content types (serve/codec.py):
an image body; JSON or JSON Lines holding base64 strings or {"image"|"b64"|
"image_bytes"|"data": base64} items, one object or a list or {"instances": [...]};
uint8 .npy frames. {"url": ...} items are never fetched here (a monitoring job must
not reach out to clients' URLs) and float .npy tensors are already model input: both
are counted as not evaluated. When the output was captured too, each item carries the
label the endpoint answered, to check that the monitor runs the same model.

Items are bytes or arrays, read by the server's own codec (serve.codec: its content
types, JSON item keys and base64 rules); monitor.window decodes them with the server's
decoder.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath

import numpy as np

from container import ConfigError
from container.monitoring import parse_time
from serve import codec
from serve.errors import ServeError

log = logging.getLogger(__name__)


class BadBody(ValueError):
    """A captured body that the server itself would have refused (the message says why)."""


@dataclass(frozen=True)
class NotEvaluated:
    """An input that is not an image the monitor may look at (a URL, a tensor)."""

    reason: str


@dataclass(frozen=True)
class Broken:
    """An item the server would have refused: a decode failure."""

    reason: str


Item = bytes | np.ndarray | NotEvaluated | Broken


@dataclass(frozen=True)
class CapturedItem:
    time: datetime
    event_id: str
    position: int  # the item's index within its request
    payload: bytes | np.ndarray | None = None  # encoded image bytes, or a uint8 frame
    captured_label: str | None = None  # what the endpoint answered, when the output was captured
    failure: str | None = None  # why the item could not become an image (a decode failure)
    skipped: str | None = None  # why it is not evaluated (URL, tensor, not captured)


@dataclass
class WindowCounts:
    files: int = 0
    records: int = 0  # records inside the window
    outside: int = 0  # records outside it
    malformed: int = 0  # lines that are not capture records
    record_times: list[datetime] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> items not evaluated


def window_hours(start: datetime, end: datetime) -> list[str]:
    """The yyyy/mm/dd/hh folders that may hold records of [start, end)."""
    hour = start.replace(minute=0, second=0, microsecond=0)
    folders = []
    while hour < end:
        folders.append(hour.strftime("%Y/%m/%d/%H"))
        hour += timedelta(hours=1)
    return folders


def fetch_window(uri: str, start: datetime, end: datetime, destination: Path, client=None) -> Path:
    """The capture files of the window's hours under s3://bucket/prefix (an endpoint's
    {endpoint}/{variant} prefix, or a model's on a multi-model endpoint), downloaded with
    the job's own credentials into destination, in the same layout. Model Monitor does
    this for its jobs; a Processing job's inputs cannot name the hours of a schedule."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigError(f"dataset_source={uri!r}: expected s3://bucket/prefix/ENDPOINT/VARIANT")
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or boto3.client("s3")
    prefix = prefix.strip("/")
    fetched = 0
    try:
        for hour in window_hours(start, end):
            folder = f"{prefix}/{hour}/" if prefix else f"{hour}/"
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
                for entry in page.get("Contents", []):
                    key = entry["Key"]
                    if not key.endswith(".jsonl"):
                        continue
                    relative = PurePosixPath(key).relative_to(prefix) if prefix else PurePosixPath(key)
                    target = destination / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
                    fetched += 1
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "error")
        raise ConfigError(
            f"cannot read the captures under {uri}: {code} (does the job's role have s3:ListBucket and s3:GetObject?)"
        ) from None
    except BotoCoreError as err:
        raise ConfigError(f"cannot read the captures under {uri}: {err}") from None
    log.info("downloaded %d capture files of %d hours under %s", fetched, len(window_hours(start, end)), uri)
    destination.mkdir(parents=True, exist_ok=True)
    return destination


def capture_files(source: Path) -> list[Path]:
    if not source.is_dir():
        raise ConfigError(f"dataset_source {source} is not a directory")
    return sorted(path for path in source.rglob("*.jsonl") if path.is_file())


def body_bytes(part: dict) -> bytes:
    data = part.get("data")
    if not isinstance(data, str):
        raise BadBody("no data")
    if str(part.get("encoding", "")).upper() == "BASE64":
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise BadBody("capture data is not valid base64") from None
    return data.encode()


def _json_item(item) -> Item:
    try:
        data = codec.item_image(item)
    except ServeError as err:
        return Broken(err.message)
    return NotEvaluated("url input (not fetched)") if data is None else data


def _json_items(payload) -> list:
    try:
        return codec.json_items(payload)[0]
    except ServeError as err:
        raise BadBody(err.message) from None


def _parse_json(text: bytes):
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise BadBody("body is not valid JSON") from None


def _npy_frames(body: bytes) -> list[Item]:
    """uint8 frames of a .npy body (the header's size checked against the body first,
    as the server does), or the reason it is not evaluated."""
    buffer = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(buffer)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(buffer)
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if dtype.hasobject or declared > len(body) - buffer.tell():
            raise BadBody("the .npy header declares more data than the body holds")
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError, SyntaxError):
        raise BadBody("body is not a .npy array") from None
    if array.dtype == np.uint8 and array.ndim in (2, 3, 4):
        frames = array if array.ndim == 4 else array[None]
        if frames.ndim == 3 or frames.shape[-1] in (1, 3, 4):
            return list(frames)
    if np.issubdtype(array.dtype, np.floating):
        return [NotEvaluated("model-input tensor (no image)")]
    raise BadBody(f"array of shape {list(array.shape)} and dtype {array.dtype} is not an image")


def input_items(body: bytes, content_type: str | None) -> list[Item]:
    """The request's items, in order. BadBody when the body itself is broken."""
    kind = codec.media_type(content_type)
    if codec.is_image_type(kind):
        return [body]
    if kind == codec.NPY:
        return _npy_frames(body)
    if kind == codec.JSON:
        return [_json_item(item) for item in _json_items(_parse_json(body))]
    if kind in codec.JSONLINES:
        return [_json_item(_parse_json(line)) for line in body.splitlines() if line.strip()]
    return [NotEvaluated(f"content type {kind or '(none)'} is not an image type")]


def output_labels(part: dict | None) -> list[str] | None:
    """predicted_label of each answer in a captured JSON output, or None."""
    if not part or "json" not in codec.media_type(part.get("observedContentType")):
        return None
    try:
        text = body_bytes(part)
        if codec.media_type(part.get("observedContentType")) in codec.JSONLINES:
            answers = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            answers = json.loads(text)
    except (BadBody, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    answers = answers if isinstance(answers, list) else [answers]
    labels = [answer.get("predicted_label") if isinstance(answer, dict) else None for answer in answers]
    return labels if all(isinstance(label, str) for label in labels) else None


def _record_items(record: dict, when: datetime, read_outputs: bool) -> Iterator[CapturedItem]:
    capture = record.get("captureData") or {}
    event_id = str((record.get("eventMetadata") or {}).get("eventId", ""))
    request = capture.get("endpointInput")
    if not isinstance(request, dict):
        yield CapturedItem(when, event_id, 0, skipped="input not captured")
        return
    try:
        items = input_items(body_bytes(request), request.get("observedContentType"))
    except BadBody as err:
        yield CapturedItem(when, event_id, 0, failure=str(err))
        return
    labels = output_labels(capture.get("endpointOutput")) if read_outputs else None
    if labels is not None and len(labels) != len(items):
        labels = None
    for position, item in enumerate(items):
        label = labels[position] if labels else None
        if isinstance(item, Broken):
            yield CapturedItem(when, event_id, position, failure=item.reason)
        elif isinstance(item, NotEvaluated):
            yield CapturedItem(when, event_id, position, skipped=item.reason)
        else:
            yield CapturedItem(when, event_id, position, payload=item, captured_label=label)


def read_window(
    source: Path, start: datetime | None, end: datetime | None, counts: WindowCounts, read_outputs: bool = True
) -> Iterator[CapturedItem]:
    """Every item of every record in [start, end), file by file; `counts` is filled as it goes."""
    files = capture_files(source)
    counts.files = len(files)
    for path in files:
        with path.open("rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    when = parse_time(str(record["eventMetadata"]["inferenceTime"]), "inferenceTime")
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError, ConfigError):
                    counts.malformed += 1
                    continue
                if (start and when < start) or (end and when >= end):
                    counts.outside += 1
                    continue
                counts.records += 1
                counts.record_times.append(when)
                for item in _record_items(record, when, read_outputs):
                    if item.skipped:
                        counts.skipped[item.skipped] += 1
                    yield item
    if counts.malformed:
        log.warning("%d lines in %s are not Data Capture records; ignored", counts.malformed, source)

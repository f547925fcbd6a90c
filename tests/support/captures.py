"""SageMaker Data Capture files for tests: records and the hourly layout the monitor reads
(stdlib only).

    record = capture_record(png, "image/png", when, output={"predicted_label": "cat"})
    write_captures(root, "my-endpoint", [record, ...])   # root/my-endpoint/AllTraffic/yyyy/mm/dd/hh/*.jsonl
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def capture_record(body: bytes, content_type: str, when: datetime, output=None, encoding: str = "BASE64") -> dict:
    """One Data Capture record of a request `body`; `output` (JSON-able) is captured as
    the endpoint's JSON answer when given."""
    data = base64.b64encode(body).decode() if encoding == "BASE64" else body.decode()
    capture = {"endpointInput": {"observedContentType": content_type, "mode": "INPUT", "data": data, "encoding": encoding}}
    if output is not None:
        capture["endpointOutput"] = {
            "observedContentType": "application/json",
            "mode": "OUTPUT",
            "data": json.dumps(output),
            "encoding": "JSON",
        }
    event = str(uuid.uuid4())
    return {
        "captureData": capture,
        "eventMetadata": {"eventId": event, "inferenceId": event, "inferenceTime": iso(when)},
        "eventVersion": "0",
    }


def write_captures(root: Path, endpoint: str, records: list[dict], variant: str = "AllTraffic") -> list[Path]:
    """The records in Data Capture's layout, one file per hour of their inferenceTime."""
    by_hour: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        when = record["eventMetadata"]["inferenceTime"]
        by_hour[f"{when[0:4]}/{when[5:7]}/{when[8:10]}/{when[11:13]}"].append(record)
    files = []
    for hour, members in sorted(by_hour.items()):
        folder = root / endpoint / variant / hour
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uuid.uuid4().hex[:8]}.jsonl"
        path.write_text("".join(json.dumps(record) + "\n" for record in members))
        files.append(path)
    return files

"""Reading Data Capture files (monitor.captures): the window filter, every request kind
the server accepts, and what is counted instead of evaluated."""

import base64
import io
import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from container import ConfigError
from monitor.captures import WindowCounts, capture_files, read_window
from tests.support.captures import capture_record, write_captures
from tests.support.payloads import npy_bytes, png_bytes

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)


def read(root, start=None, end=None, outputs=True):
    counts = WindowCounts()
    items = list(read_window(root, start, end, counts, outputs))
    return items, counts


def test_records_are_filtered_to_the_window_wherever_their_file_lies(tmp_path):
    png = png_bytes()
    times = [T0 - timedelta(minutes=1), T0, T0 + timedelta(minutes=59), T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    write_captures(tmp_path, "ep", [capture_record(png, "image/png", when) for when in times])
    assert len(capture_files(tmp_path)) == 4  # hours 14, 15, 16, 17
    items, counts = read(tmp_path, T0, T0 + timedelta(hours=1))
    assert [item.time for item in items] == [T0, T0 + timedelta(minutes=59)]  # start inclusive, end exclusive
    assert (counts.files, counts.records, counts.outside, counts.malformed) == (4, 2, 3, 0)
    assert items[0].payload == png
    everything, _ = read(tmp_path)
    assert len(everything) == 5


def test_json_jsonlines_and_npy_bodies_become_their_images(tmp_path):
    png = png_bytes()
    b64 = base64.b64encode(png).decode()
    frames = np.zeros((2, 6, 8, 3), np.uint8)
    records = [
        capture_record(
            json.dumps({"instances": [b64, {"image": b64}, {"b64": {"b64": b64}}, {"url": "https://x/y.jpg"}]}).encode(),
            "application/json",
            T0,
        ),
        capture_record(f'{{"image": "{b64}"}}\n{{"data": "{b64}"}}\n'.encode(), "application/jsonlines", T0),
        capture_record(npy_bytes(frames), "application/x-npy", T0),
        capture_record(npy_bytes(np.zeros((1, 3, 4, 4), np.float32)), "application/x-npy", T0),
        capture_record(b"a,b\n1,2\n", "text/csv", T0),
    ]
    write_captures(tmp_path, "ep", records)
    items, counts = read(tmp_path)
    payloads = [item.payload for item in items if item.payload is not None]
    assert payloads[:5] == [png] * 5
    assert [p.shape for p in payloads[5:]] == [(6, 8, 3), (6, 8, 3)]
    assert counts.skipped == {
        "url input (not fetched)": 1,
        "model-input tensor (no image)": 1,
        "content type text/csv is not an image type": 1,
    }
    assert [item.position for item in items[:4]] == [0, 1, 2, 3]


def npy_bomb() -> bytes:
    """A .npy header declaring 10 GB, with no data after it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": (100000, 100000)})
    return buffer.getvalue()


def test_broken_bodies_are_decode_failures_and_bad_lines_are_counted(tmp_path):
    records = [
        capture_record(b"{not json", "application/json", T0),
        capture_record(json.dumps(["!!not base64!!", 42]).encode(), "application/json", T0),
        capture_record(npy_bomb(), "application/x-npy", T0),
    ]
    records.append({"captureData": {}, "eventMetadata": {"eventId": "e", "inferenceTime": "2026-12-01T15:00:00Z"}})
    write_captures(tmp_path, "ep", records)
    path = capture_files(tmp_path)[0]
    path.write_text(path.read_text() + "not json\n" + json.dumps({"eventMetadata": {"inferenceTime": "whenever"}}) + "\n\n")
    items, counts = read(tmp_path)
    assert [item.failure for item in items if item.failure] == [
        "body is not valid JSON",
        "image is not valid base64",  # the server's own messages (serve.codec)
        'each input must be a base64 string, {"image": base64} or {"url": "https://..."}',
        "body is not a .npy array",
    ]
    assert counts.skipped == {"input not captured": 1}
    assert (counts.records, counts.malformed) == (4, 2)


def test_captured_answers_are_matched_to_their_items(tmp_path):
    png = png_bytes()
    b64 = base64.b64encode(png).decode()
    one = capture_record(png, "image/png", T0, output={"predicted_label": "cat", "confidence": 0.9})
    batch = capture_record(
        json.dumps([b64, b64]).encode(), "application/json", T0, output=[{"predicted_label": "cat"}, {"predicted_label": "dog"}]
    )
    mismatched = capture_record(json.dumps([b64, b64]).encode(), "application/json", T0, output=[{"predicted_label": "cat"}])
    write_captures(tmp_path, "ep", [one, batch, mismatched])
    items, _ = read(tmp_path)
    assert [item.captured_label for item in items] == ["cat", "cat", "dog", None, None]
    without_outputs, _ = read(tmp_path, outputs=False)
    assert all(item.captured_label is None for item in without_outputs)


def test_a_missing_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        read(tmp_path / "nowhere")

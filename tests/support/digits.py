"""scikit-learn's handwritten digits (bundled with scikit-learn, nothing downloaded) as
real images, written in every format the trainer reads: class folders, .lst lists,
RecordIO .rec files (by the independent writer), Ground Truth manifests and their
Pipe-mode augmented-manifest streams, and plain CSV / JSON-lines manifests.

Each digit is the 8x8 scan scaled to 0..255 and enlarged 4x (nearest) to 32x32, so the
pixels a reader returns can be compared exactly with the originals. Multi-label
examples add a second label, "even" (10) or "odd" (11), so every image has two.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from tests.support import recordio_writer

SCALE = 4
PARITY = {0: 10, 1: 11}  # multi-label: digit, then 10 (even) or 11 (odd)
CLASS_NAMES = [f"digit_{d}" for d in range(10)] + ["even", "odd"]


@dataclass(frozen=True)
class Digit:
    index: int  # row in scikit-learn's digits
    label: int  # 0..9
    pixels: np.ndarray  # 32x32 uint8

    @property
    def labels(self) -> tuple[int, int]:
        return (self.label, PARITY[self.label % 2])

    @property
    def name(self) -> str:
        return CLASS_NAMES[self.label]

    @property
    def rgb(self) -> np.ndarray:
        return np.repeat(self.pixels[:, :, None], 3, axis=2)

    def png(self, text: bytes | None = None) -> bytes:
        info = None
        if text is not None:
            info = PngImagePlugin.PngInfo()
            info.add_text("comment", text.decode("latin-1"))
        buffer = io.BytesIO()
        Image.fromarray(self.pixels, "L").save(buffer, "PNG", pnginfo=info)
        return buffer.getvalue()

    def relative_path(self, split: str = "train") -> str:
        return f"{split}/{self.name}/{self.index:04d}.png"


def load(count: int | None = None, start: int = 0) -> list[Digit]:
    from sklearn.datasets import load_digits

    data = load_digits()
    stop = len(data.images) if count is None else start + count
    digits = []
    for index in range(start, stop):
        small = np.rint(data.images[index] * (255.0 / 16.0)).astype(np.uint8)
        digits.append(Digit(index, int(data.target[index]), np.kron(small, np.ones((SCALE, SCALE), dtype=np.uint8))))
    return digits


def write_files(root: Path, digits: list[Digit], split: str = "train") -> list[str]:
    """Each digit as a PNG under root/<split>/<class>/; returns the relative paths."""
    paths = []
    for digit in digits:
        relative = digit.relative_path(split)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(digit.png())
        paths.append(relative)
    return paths


def write_image_folder(root: Path, digits: list[Digit]) -> None:
    for digit in digits:
        folder = root / digit.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{digit.index:04d}.png").write_bytes(digit.png())


def write_lst(path: Path, digits: list[Digit], relative_paths: list[str], multi_label: str | None = None) -> None:
    """im2rec's list format; multi_label: None, "class-id" or "multi-hot" (12 classes)."""
    lines = []
    for number, (digit, relative) in enumerate(zip(digits, relative_paths, strict=True)):
        if multi_label == "class-id":
            labels = [f"{label:.6f}" for label in digit.labels]
        elif multi_label == "multi-hot":
            labels = [f"{float(i in digit.labels):.6f}" for i in range(len(CLASS_NAMES))]
        else:
            labels = [f"{digit.label:.6f}"]
        lines.append("\t".join([str(number), *labels, relative]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def magic_png(digit: Digit, payload_offset: int) -> bytes:
    """The digit as a PNG whose bytes hold the RecordIO magic number at a 4-byte aligned
    position of the record payload it will sit in (the image starts at `payload_offset`),
    so a writer must split the record there."""
    magic = struct.pack("<I", recordio_writer.KMAGIC)
    for pad in range(4):
        data = digit.png(b"A" * pad + magic)
        position = data.find(magic)
        if (payload_offset + position) % 4 == 0:
            return data
    raise AssertionError("no padding aligns the magic number")


@dataclass(frozen=True)
class RecWritten:
    cflags: list[list[int]]  # per record, the continuation flags of its parts
    split_records: list[int]  # records the writer had to split


def write_rec(path: Path, digits: list[Digit], multi_label_records=(), split_records=()) -> RecWritten:
    """The digits as im2rec image records: a single label each, except the records in
    `multi_label_records` (flag 2: digit and parity); the records in `split_records` carry
    the magic number inside their image, so they are written in continuation parts."""
    cflags = []
    with open(path, "wb") as out:
        for number, digit in enumerate(digits):
            label = list(map(float, digit.labels)) if number in multi_label_records else digit.label
            header_size = 24 + (8 if number in multi_label_records else 0)
            image = magic_png(digit, header_size) if number in split_records else digit.png()
            cflags.append(recordio_writer.write_record(out, recordio_writer.pack_image(label, image, record_id=digit.index)))
    return RecWritten(cflags, [n for n, flags in enumerate(cflags) if flags != [0]])


def ground_truth_line(digit: Digit, source_ref: str, attribute: str = "class", multi_label: bool = False) -> dict:
    if multi_label:
        return {
            "source-ref": source_ref,
            attribute: list(digit.labels),
            f"{attribute}-metadata": {
                "class-map": {str(i): CLASS_NAMES[i] for i in digit.labels},
                "confidence-map": {str(i): 0.95 for i in digit.labels},
                "type": "groundtruth/image-classification-multilabel",
                "job-name": "labeling-job/digits",
                "human-annotated": "yes",
                "creation-date": "2024-01-01T00:00:00.000000",
            },
        }
    return {
        "source-ref": source_ref,
        attribute: digit.label,
        f"{attribute}-metadata": {
            "class-name": digit.name,
            "confidence": 0.95,
            "type": "groundtruth/image-classification",
            "job-name": "labeling-job/digits",
            "human-annotated": "yes",
            "creation-date": "2024-01-01T00:00:00.000000",
        },
    }


def write_manifest(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def augmented_stream(digits: list[Digit], attribute_names=("source-ref", "class"), multi_label: bool = False, undecodable=()) -> bytes:
    """What SageMaker streams for an AugmentedManifestFile channel with
    RecordWrapperType=RecordIO: per manifest line, each attribute of AttributeNames in
    order as one record; "-ref" attributes as the object's bytes, the others as JSON text.
    The images at the positions in `undecodable` are bytes no decoder reads."""
    out = io.BytesIO()
    for position, digit in enumerate(digits):
        line = ground_truth_line(digit, f"s3://bucket/digits/{digit.index:04d}.png", "class", multi_label)
        for name in attribute_names:
            image = b"not a PNG %d" % position if position in undecodable else digit.png()
            data = image if name.endswith("-ref") else json.dumps(line[name]).encode()
            recordio_writer.write_record(out, data)
    return out.getvalue()


def rec_stream(digits: list[Digit]) -> bytes:
    out = io.BytesIO()
    for digit in digits:
        recordio_writer.write_record(out, recordio_writer.pack_image(digit.label, digit.png(), record_id=digit.index))
    return out.getvalue()

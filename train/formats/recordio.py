"""MXNet RecordIO: the `.rec` files im2rec writes, and SageMaker's RecordIO wrapping.

The format (dmlc-core's recordio.h, MXNet's mx.recordio), all integers little-endian:

    record  = uint32 magic 0xced7230a, uint32 lrecord, payload, zero padding to 4 bytes
    lrecord = cflag << 29 | length       (cflag: upper 3 bits, length: lower 29 bits)

A writer that finds the magic number at a 4-byte aligned position inside a payload
splits the payload there and drops those 4 bytes: the parts are written as records with
cflag 1 (first), 2 (middle) and 3 (last), and a reader joins them with the magic number
between them. cflag 0 is a whole record.

An im2rec image payload starts with an IRHeader packed `<IfQQ`: flag, label, id, id2.
When flag > 0, `flag` float32 labels follow it (multi-label, or a packed label vector)
and `label` is ignored; the encoded image comes after.

File mode reads a `.rec` by an index of record offsets made in one pass that reads only
headers and labels (`scan`), then each image on demand (`read_image_at`). Pipe mode reads
the records as a stream (`iter_records`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from train.formats.base import DataFormatError, Sample, class_ids

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
HEADER = struct.Struct("<II")  # magic, lrecord
IR_HEADER = struct.Struct("<IfQQ")  # flag, label, id, id2
LENGTH_BITS = 29
LENGTH_MASK = (1 << LENGTH_BITS) - 1
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3  # cflag values


@dataclass(frozen=True, order=True)
class RecordRef:
    """One record inside a RecordIO file, read on demand (File mode random access)."""

    path: str
    offset: int  # byte offset of the record's first header
    index: int  # position in the file, from 0

    def read_image(self) -> bytes:
        return read_image_at(self)


def image_source(source: str | RecordRef | bytes) -> str | bytes:
    """What vision.images.load_rgb takes: a path as is, a record's image bytes."""
    return source.read_image() if isinstance(source, RecordRef) else source


@dataclass(frozen=True)
class Record:
    index: int  # position in the stream, from 0 (a split record counts once)
    offset: int  # byte offset of its first header
    payload: bytes


def _padded(length: int) -> int:
    return (length + 3) & ~3


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes: fewer only at the end of the stream (a FIFO returns short reads)."""
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def iter_records(stream: BinaryIO, name: str, offset: int = 0, index: int = 0) -> Iterator[Record]:
    """The records of `stream` (a file or a FIFO), joined across continuation parts;
    DataFormatError naming the record index and byte offset when one is cut short or the
    framing is wrong. `offset`/`index` say where `stream` is positioned."""
    while True:
        start, parts = offset, []
        while True:
            head = _read_exact(stream, HEADER.size)
            if not head:
                if parts:
                    raise DataFormatError(f"{name}: record {index} at byte {start} is cut off: the data ends inside a multi-part record")
                return
            if len(head) < HEADER.size:
                raise DataFormatError(
                    f"{name}: record {index} at byte {offset} is truncated: {len(head)} bytes of its 8-byte header, then the end"
                )
            magic, lrecord = HEADER.unpack(head)
            if magic != MAGIC:
                raise DataFormatError(
                    f"{name}: record {index} at byte {offset}: magic number 0x{magic:08x}, expected 0x{MAGIC:08x} "
                    "(not a RecordIO file, or the previous record's length is wrong)"
                )
            cflag, length = lrecord >> LENGTH_BITS, lrecord & LENGTH_MASK
            if (cflag in (WHOLE, FIRST)) == bool(parts) or cflag > LAST:
                raise DataFormatError(f"{name}: record {index} at byte {offset}: continuation flag {cflag} out of order")
            body = _read_exact(stream, _padded(length))
            if len(body) < length:
                raise DataFormatError(
                    f"{name}: record {index} at byte {start} is truncated: its header says {length} bytes, {len(body)} remain"
                )
            parts.append(body[:length])
            offset += HEADER.size + len(body)
            if cflag in (WHOLE, LAST):
                break
        yield Record(index, start, MAGIC_BYTES.join(parts))
        index += 1


def encode_record(payload: bytes) -> bytes:
    """`payload` as RecordIO bytes, split where the magic number sits at an aligned
    position, as dmlc-core's writer does (the pipe fan-out re-frames records with it)."""
    out, start, length = [], 0, len(payload)
    for position in range(0, length - length % 4, 4):
        if payload[position : position + 4] == MAGIC_BYTES:
            out.append(HEADER.pack(MAGIC, (FIRST if start == 0 else MIDDLE) << LENGTH_BITS | (position - start)))
            out.append(payload[start:position])
            start = position + 4
    rest = length - start
    out.append(HEADER.pack(MAGIC, (LAST if start else WHOLE) << LENGTH_BITS | rest))
    out.append(payload[start:])
    out.append(b"\0" * (_padded(rest) - rest))
    return b"".join(out)


@dataclass(frozen=True)
class ImageRecord:
    labels: tuple[float, ...]
    id: int
    image_offset: int  # where the encoded image starts in the payload


def unpack_header(payload: bytes, where: str) -> ImageRecord:
    """The IRHeader and labels at the start of an im2rec payload."""
    if len(payload) < IR_HEADER.size:
        raise DataFormatError(f"{where}: {len(payload)} bytes is too short for an image record (24-byte IRHeader)")
    flag, label, record_id, _ = IR_HEADER.unpack_from(payload)
    if flag == 0:
        return ImageRecord((label,), record_id, IR_HEADER.size)
    end = IR_HEADER.size + 4 * flag
    if end > len(payload):
        raise DataFormatError(f"{where}: its IRHeader says {flag} labels follow, but the record holds {len(payload)} bytes")
    return ImageRecord(struct.unpack_from(f"<{flag}f", payload, IR_HEADER.size), record_id, end)


def _sample(header: ImageRecord, length: int, source, name: str, index: int, offset: int, multi_hot: bool) -> Sample:
    where = f"{name} record {index} (byte {offset})"
    if header.image_offset >= length:
        raise DataFormatError(f"{where}: the record holds labels but no image")
    return Sample(source, class_ids(header.labels, where, multi_hot), key=f"{Path(name).name}#{index}", where=where)


def image_sample(record: Record, name: str, multi_hot: bool) -> Sample:
    """The sample in a streamed record, its image bytes as the source."""
    header = unpack_header(record.payload, f"{name} record {record.index} (byte {record.offset})")
    image = record.payload[header.image_offset :]
    return _sample(header, len(record.payload), image, name, record.index, record.offset, multi_hot)


def stream_samples(stream: BinaryIO, name: str, multi_hot: bool) -> Iterator[Sample]:
    """Samples of a .rec stream (Pipe mode), the image bytes in each."""
    for record in iter_records(stream, name):
        yield image_sample(record, name, multi_hot)


def scan(path: Path, multi_hot: bool) -> list[Sample]:
    """Every image record of a .rec file, as RecordRefs with their labels, reading only
    the record headers and labels (a seek past each image)."""
    samples = []
    name, size = str(path), path.stat().st_size
    with open(path, "rb") as file:
        offset, index = 0, 0
        while offset < size:
            head = _read_exact(file, HEADER.size)
            magic, lrecord = HEADER.unpack(head) if len(head) == HEADER.size else (None, 0)
            cflag, length = lrecord >> LENGTH_BITS, lrecord & LENGTH_MASK
            where = f"{name} record {index} (byte {offset})"
            if magic == MAGIC and cflag == WHOLE and offset + HEADER.size + length <= size:
                start = _read_exact(file, min(length, IR_HEADER.size))
                flag = IR_HEADER.unpack_from(start)[0] if len(start) == IR_HEADER.size else 0
                start += _read_exact(file, min(4 * flag, length - len(start)))
                header = unpack_header(start, where)
                file.seek(offset + HEADER.size + _padded(length))
            else:
                # The rare multi-part record, and every framing error, go through the full reader.
                file.seek(offset)
                record = next(iter_records(file, name, offset, index))
                header, length = unpack_header(record.payload, where), len(record.payload)
            samples.append(_sample(header, length, RecordRef(name, offset, index), name, index, offset, multi_hot))
            offset, index = file.tell(), index + 1
    return samples


def read_image_at(ref: RecordRef) -> bytes:
    """The encoded image of the record `ref` points at."""
    with open(ref.path, "rb") as file:
        file.seek(ref.offset)
        record = next(iter_records(file, ref.path, ref.offset, ref.index), None)
    if record is None:
        raise DataFormatError(f"{ref.path} record {ref.index} (byte {ref.offset}): the file ends before it")
    where = f"{ref.path} record {ref.index} (byte {ref.offset})"
    return record.payload[unpack_header(record.payload, where).image_offset :]

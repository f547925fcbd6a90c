"""An independent MXNet RecordIO writer for test data, written from the format's
documentation (dmlc-core recordio.h, MXNet's recordio and im2rec), so the project's
reader is tested against the format, not against itself. Never import train.formats here.

    record  = uint32 kMagic (0xced7230a), uint32 lrecord = cflag << 29 | length,
              the bytes, zero padding to a multiple of 4 (little-endian)

dmlc-core's RecordIOWriter::WriteRecord scans the data at 4-byte aligned positions; each
time it meets kMagic it ends a part there (cflag 1 for the first part, 2 after), drops
those 4 bytes, and goes on; the last part has cflag 3 (0 when there was no split). The
reader puts kMagic back between the parts.

im2rec's image records start with IRHeader {uint32 flag; float label; uint64 id, id2}; a
label vector is stored as `flag` float32 values after the header (flag = its length).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

KMAGIC = 0xCED7230A


def _encode_lrec(cflag: int, length: int) -> int:
    assert length < (1 << 29), "RecordIO records are below 2^29 bytes"
    return (cflag << 29) | length


def write_record(out: BinaryIO, data: bytes) -> list[int]:
    """Write `data` as one logical record; returns the cflags of the parts written."""
    magic = struct.pack("<I", KMAGIC)
    lower_align = (len(data) >> 2) << 2
    cflags, dptr = [], 0
    for i in range(0, lower_align, 4):
        if data[i : i + 4] == magic:
            cflag = 1 if dptr == 0 else 2
            out.write(magic + struct.pack("<I", _encode_lrec(cflag, i - dptr)) + data[dptr:i])
            cflags.append(cflag)
            dptr = i + 4
    cflag = 3 if dptr != 0 else 0
    rest = data[dptr:]
    out.write(magic + struct.pack("<I", _encode_lrec(cflag, len(rest))) + rest)
    out.write(b"\0" * (((len(data) + 3) >> 2 << 2) - len(data)))  # dmlc pads by the whole record's length
    cflags.append(cflag)
    return cflags


def pack_image(label, image: bytes, record_id: int = 0) -> bytes:
    """mx.recordio.pack: a number is stored in IRHeader.label with flag 0; a list of
    labels follows the header as float32 values, flag holding how many."""
    if isinstance(label, (list, tuple)):
        return struct.pack("<IfQQ", len(label), 0.0, record_id, 0) + struct.pack(f"<{len(label)}f", *label) + image
    return struct.pack("<IfQQ", 0, float(label), record_id, 0) + image

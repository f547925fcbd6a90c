"""Crafted hostile inputs (issue 22), generated small and fast from code: each costs
the server far more than its size unless a bound refuses it first. Pillow, numpy and
the standard library only, so unit, host and container tests can all use them."""

from __future__ import annotations

import base64
import bz2
import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

# --- images ------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def blank_png(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A grey PNG of zeros, its rows compressed as they are made: a 13000x13000 one
    (169 MP) is ~20 KB and takes well under a second to write."""
    row = b"\x00" + bytes((width * bit_depth + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def ico_bomb(side: int = 13_000) -> bytes:
    """An ICO whose directory declares one 256x256 icon while the PNG inside it is
    side x side (169 MP by default): Pillow reports 256x256 until it decodes."""
    png = blank_png(side, side)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)  # 0 x 0 means 256 x 256
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def progressive_jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    """A flat colour as a progressive JPEG: every scan is a few bytes."""
    image = Image.new("RGB", size, (120, 130, 140))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, progressive=True)
    return buffer.getvalue()


def scan_bomb(scans: int = 5_000, size: tuple[int, int] = (64, 64)) -> bytes:
    """A progressive JPEG whose last scan (with the Huffman table before it) repeats
    until the file has `scans` scans. libjpeg decodes every repeat (a bogus
    progression is only a warning), one pass over the image each: a 500 KB file of
    tiny scans stops a decoder for tens of seconds."""
    data = progressive_jpeg(size)
    end = data.rindex(b"\xff\xd9")
    first_scan = data.index(b"\xff\xda")
    starts = [i for i in range(first_scan, end) if data[i] == 0xFF and data[i + 1] in (0xC4, 0xDA)]  # DHT, SOS: never in entropy data
    sos = [i for i in starts if data[i + 1] == 0xDA]
    last = sos[-1]
    block_start = max((i for i in starts if i < last and i > sos[-2]), default=last)
    block = data[block_start:end]
    return data[:end] + block * (scans - len(sos)) + b"\xff\xd9"


def sixteen_bit_png(width: int, height: int) -> bytes:
    """A 16-bit grey PNG with a gradient (Pillow mode I;16)."""
    values = (np.arange(width * height, dtype=np.uint64) * 65535 // max(1, width * height - 1)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values.reshape(height, width)).save(buffer, "PNG")
    return buffer.getvalue()


# --- arrays ------------------------------------------------------------------------------


def npy_header(shape: tuple, descr: str = "<f4", fortran: bool = False) -> bytes:
    """An .npy (1.0) preamble and header declaring shape and descr, with no data,
    padded as numpy pads it (np.save writes these bytes for such an array)."""
    text = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    text += " " * (64 - (10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin-1")


def npz(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _zeros_compressed(compressor, total: int) -> bytes:
    chunk = bytes(min(total, 16 << 20))
    out, left = [], total
    while left:
        out.append(compressor.compress(chunk[: min(left, len(chunk))]))
        left -= min(left, len(chunk))
    return b"".join(out) + compressor.flush()


def bzip2_npz_bomb(expanded: int = 16 << 20) -> bytes:
    """An .npz whose one bzip2 member is an .npy declaring `expanded` bytes of float32
    zeros, and holding them: bzip2's ratio has no practical bound (1.9 GiB fits in
    ~1.4 KB; making that one takes ~17 s, see BZIP2_NPZ_BOMB_1_9_GIB)."""
    header = npy_header((expanded // 4,))
    compressor = bz2.BZ2Compressor(9)
    body = compressor.compress(header) + _zeros_compressed(compressor, expanded)
    return _zip_one_member("x.npy", body, zipfile.ZIP_BZIP2, len(header) + expanded, _zeros_crc(header, expanded))


def _zeros_crc(header: bytes, zeros: int) -> int:
    crc = zlib.crc32(header)
    chunk = bytes(min(zeros, 16 << 20))
    while zeros:
        crc = zlib.crc32(chunk[: min(zeros, len(chunk))], crc)
        zeros -= min(zeros, len(chunk))
    return crc & 0xFFFFFFFF


def deflate_npz_overrun(declared_floats: int = 16, inflates_to: int = 64 << 20) -> bytes:
    """An .npz whose deflate member inflates to `inflates_to` bytes, while its .npy
    header and the zip's size fields (and CRC) describe only the header and
    declared_floats float32 zeros: a reader that stops at the declared size reads a
    small array; one that inflates everything pays `inflates_to`."""
    header = npy_header((declared_floats,))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = compressor.compress(header) + _zeros_compressed(compressor, inflates_to - len(header))
    declared = len(header) + 4 * declared_floats
    return _zip_one_member("x.npy", body, zipfile.ZIP_DEFLATED, declared, _zeros_crc(header, 4 * declared_floats))


def _zip_one_member(name: str, compressed: bytes, method: int, size: int, crc: int) -> bytes:
    """A zip of one member written field by field, so its sizes say what the caller wants."""
    encoded = name.encode()
    version = 46 if method == zipfile.ZIP_BZIP2 else 20
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", version, 0, method, 0, 0x21, crc, len(compressed), size, len(encoded), 0)
    central = struct.pack(
        "<4sHHHHHHIIIHHHHHII",
        b"PK\x01\x02",
        version,
        version,
        0,
        method,
        0,
        0x21,
        crc,
        len(compressed),
        size,
        len(encoded),
        0,
        0,
        0,
        0,
        0o644 << 16,
        0,
    )
    offset = len(local) + len(encoded) + len(compressed)
    directory = central + encoded
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(directory), offset, 0)
    return local + encoded + compressed + directory + end


# The bzip2 .npz of issue 22 (1,662 bytes; its .npy header declares 510,000,000 float32
# zeros, 1.9 GiB, and the member holds them), made once with bzip2_npz_bomb(2_040_000_000)
# and kept here because making it takes ~17 s: a server that inflates it allocates
# and fills 1.9 GiB.
_BZIP2_NPZ_BOMB_1_9_GIB = (
    "UEsDBC4AAAAMAAAAIQDW66NREgYAAIDul3kFAAAAeC5ucHlCWmg5MUFZJlNZ+fu/JgV+QV+g6BBA5GYUAQNCIK9F3QoIAAAIIACUCSmpPSPU0GEAxA/UnlBF"
    "VMJkwRowAIAQ/gUAVVEgEUAVVEh9wIoApJIR03E5F3Ag0GtfOEZwUbY33WVwMOXrnIK8aeMcnzw+zaydWh81VOPe2nelBqS3udZshIASSSEfzFBWSZTWQ4J4"
    "t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBW"
    "SZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlq"
    "QqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwg"
    "E1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAA"
    "AAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfA"
    "V+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU"
    "1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKg"
    "JcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNR"
    "kKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAAC"
    "CAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZDgni3wFfj"
    "kAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXMUFZJlNZD"
    "gni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCoCWpCoCXM"
    "UFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggADCATUZCo"
    "CWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AAMAAAAggA"
    "DCATUZCoCWpCoCXMUFZJlNZDgni3wFfjkAAwAAACCAAMIBNRkKgJakKgJcxQVkmU1kOCeLfAV+OQADAAAAIIAAwgE1GQqAlqQqAlzFBWSZTWQ4J4t8BX45AA"
    "MAAAAggADCATUZCoCWpCoCXMUFZJlNZM6bmsAA0LcAAwAAACCAAMIApGJCKjBIRUcXckU4UJAJvpoaBQSwECLgAuAAAADAAAACEA1uujURIGAACA7pd5BQAA"
    "AAAAAAAAAAAApAEAAAAAeC5ucHlQSwUGAAAAAAEAAQAzAAAANQYAAAAA"
)


def bzip2_npz_bomb_1_9_gib() -> bytes:
    return base64.b64decode(_BZIP2_NPZ_BOMB_1_9_GIB)

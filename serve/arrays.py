"""The one loader of array request bodies (.npy, .npz, CSV, JSON), every cost checked
before it is paid. serve/payloads.py (a user's model) and serve/codec.py (our
classifier) both read arrays through it.

- .npy: the header is read from its length field, refused past max_header_bytes, and
  parsed as a literal; the dtype must be a plain number type (bool, int, uint, float,
  complex: no objects, so no pickles; no strings, records or sub-arrays), the shape
  at most max_dims non-negative ints. The bytes the shape declares must be exactly
  the bytes that follow, and at most max_bytes, before the one allocation is made.
- .npz: exactly one member, STORED or DEFLATED (bzip2 and lzma members, whose ratio
  has no practical bound, are refused unread), not encrypted; the zip directory may
  be at most MAX_ZIP_DIRECTORY_BYTES, so listing it is cheap. The member's .npy header
  is read first and its declared size checked against max_bytes and against the size
  the zip records; then the member is streamed into the array a chunk at a time, so
  a member that inflates past what its header declares stops at the declared size
  (the decompressor never produces more than one chunk beyond it).
- empty arrays (a dimension of 0, e.g. a float (3, 0, 0)) are refused with a 422:
  no model can use them, and they fail deep inside a forward as a 500.
- CSV: ASCII only, cells counted (commas + newlines) before parsing and at most
  max_bytes / 4 of them; numpy's C reader (np.loadtxt) parses straight into float32.
- JSON: parsed once (json.loads), after two byte counts: values (commas + 1) at most
  max_json_values, nesting depth at most max_json_depth (counted over the brackets
  outside strings, only when there are more brackets than that). JSON Lines: the
  values of the whole body counted first, then each line the same way.

Errors are the typed errors of serve.errors: 400 malformed, 413 over a size limit,
422 well-formed but unusable.
"""

from __future__ import annotations

import ast
import codecs
import io
import json
import math
import re
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from container import ServeConfig
from serve.errors import BadInput, PayloadTooLarge, Unprocessable

NPY_MAGIC = b"\x93NUMPY"
NUMBER_KINDS = "biufc"  # bool, signed, unsigned, float, complex
MAX_ZIP_DIRECTORY_BYTES = 64 * 1024  # one member's entry is ~100 bytes; bounds what zipfile parses
STREAM_CHUNK = 1024 * 1024
_BRACKETS = frozenset(b"[]{}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


@dataclass(frozen=True)
class ArrayLimits:
    max_bytes: int = ServeConfig.max_array_mb << 20  # the decoded array; what an .npz member may inflate to (SM_VISION_MAX_ARRAY_MB)
    max_header_bytes: int = 10_000  # an .npy header (numpy's own reader stops there too)
    max_dims: int = 32
    max_json_values: int = 4_000_000  # numbers in a JSON body (each costs ~32 bytes as a Python object)
    max_json_depth: int = 32  # nested lists/objects; a tensor needs its number of dims
    allow_empty: bool = False  # arrays with a 0-length dimension


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    header_bytes: int  # magic, version, length field and header text: where the data starts

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _short(value: object, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


# --- .npy ------------------------------------------------------------------------------


def read_npy_header(read, limits: ArrayLimits) -> NpyHeader:
    """The header of an .npy stream (read(n) -> bytes), checked; BadInput/Unprocessable."""
    magic = read(8)
    if len(magic) < 8 or not magic.startswith(NPY_MAGIC):
        raise BadInput("body is not a .npy array (no \\x93NUMPY magic)")
    version = (magic[6], magic[7])
    if version == (1, 0):
        length_field = read(2)
    elif version in ((2, 0), (3, 0)):
        length_field = read(4)
    else:
        raise BadInput(f"unsupported .npy format version {version[0]}.{version[1]}")
    length = int.from_bytes(length_field, "little")
    if len(length_field) not in (2, 4):
        raise BadInput(".npy header is truncated")
    if length > limits.max_header_bytes:
        raise BadInput(f".npy header is {length:,} bytes, above the limit of {limits.max_header_bytes:,}")
    raw = read(length)
    if len(raw) < length:
        raise BadInput(".npy header is truncated")
    try:
        fields = ast.literal_eval(raw.decode("utf-8" if version == (3, 0) else "latin-1"))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        raise BadInput(".npy header is not a Python literal") from None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise BadInput(".npy header must hold exactly 'descr', 'fortran_order' and 'shape'")
    shape, fortran, descr = fields["shape"], fields["fortran_order"], fields["descr"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise BadInput(f".npy header's shape {_short(shape, 80)} is not a tuple of non-negative integers")
    if len(shape) > limits.max_dims:
        raise Unprocessable(f".npy array has {len(shape)} dimensions, above the limit of {limits.max_dims}")
    if not isinstance(fortran, bool):
        raise BadInput(".npy header's fortran_order is not True or False")
    if not isinstance(descr, str):
        raise Unprocessable("the .npy header declares a structured dtype; send an array of plain numbers")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError):
        raise BadInput(f"the .npy header declares an unknown dtype {_short(descr, 40)!r}") from None
    if dtype.hasobject:
        raise BadInput("the .npy header declares dtype object (pickled Python objects); they are refused")
    if dtype.kind not in NUMBER_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise Unprocessable(f"the .npy header declares dtype {_short(descr, 40)!r}; send bool, integer, float or complex numbers")
    header = NpyHeader(shape, dtype, fortran, len(magic) + len(length_field) + length)
    if not limits.allow_empty and 0 in shape:
        raise Unprocessable(f"array of shape {list(shape)} has no elements")
    return header


def _finish(array: np.ndarray, header: NpyHeader) -> np.ndarray:
    if not header.dtype.isnative:  # torch takes native byte order only; swap in place
        array = array.byteswap(inplace=True).view(header.dtype.newbyteorder("="))
    return array.reshape(header.shape, order="F" if header.fortran_order else "C")


def load_npy(body: bytes, limits: ArrayLimits) -> np.ndarray:
    """One .npy body as a writable array in native byte order."""
    buffer = io.BytesIO(body)
    header = read_npy_header(buffer.read, limits)
    held = len(body) - header.header_bytes
    if header.data_bytes != held:
        raise BadInput(
            f"the .npy header declares {list(header.shape)} {header.dtype} ({header.data_bytes:,} bytes) but the body holds {held:,}"
        )
    if header.data_bytes > limits.max_bytes:
        raise PayloadTooLarge(f"array is {header.data_bytes:,} bytes, above the limit of {limits.max_bytes:,}")
    array = np.frombuffer(body, header.dtype, math.prod(header.shape), header.header_bytes).copy()
    return _finish(array, header)


# --- .npz ------------------------------------------------------------------------------


def _check_zip_directory(body: bytes) -> None:
    """Bound what zipfile will parse: the end record's directory size, found the way
    zipfile finds it (so both read the same record)."""
    try:
        end = zipfile._EndRecData(io.BytesIO(body))  # zipfile's own end-record reader
    except (OSError, EOFError, ValueError):
        end = None
    if not end:
        raise BadInput("body is not an .npz archive (no zip end record)")
    directory_bytes = end[zipfile._ECD_SIZE]
    if directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
        raise Unprocessable(f".npz directory is {directory_bytes:,} bytes: it lists more than the one array the default input_fn takes")


def load_npz(body: bytes, limits: ArrayLimits) -> np.ndarray:
    """The one array of an .npz body, streamed from its member under the byte budget."""
    _check_zip_directory(body)
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise BadInput(f"body is not an .npz archive: {_short(err)}") from None
    with archive:
        members = archive.infolist()
        if len(members) != 1:
            names = [m.filename.removesuffix(".npy") for m in members[:10]]
            raise Unprocessable(f".npz holds arrays {names}; the default input_fn takes exactly one (write an input_fn for more)")
        member = members[0]
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            kind = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}.get(member.compress_type, f"method {member.compress_type}")
            raise Unprocessable(
                f".npz member is compressed with {kind}; only stored or deflated members (np.savez, np.savez_compressed) are read"
            )
        if member.flag_bits & 0x1:
            raise Unprocessable(".npz member is encrypted")
        try:
            with archive.open(member) as stream:
                return _stream_member(stream, member, limits)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as err:  # CRC mismatch, corrupt deflate data
            raise BadInput(f"body is not an .npz archive: {_short(err)}") from None


def _stream_member(stream, member: zipfile.ZipInfo, limits: ArrayLimits) -> np.ndarray:
    header = read_npy_header(stream.read, limits)
    declared = header.data_bytes
    if declared > limits.max_bytes:
        raise PayloadTooLarge(f".npz array is {declared:,} bytes, above the limit of {limits.max_bytes:,}")
    if member.file_size != header.header_bytes + declared:
        raise BadInput(
            f"the .npz member's header declares {list(header.shape)} {header.dtype} ({declared:,} bytes) "
            f"but the zip records {member.file_size - header.header_bytes:,}"
        )
    array = np.empty(math.prod(header.shape), header.dtype)
    view = memoryview(array).cast("B") if declared else memoryview(b"")
    filled = 0
    while filled < declared:
        chunk = stream.read(min(STREAM_CHUNK, declared - filled))
        if not chunk:
            raise BadInput(f"the .npz member ends after {filled:,} of its {declared:,} bytes")
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    if stream.read(1):  # also where zipfile checks the CRC
        raise BadInput("the .npz member holds more bytes than its header declares")
    return _finish(array, header)


# --- CSV -------------------------------------------------------------------------------


def load_csv(body: bytes, limits: ArrayLimits) -> np.ndarray:
    """Rows of numbers as a 2-D float32 array (one row: 1 x columns)."""
    if body.startswith(codecs.BOM_UTF8):  # spreadsheets write one
        body = body[len(codecs.BOM_UTF8) :]
    if not body.isascii():
        raise BadInput("CSV body must be ASCII text (rows of numbers)")
    cells = body.count(b",") + body.count(b"\n") + 1
    if cells * 4 > limits.max_bytes:
        raise PayloadTooLarge(f"CSV body has about {cells:,} cells, above the limit of {limits.max_bytes // 4:,}")
    text = body.decode("ascii")
    if not text.strip():
        raise Unprocessable("CSV body must be non-empty rows with the same number of columns")
    try:
        array = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float32, ndmin=2, comments=None)
    except ValueError as err:
        if "number of columns changed" in str(err):
            raise Unprocessable("CSV body must be non-empty rows with the same number of columns") from None
        raise BadInput(f"CSV body must be rows of numbers: {_short(err)}") from None
    if array.size == 0 and not limits.allow_empty:
        raise Unprocessable("CSV body must be non-empty rows with the same number of columns")
    return array


# --- JSON ------------------------------------------------------------------------------


def json_depth(body: bytes) -> int:
    """The deepest nesting of lists and objects in body, counted over the brackets
    outside strings (C-speed passes: strings blanked, everything but brackets dropped)."""
    skeleton = np.frombuffer(_JSON_STRING.sub(b'""', body).translate(None, _NOT_BRACKETS), np.uint8)
    if not skeleton.size:
        return 0
    steps = np.where((skeleton == ord("[")) | (skeleton == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())


def _check_json_values(body: bytes, limits: ArrayLimits, values: int) -> None:
    if values > limits.max_json_values:
        raise PayloadTooLarge(f"JSON body has about {values:,} values, above the limit of {limits.max_json_values:,}")


def load_json_lines(body: bytes, limits: ArrayLimits) -> list:
    """One JSON value per non-blank line (JSON Lines), the values of the whole body
    counted first, then each line as load_json reads it."""
    lines = [line for line in body.splitlines() if line.strip()]
    _check_json_values(body, limits, body.count(b",") + len(lines))
    return [load_json(line, limits) for line in lines]


def load_json(body: bytes, limits: ArrayLimits) -> object:
    """body parsed once, its value count and nesting depth checked from the bytes first."""
    _check_json_values(body, limits, body.count(b",") + 1)
    if body.count(b"[") + body.count(b"{") > limits.max_json_depth:
        depth = json_depth(body)
        if depth > limits.max_json_depth:
            raise BadInput(f"body is not valid JSON: nested too deeply ({depth} levels, the limit is {limits.max_json_depth})")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"body is not valid JSON: {_short(err)}") from None
    except RecursionError:  # brackets inside strings fooled the count: still bounded by the parser
        raise BadInput("body is not valid JSON: nested too deeply") from None


def json_tensor(value: object, limits: ArrayLimits) -> np.ndarray | None:
    """A parsed JSON value as a float32 array, or None when it is not nested numbers
    (an image request such as {"url": ...} or base64 strings, or nothing at all)."""
    first = value
    while isinstance(first, list) and first:
        first = first[0]
    if not isinstance(first, (int, float)):  # base64 strings, {"url": ...}: never made an array of text
        return None
    try:
        array = np.asarray(value)
    except ValueError:  # ragged lists, or deeper than numpy's dimension limit
        raise Unprocessable("JSON arrays must be rectangular (every row the same length)") from None
    if array.dtype.kind not in "biuf" or array.size == 0:
        return None
    if array.ndim > limits.max_dims:
        raise Unprocessable(f"JSON array has {array.ndim} dimensions, above the limit of {limits.max_dims}")
    return array.astype(np.float32)

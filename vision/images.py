"""Untrusted image bytes -> an upright 8-bit RGB PIL image, the same way for training
and serving (serve.codec calls this too), so both see the same pixels.

Every cost is bounded before it is paid. In this order, and all before any pixel is
decoded:
- format: only the formats in ImageLimits.formats are even parsed (JPEG and its
  multi-picture variant MPO, PNG, WebP, GIF, BMP, TIFF, and PPM for torchvision-style
  training folders). ICO, ICNS and every other Pillow plugin are refused: an ICO
  header may declare a 256x256 icon while the PNG inside it decodes to 169 MP, so
  their sizes cannot be checked from the header.
- size: width x height and the aspect ratio, from the header. The eval transform
  resizes the *short* side (Resize(256)), so a 16000x1 image would become 256 x 4
  million pixels: the aspect-ratio cap is what bounds the resized size.
- JPEG scans: a progressive JPEG may carry any number of scans, and libjpeg makes one
  pass over the whole image per scan (about 4 ms per 72-byte scan on a photo), so the
  SOS markers are counted in the bytes first and more than max_jpeg_scans are refused.
  Encoders write far fewer: libjpeg's progressive script has 10 scans for colour and 6
  for grey, mozjpeg and jpegli about as many, baseline files 1 (3 when not interleaved).
- decode bytes: what the decoded frame occupies, width x height x bytes per pixel of
  its mode as Pillow stores it (1 for 1/L/P, 2 for 16-bit grey, 4 for 32-bit int or
  float and for every multi-band mode, RGB included), plus for a JPEG of more than one
  scan libjpeg's coefficient buffer (2 bytes per sample of every component at its own
  sampling). Multi-frame files (GIF, APNG, animated WebP, multi-page TIFF, MPO) have
  their first frame decoded and no other, so the budget counts that frame. The
  default budget is what a max_pixels RGB image takes (40 MP by default): no image
  costs more than the largest plain photo the pixel limit lets in (a progressive 4:2:0
  colour JPEG pays 7 bytes per pixel, so about 23 MP of it fit; a 16-bit grey image 2,
  so the pixel limit decides).
Then the pixels are decoded, converted and stood upright:
- orientation: the EXIF Orientation tag is applied (vision/orientation.py), so phone
  photos are upright.
- bit depth: 16-bit images are scaled to 8 bits (Pillow's convert clips them: a
  16-bit grayscale PNG would come out all white), float images must hold [0, 1] and
  are scaled by 255 (convert would round them to black); other values are refused.
  The scaling runs a band of rows at a time through a lookup table, so a 16-bit image
  costs its frame plus the 8-bit result, not 8-byte temporaries per pixel.

The bounds stop what can be refused up front. A decode that is within them still
runs inside one C call; serve/decode_pool.py runs it in a worker process that can be
killed at the request's deadline.
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from container.serving import ServeConfig
from vision.orientation import exif_orientation, upright

# Pillow format names. MPO (a JPEG followed by more JPEGs: many phones write it) opens
# through the JPEG plugin and is decoded as the JPEG it starts with.
JPEG_FORMATS = ("JPEG", "MPO")
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
# Formats refused by name when their magic bytes are recognised (a clearer 422 than
# "not an image"); anything else outside the allow-list is simply unreadable.
_REFUSED_MAGIC = (
    (b"\x00\x00\x01\x00", "ICO"),
    (b"icns", "ICNS"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"DDS ", "DDS"),
    (b"qoif", "QOI"),
    (b"gimp xcf", "XCF"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}
# Pillow's storage per pixel: 8-bit single-band modes 1 byte, 16-bit grey 2, and 4 for
# everything else (multi-band 8-bit modes are padded to 4 bytes, RGB included).
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_WIDE_PIXEL_BYTES = 4
# Marker segments walked while counting scans: a photo has 10-30 (APPn, DQT, SOF, DHT
# before each scan), so a few per allowed scan plus room for metadata.
JPEG_SEGMENTS_PER_SCAN = 4
JPEG_METADATA_SEGMENTS = 256
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker inside entropy-coded data
_SOS, _EOI = 0xDA, 0xD9
_ROWS_PER_BAND_PIXELS = 1 << 20  # bit-depth scaling works on bands of about a megapixel


@dataclass(frozen=True)
class ImageLimits:
    # The defaults are the serving settings' (SM_VISION_MAX_IMAGE_PIXELS, _MAX_ASPECT_RATIO, _MAX_DECODE_BYTES,
    # _MAX_JPEG_SCANS), written once in container/serving.py; training decodes under the same caps.
    max_pixels: int = ServeConfig.max_image_pixels  # width * height; a 10k x 10k image is refused before decoding
    max_aspect_ratio: float = ServeConfig.max_aspect_ratio  # long side / short side
    # JPEG only: decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at
    # least this many pixels (0: full size). Serving sets twice the model's resize size.
    draft_min_side: int = 0
    # Bytes the decoded frame (and a multi-scan JPEG's coefficient buffer) may take; None:
    # what a max_pixels RGB frame takes (frame_bytes("RGB", ...)), set in __post_init__.
    max_decode_bytes: int | None = ServeConfig.max_decode_bytes
    max_jpeg_scans: int = ServeConfig.max_jpeg_scans  # SOS markers; encoders write 1-3 (baseline) or about 10 (progressive)
    formats: tuple[str, ...] = ALLOWED_FORMATS  # Pillow format names that are opened at all

    def __post_init__(self):
        if self.max_decode_bytes is None:
            object.__setattr__(self, "max_decode_bytes", frame_bytes("RGB", self.max_pixels, 1))


class ImageRejected(ValueError):
    """An image we will not turn into model input; the message names the limit."""


class ImageTooLarge(ImageRejected):
    """Over the pixel, aspect-ratio, decode-bytes or JPEG-scan limit."""


class ImageUnsupported(ImageRejected):
    """Readable, but in a form (format, mode, value range) we do not convert."""


class ImageUnreadable(ImageRejected):
    """Not an image, or corrupt/truncated data."""


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, once it passed the checks that need no pixels."""

    format: str
    width: int
    height: int
    mode: str
    decode_bytes: int  # the frame as Pillow stores it (JPEG coefficients not included)


def check_geometry(width: int, height: int, limits: ImageLimits) -> None:
    """Refuse sizes whose decoding or resizing would allocate without bound."""
    if width < 1 or height < 1:
        raise ImageUnreadable(f"image is {width}x{height} pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels, above the limit of {limits.max_pixels} pixels")
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageTooLarge(
            f"image is {width}x{height} pixels: aspect ratio {ratio:.0f}:1 is above the limit of {limits.max_aspect_ratio:g}:1"
        )


def frame_bytes(mode: str, width: int, height: int) -> int:
    """Bytes Pillow allocates for a decoded width x height frame in `mode`."""
    return width * height * _PIXEL_BYTES.get(mode, _WIDE_PIXEL_BYTES)


def check_decode_bytes(mode: str, width: int, height: int, limits: ImageLimits, extra: int = 0, what: str = "") -> int:
    """The frame's bytes (+ extra), or ImageTooLarge when they exceed the budget."""
    total = frame_bytes(mode, width, height) + extra
    if total > limits.max_decode_bytes:
        raise ImageTooLarge(
            f"decoding this {width}x{height} {mode}{what} image takes {total:,} bytes, above the limit of {limits.max_decode_bytes:,} bytes"
        )
    return total


# --- JPEG structure ------------------------------------------------------------------


def count_jpeg_scans(data: bytes, limit: int) -> int:
    """SOS markers of the JPEG in data (its first image: an MPO's later pictures are
    not decoded), walking the marker segments by their lengths and skipping
    entropy-coded data marker to marker, so bytes inside a segment (a quantisation
    table, EXIF, a thumbnail) are never mistaken for markers. ImageTooLarge past
    `limit` scans or a few segments per allowed scan; truncated data ends the count
    (the decoder reports it)."""
    size, pos, scans, segments = len(data), 2, 0, 0
    max_segments = JPEG_METADATA_SEGMENTS + JPEG_SEGMENTS_PER_SCAN * limit
    while pos + 1 < size:
        if data[pos] != 0xFF:
            raise ImageUnreadable("JPEG data has bytes between its marker segments")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        segments += 1
        if segments > max_segments:
            raise ImageTooLarge(f"JPEG has more than {max_segments} marker segments")
        if marker == _EOI:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            pos += 2
            continue
        if pos + 3 >= size:
            break
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
        if marker == _SOS:
            scans += 1
            if scans > limit:
                raise ImageTooLarge(f"JPEG has more than {limit} scans (progressive scan bomb); encoders write at most a few dozen")
            found = _JPEG_MARKER.search(data, pos)  # the entropy-coded data ends at the next marker
            if found is None:
                break
            pos = found.start()
    return scans


def _jpeg_coefficient_bytes(image: Image.Image) -> int:
    """libjpeg's whole-image coefficient buffer (multi-scan files): 2 bytes per DCT
    coefficient, 64 per 8x8 block, every component at its own sampling."""
    layers = getattr(image, "layer", None) or [(0, 1, 1, 0)] * len(image.getbands())
    h_max = max(layer[1] for layer in layers) or 1
    v_max = max(layer[2] for layer in layers) or 1
    width, height = image.size
    total = 0
    for _, h, v, _ in layers:
        blocks_wide = math.ceil(math.ceil(width * h / h_max) / 8)
        blocks_high = math.ceil(math.ceil(height * v / v_max) / 8)
        total += blocks_wide * blocks_high * 64 * 2
    return total


# --- opening ---------------------------------------------------------------------------


def _read(source, count: int = -1) -> bytes:
    """The first `count` bytes of source (all: -1), a file's position kept."""
    if isinstance(source, bytes):
        return source if count < 0 else source[:count]
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return file.read(count)
    if not hasattr(source, "seek"):
        return bytes(source if count < 0 else source[:count])  # bytearray, memoryview
    position = source.seek(0, os.SEEK_CUR)
    source.seek(0)  # Image.open read from it, and formats are recognised by their first bytes
    data = source.read(count)
    source.seek(position)
    return data


def _refused_format(head: bytes) -> str | None:
    for magic, name in _REFUSED_MAGIC:
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "ISO media (HEIF/AVIF/MP4)")
    return None


def _formats_text(formats: tuple[str, ...]) -> str:
    names = [{"WEBP": "WebP"}.get(name, name) for name in formats if name not in JPEG_FORMATS[1:]]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _open(source, limits: ImageLimits) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_geometry decides
            return Image.open(source, formats=list(limits.formats))
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"image refused as a decompression bomb: {err}") from None
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - every decoder failure on foreign bytes means the same
        pass
    try:
        refused = _refused_format(_read(source, 16))
    except OSError:
        refused = None
    if refused:
        raise ImageUnsupported(f"{refused} images are not accepted: send {_formats_text(limits.formats)}")
    raise ImageUnreadable(f"data is not a {_formats_text(limits.formats)} image Pillow can read")


def _header_checks(image: Image.Image, limits: ImageLimits) -> ImageInfo:
    width, height = image.size
    check_geometry(width, height, limits)
    used = check_decode_bytes(image.mode, width, height, limits)
    return ImageInfo(image.format, width, height, image.mode, used)


def probe(source, limits: ImageLimits) -> ImageInfo:
    """The checks that need only the header (format, geometry, the frame's decode
    bytes), for scanning many files cheaply; load_rgb also counts JPEG scans and
    adds their coefficient buffer. ImageRejected when a check fails."""
    if isinstance(source, (bytes, bytearray)) and not source:
        raise ImageUnreadable("empty image")
    with _open(source, limits) as image:
        return _header_checks(image, limits)


def load_rgb(source, limits: ImageLimits) -> Image.Image:
    """Open source (bytes, a path or a binary file), check format, size, JPEG scans and
    decode bytes from the header, decode it, stand it upright and return it as 8-bit
    RGB; ImageRejected otherwise."""
    if isinstance(source, (bytes, bytearray)) and not source:
        raise ImageUnreadable("empty image")
    with _open(source, limits) as image:
        info = _header_checks(image, limits)
        if info.format in JPEG_FORMATS:
            scans = count_jpeg_scans(_read(source), limits.max_jpeg_scans)
            if limits.draft_min_side:
                image.draft("RGB", (limits.draft_min_side, limits.draft_min_side))
            if scans > 1:
                coefficients = _jpeg_coefficient_bytes(image)
                check_decode_bytes(image.mode, *image.size, limits, coefficients, f" {scans}-scan JPEG")
        try:
            image.load()
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data, any decoder
            raise ImageUnreadable(f"cannot decode image: {type(err).__name__}") from None
        orientation = exif_orientation(image)
        rgb = to_rgb(image)
    if rgb is not image:
        image.close()  # free the decoded frame before the transposed copy is made
    return upright(rgb, orientation)


# --- conversion --------------------------------------------------------------------------

_SIXTEEN_BIT_TO_EIGHT = ((np.arange(65536, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)  # == rint(v * 255 / 65535)


def _bands(image: Image.Image):
    """(top, bottom, rows as an array) for bands of about a megapixel."""
    width, height = image.size
    rows = max(1, _ROWS_PER_BAND_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        yield top, bottom, np.asarray(image.crop((0, top, width, bottom)))


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    if image.mode == "I":  # Pillow's 32-bit widening of 16-bit data: the range must still be 16-bit
        low, high = image.getextrema()
        if low < 0 or high > 65535:
            raise ImageUnsupported(f"{image.mode} image has values outside 0..65535; only 8- and 16-bit integer images are supported")
    out = np.empty((image.height, image.width), dtype=np.uint8)
    for top, bottom, rows in _bands(image):
        out[top:bottom] = _SIXTEEN_BIT_TO_EIGHT[rows]
    return Image.fromarray(out)


def _float_to_l(image: Image.Image) -> Image.Image:
    out = np.empty((image.height, image.width), dtype=np.uint8)
    for top, bottom, rows in _bands(image):
        if not np.isfinite(rows).all() or (rows.size and (rows.min() < 0 or rows.max() > 1)):
            raise ImageUnsupported("float image has values outside [0, 1] (or NaN); send floats in [0, 1] or an 8/16-bit image")
        out[top:bottom] = np.rint(rows * np.float32(255.0))
    return Image.fromarray(out)


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB with its value range scaled, not clipped (the image
    itself when it already is)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        image = _sixteen_bit_to_l(image)
    elif mode == "F":
        image = _float_to_l(image)
    try:
        return image.convert("RGB")
    except ValueError:
        raise ImageUnsupported(f"image mode {mode} cannot be converted to RGB") from None


def array_to_rgb(frame: np.ndarray, limits: ImageLimits) -> Image.Image:
    """A uint8 HxW, HxWx1, HxWx3 or HxWx4 array as RGB, with the same size checks."""
    check_geometry(frame.shape[1], frame.shape[0], limits)
    if frame.ndim == 3 and frame.shape[-1] == 1:
        frame = frame[..., 0]
    return Image.fromarray(frame).convert("RGB")

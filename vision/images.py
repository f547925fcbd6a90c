"""Untrusted image bytes -> an upright 8-bit RGB PIL image, the same way for training
and serving (serve.codec calls this too), so both see the same pixels.

What it guards against, in this order:
- size: width x height and the aspect ratio are checked from the header, before any
  pixel is decoded. The eval transform resizes the *short* side (Resize(256)), so a
  16000x1 image would become 256 x 4 million pixels: the aspect-ratio cap is what
  bounds the resized size (at most resize x resize*ratio pixels).
- orientation: the EXIF Orientation tag is applied, so phone photos are upright.
- bit depth: 16-bit images are scaled to 8 bits (Pillow's convert clips them: a
  16-bit grayscale PNG would come out all white), float images must hold [0, 1] and
  are scaled by 255 (convert would round them to black); other values are refused.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from container.serving import ServeConfig


@dataclass(frozen=True)
class ImageLimits:
    # The defaults are the serving settings' (SM_VISION_MAX_IMAGE_PIXELS, SM_VISION_MAX_ASPECT_RATIO),
    # written once in container/serving.py; training decodes under the same caps.
    max_pixels: int = ServeConfig.max_image_pixels  # width * height; a 10k x 10k image is refused before decoding
    max_aspect_ratio: float = ServeConfig.max_aspect_ratio  # long side / short side
    # JPEG only: decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at
    # least this many pixels (0: full size). Serving sets twice the model's resize size.
    draft_min_side: int = 0


class ImageRejected(ValueError):
    """An image we will not turn into model input; the message names the limit."""


class ImageTooLarge(ImageRejected):
    """Over the pixel or aspect-ratio limit."""


class ImageUnsupported(ImageRejected):
    """Readable, but in a form (mode, value range) we cannot convert faithfully."""


class ImageUnreadable(ImageRejected):
    """Not an image, or corrupt/truncated data."""


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


def _scaled(values: np.ndarray, full_scale: float) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image as 8-bit RGB with its value range scaled, not clipped."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageUnsupported(f"{mode} image has values outside 0..65535; only 8- and 16-bit integer images are supported")
        image = _scaled(values, 65535.0)  # "I" (32-bit int) is how Pillow widens 16-bit data
    elif mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all() or (values.size and (values.min() < 0 or values.max() > 1)):
            raise ImageUnsupported("float image has values outside [0, 1] (or NaN); send floats in [0, 1] or an 8/16-bit image")
        image = _scaled(values, 1.0)
    try:
        return image.convert("RGB")
    except ValueError:
        raise ImageUnsupported(f"image mode {mode} cannot be converted to RGB") from None


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - malformed EXIF: keep the pixels as stored
        return image


def load_rgb(source, limits: ImageLimits) -> Image.Image:
    """Open source (bytes, a path or a binary file), check its size from the header,
    decode it, stand it upright and return it as 8-bit RGB; ImageRejected otherwise."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageUnreadable("empty image")
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_geometry decides
            image = Image.open(source)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"image refused as a decompression bomb: {err}") from None
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - every decoder failure on foreign bytes means the same
        raise ImageUnreadable("data is not an image Pillow can read") from None
    with image:
        width, height = image.size
        check_geometry(width, height, limits)
        if limits.draft_min_side and image.format == "JPEG":
            image.draft("RGB", (limits.draft_min_side, limits.draft_min_side))
        try:
            image.load()
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data, any decoder
            raise ImageUnreadable(f"cannot decode image: {type(err).__name__}") from None
        return to_rgb(_upright(image))


def array_to_rgb(frame: np.ndarray, limits: ImageLimits) -> Image.Image:
    """A uint8 HxW, HxWx1, HxWx3 or HxWx4 array as RGB, with the same size checks."""
    check_geometry(frame.shape[1], frame.shape[0], limits)
    if frame.ndim == 3 and frame.shape[-1] == 1:
        frame = frame[..., 0]
    return Image.fromarray(frame).convert("RGB")

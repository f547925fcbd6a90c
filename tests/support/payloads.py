"""Request bodies for tests: encoded images and .npy arrays (Pillow and numpy only)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def image_bytes(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def png_bytes(image: Image.Image | None = None, size: tuple[int, int] = (40, 30), colour=(10, 200, 30)) -> bytes:
    """`image` as PNG, or a plain `size` image of `colour`."""
    return image_bytes(image if image is not None else Image.new("RGB", size, colour), "PNG")


def jpeg_bytes(image: Image.Image, quality: int = 95) -> bytes:
    return image_bytes(image, "JPEG", quality=quality)


def npy_bytes(array, allow_pickle: bool = False) -> bytes:
    """`array` as an .npy file; allow_pickle=True writes object arrays (as pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=allow_pickle)
    return buffer.getvalue()

"""Per-image statistics for data-quality monitoring, from the decoded upright RGB image
(what vision.images.load_rgb returns, so the same pixels the model sees).

    width, height   pixels, after EXIF orientation
    aspect_ratio    width / height
    brightness      mean luma (ITU-R 601, Pillow's "L"), 0 (black) .. 1 (white)
    contrast        RMS contrast: the standard deviation of luma, 0 .. 0.5
    sharpness       variance of the 4-neighbour Laplacian of luma (0..1 scale), measured
                    at most SHARPNESS_MAX_SIDE pixels on the short side: blur lowers it,
                    noise and fine detail raise it
    format          the container format Pillow names (PNG, JPEG, ...), NPY for arrays

Numpy and Pillow only: no torch, so host code can compute them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

NUMERIC = ("width", "height", "aspect_ratio", "brightness", "contrast", "sharpness")
# Large photos are measured at this short side: the Laplacian of a 4000-pixel photo
# costs ~50 ms, and downscaling averages away sensor noise that is not blur.
SHARPNESS_MAX_SIDE = 512


@dataclass(frozen=True)
class ImageStats:
    width: int
    height: int
    aspect_ratio: float
    brightness: float
    contrast: float
    sharpness: float
    format: str

    def numeric(self) -> tuple[float, ...]:
        return tuple(float(getattr(self, name)) for name in NUMERIC)


def laplacian_variance(luma: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels (0 below 3x3)."""
    if luma.shape[0] < 3 or luma.shape[1] < 3:
        return 0.0
    centre = luma[1:-1, 1:-1]
    laplacian = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * centre
    return float(laplacian.var())


def measure(image: Image.Image, format: str) -> ImageStats:
    """The statistics of one decoded RGB image."""
    width, height = image.size
    gray = image.convert("L")
    luma = np.asarray(gray, dtype=np.float32) / 255.0
    short = min(width, height)
    if short > SHARPNESS_MAX_SIDE:
        scale = SHARPNESS_MAX_SIDE / short
        small = gray.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX)
        sharp_luma = np.asarray(small, dtype=np.float32) / 255.0
    else:
        sharp_luma = luma
    return ImageStats(
        width=width,
        height=height,
        aspect_ratio=width / height,
        brightness=float(luma.mean()),
        contrast=float(luma.std()),
        sharpness=laplacian_variance(sharp_luma),
        format=format,
    )


def container_format(data: bytes) -> str:
    """The format named in an encoded image's header ("UNKNOWN" when Pillow cannot tell)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format or "UNKNOWN"
    except Exception:  # noqa: BLE001 - any reader failure: the decoder reports the real error
        return "UNKNOWN"

"""Traffic for monitoring tests and benchmarks: scikit-learn's digits as the images a
client sends, and the shifts a monitor must notice (Pillow and numpy only).

    digit_image(d)            the 32x32 digit as a grayscale PNG-able image
    SHIFTS[name](images, rng) the same window, shifted: blurred, brightened, rotated
    foreign(count, rng)       crops of scikit-learn's two sample photos, digit-sized
    class_prior(digits, rng, count, keep)   a window of only some classes
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageFilter

from tests.support.digits import Digit

SIZE = 32  # the digits' side (8x8 scans enlarged 4x)


def digit_image(digit: Digit) -> Image.Image:
    return Image.fromarray(digit.pixels, "L")


def blurred(image: Image.Image) -> Image.Image:
    """An out-of-focus camera: strokes smeared over a few pixels."""
    return image.filter(ImageFilter.GaussianBlur(1.5))


def brightened(image: Image.Image) -> Image.Image:
    """An overexposed camera: every pixel 80 levels brighter (black becomes grey)."""
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + 80, 0, 255).astype(np.uint8), "L")


def rotated(image: Image.Image) -> Image.Image:
    """A camera mounted sideways: no image statistic changes, what the model sees does."""
    return image.rotate(90)


SHIFTS = {"blur": blurred, "brightness": brightened, "rotation": rotated}


def foreign(count: int, rng: random.Random) -> list[Image.Image]:
    """Images of something else: random grayscale crops of china.jpg and flower.jpg,
    scaled to the digits' size (same size, mode and format, so only content differs)."""
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(name)).convert("L") for name in ("china.jpg", "flower.jpg")]
    crops = []
    for _ in range(count):
        photo = rng.choice(photos)
        side = rng.randint(48, 200)
        left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
        crops.append(photo.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    return crops


def class_prior(digits: list[Digit], rng: random.Random, count: int, keep: tuple[int, ...] = (0, 1)) -> list[Digit]:
    """`count` digits drawn (with replacement) from those of the `keep` classes only."""
    kept = [digit for digit in digits if digit.label in keep]
    return [rng.choice(kept) for _ in range(count)]

"""The torch-free preprocessing (vision.engines.preprocess) against the torch transform
the server uses (vision.presets.eval_transform): same output size, crop and normalization,
pixels within one 8-bit level (Pillow's antialiased resize vs torchvision's)."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from vision.engines.preprocess import EvalPreprocess, center_crop_box, resized_size
from vision.presets import IMAGENET_MEAN, IMAGENET_STD, eval_resize_size, eval_transform

# One 8-bit level, measured back from normalized floats (float32 rounding adds ~1e-6).
ONE_LEVEL = 1.001


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth shading, hard-edged shapes, fine noise and a blur: the structures a resize
    filter treats differently (flat areas, edges, texture)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([127 + 100 * np.sin(x / (7 + 11 * c) + y / (13 + 5 * c) + c) for c in range(3)], axis=-1)
    noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = (x0, y0, x0 + int(rng.integers(2, max(3, width // 3))), y0 + int(rng.integers(2, max(3, height // 3))))
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image.filter(ImageFilter.GaussianBlur(0.7)) if seed % 2 else image


def digit_like(seed: int) -> Image.Image:
    """An 8x8 grey scan upscaled to 32 px, as the digits benchmark feeds the model."""
    pixels = (np.random.default_rng(seed).integers(0, 17, (8, 8)) * (255 / 16)).astype(np.uint8)
    return Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB")


def eight_bit_diff(image: Image.Image, image_size: int, interpolation: str = "bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD) -> float:
    resize = eval_resize_size(image_size)
    expected = eval_transform(image_size, resize, mean, std, interpolation)(image).numpy()
    got = EvalPreprocess(image_size, resize, mean, std, interpolation)(image)
    assert got.shape == expected.shape == (3, image_size, image_size)
    assert got.dtype == np.float32
    return float((np.abs(got - expected) * np.asarray(std, dtype=np.float32)[:, None, None] * 255).max())


@pytest.mark.parametrize(
    ("width", "height", "image_size"),
    [(640, 427, 224), (427, 640, 224), (1001, 999, 224), (300, 300, 224), (257, 700, 224), (120, 90, 224), (37, 41, 32)],
)
def test_numpy_preprocessing_matches_the_torch_transform_within_one_level(width, height, image_size):
    for seed in (0, 1):
        assert eight_bit_diff(photo_like(width, height, seed), image_size) <= ONE_LEVEL


@pytest.mark.parametrize("seed", range(4))
def test_digit_sized_upscales_match(seed):
    assert eight_bit_diff(digit_like(seed), 32) <= ONE_LEVEL


def test_bicubic_and_custom_normalization_match():
    image = photo_like(500, 380, 3)
    assert eight_bit_diff(image, 224, "bicubic") <= ONE_LEVEL
    assert eight_bit_diff(image, 96, "bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)) <= ONE_LEVEL


def test_most_values_are_identical_not_just_close():
    image = photo_like(640, 427, 0)
    expected = eval_transform(224)(image).numpy()
    got = EvalPreprocess(224, 256, IMAGENET_MEAN, IMAGENET_STD)(image)
    levels = np.abs(got - expected) * np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None] * 255
    assert (levels > 0.5).mean() < 0.05


def test_output_size_and_crop_follow_torchvision():
    assert resized_size(640, 427, 256) == (383, 256)  # int(256 * 640 / 427) = 383
    assert resized_size(427, 640, 256) == (256, 383)
    assert resized_size(300, 300, 256) == (256, 256)
    assert center_crop_box(383, 256, 224) == (80, 16, 304, 240)  # round(79.5) = 80, round(16.0) = 16
    assert center_crop_box(257, 257, 224) == (16, 16, 240, 240)  # round(16.5) = 16: Python rounds half to even


def test_crop_then_normalize_equals_the_whole_and_batches():
    prep = EvalPreprocess(64, 73, IMAGENET_MEAN, IMAGENET_STD)
    images = [photo_like(90, 70, s) for s in range(3)]
    crops = np.stack([prep.crop(image) for image in images])
    assert crops.dtype == np.uint8 and crops.shape == (3, 64, 64, 3)
    np.testing.assert_array_equal(prep.normalize(crops), np.stack([prep(image) for image in images]))


def test_from_spec_and_refusals():
    class Spec:
        image_size, resize_size, mean, std, interpolation = 32, 37, [0.5] * 3, [0.5] * 3, "bilinear"

    assert EvalPreprocess.from_spec(Spec()) == EvalPreprocess(32, 37, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="supports bilinear, bicubic"):
        EvalPreprocess(32, 37, IMAGENET_MEAN, IMAGENET_STD, "nearest")
    with pytest.raises(ValueError, match="below image_size"):
        EvalPreprocess(32, 30, IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(ValueError, match="RGB"):
        EvalPreprocess(32, 37, IMAGENET_MEAN, IMAGENET_STD).crop(Image.new("L", (40, 40)))

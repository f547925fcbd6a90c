"""The evaluation preprocessing without torch: what vision.presets.eval_transform does to
an RGB PIL image, in PIL and numpy.

eval_transform is PILToTensor -> Resize(short side, antialias) -> CenterCrop ->
ToDtype(float32, scale) -> Normalize. torchvision's antialiased uint8 resize was written to
match Pillow's, so Pillow's own resize gives the same pixels to within one 8-bit level
(tests/unit/test_engines_preprocess.py measures it on real photos); the crop offsets,
the output-size rule and the normalization below are torchvision's, written out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# vision.presets takes torchvision's InterpolationMode values; these are the ones Pillow
# implements with the same (antialiased) filters.
PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """torchvision's Resize(int) output size: the short side becomes `short_side`, the long
    side scales with it and is truncated (int(), as torchvision does)."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision's CenterCrop offsets: round((side - crop) / 2) with Python's round."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


@dataclass(frozen=True)
class EvalPreprocess:
    """Image -> float32 CHW model input, in two steps so the uint8 crop can be stored
    (the calibration sample) and normalized later."""

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.interpolation not in PIL_FILTERS:
            raise ValueError(f"interpolation={self.interpolation!r}: the torch-free preprocessing supports {', '.join(PIL_FILTERS)}")
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} is below image_size {self.image_size}: nothing to center-crop")

    @classmethod
    def from_spec(cls, spec) -> EvalPreprocess:
        """From a vision.artifact.ModelSpec (anything with its preprocessing fields)."""
        return cls(spec.image_size, spec.resize_size, tuple(spec.mean), tuple(spec.std), spec.interpolation)

    def crop(self, image: Image.Image) -> np.ndarray:
        """An RGB image resized and center-cropped: uint8, HxWx3."""
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        width, height = resized_size(*image.size, self.resize_size)
        resized = image.resize((width, height), PIL_FILTERS[self.interpolation])
        return np.asarray(resized.crop(center_crop_box(width, height, self.image_size)))

    def normalize(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops, HxWx3 or NxHxWx3 -> float32 CHW or NCHW, scaled to [0, 1] and
        normalized by the spec's mean and std (ToDtype(scale=True) + Normalize)."""
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        scaled = crops.astype(np.float32) / np.float32(255.0)
        normalized = (scaled - mean) / std
        return np.ascontiguousarray(np.moveaxis(normalized, -1, -3))

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.normalize(self.crop(image))

"""Image transforms, shared by training and serving so both see the same pixels.

Like torchvision's references/classification presets: random-resized crop + flip
for training, resize + center crop for evaluation, both ending in a normalized float
tensor. Inputs are PIL images already converted to RGB.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_resize_size(image_size: int) -> int:
    # The standard 256/224 ratio, so a 224 crop comes from a 256 resize.
    return int(round(image_size * 256 / 224))


def _interpolation(name: str) -> v2.InterpolationMode:
    return v2.InterpolationMode(name)


def train_transform(image_size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bilinear"):
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(image_size, interpolation=_interpolation(interpolation), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def eval_transform(image_size: int, resize_size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bilinear"):
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(resize_size or eval_resize_size(image_size), interpolation=_interpolation(interpolation), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )

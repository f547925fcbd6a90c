"""Image transforms, shared by training and serving so both see the same pixels.

Like torchvision's references/classification presets: random-resized crop + flip
for training, resize + center crop for evaluation, both ending in a normalized float
tensor. Inputs are PIL images already converted to RGB.

A timm model carries its own pretrained config (input size, mean/std, interpolation,
crop percentage and mode). `preprocessing_for` reads it, the trainer stores it in the
ModelSpec, and `eval_transform_for(spec)` evaluates with timm's own transform, so a timm
model is served exactly as timm evaluates it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2

from container import ConfigError

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


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its pixels: the ModelSpec fields of the same names."""

    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float | None
    crop_mode: str
    preprocess: str  # "torchvision" or "timm": whose eval transform reproduces it

    def spec_fields(self) -> dict:
        """Keyword arguments for vision.artifact.ModelSpec."""
        return asdict(self)


def preprocessing_for(arch: str, model: torch.nn.Module, image_size: int | None = None) -> Preprocessing:
    """A timm model's pretrained config (with `image_size` overriding its input size), or
    the ImageNet presets for torchvision models (`image_size` default 224)."""
    from vision.models import is_timm

    if not is_timm(arch):
        size = image_size or 224
        resize = eval_resize_size(size)
        return Preprocessing(size, resize, IMAGENET_MEAN, IMAGENET_STD, "bilinear", size / resize, "center", "torchvision")
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    _, height, width = config["input_size"]
    if height != width and image_size is None:
        raise ConfigError(f"arch={arch}: timm's input size is {height}x{width}; set image_size to train and serve it square")
    size = image_size or height
    crop_pct = float(config.get("crop_pct") or 0.875)
    return Preprocessing(
        image_size=size,
        resize_size=math.floor(size / crop_pct),  # as timm computes its scale size
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        interpolation=config.get("interpolation") or "bicubic",
        crop_pct=crop_pct,
        crop_mode=config.get("crop_mode") or "center",
        preprocess="timm",
    )


def eval_transform_for(spec):
    """The evaluation transform a ModelSpec (vision.artifact) describes: timm's own for
    preprocess="timm", the presets' otherwise."""
    if spec.preprocess == "timm":
        from timm.data import create_transform

        return create_transform(
            input_size=(3, spec.image_size, spec.image_size),
            is_training=False,
            interpolation=spec.interpolation,
            mean=tuple(spec.mean),
            std=tuple(spec.std),
            crop_pct=spec.crop_pct,
            crop_mode=spec.crop_mode,
        )
    return eval_transform(spec.image_size, spec.resize_size, spec.mean, spec.std, spec.interpolation)

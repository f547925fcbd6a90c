"""Images whose only object sits in one quadrant, for the Grad-CAM tests: a plain light
background with one shape of the shapes classes (train.synthetic) inside one quadrant,
nothing else. Pillow only, so the container tests can write them on the host."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from train.synthetic import SHAPE_CLASSES

CLASSES = list(SHAPE_CLASSES)


def quadrant_image(rng: random.Random, label: int, quadrant: int, size: int = 64, margin: int = 0) -> Image.Image:
    """A `size` x `size` image with one shape of class `label` inside `quadrant` (0 top-left,
    1 top-right, 2 bottom-left, 3 bottom-right), at least `margin` pixels from the
    image's outer edges (a centre crop may cut them off)."""
    image = Image.new("RGB", (size, size), tuple(rng.randint(190, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    half = size // 2
    room = half - margin  # the part of the quadrant a centre crop keeps
    extent = rng.randint(room * 2 // 5, room * 4 // 5)
    x0 = (quadrant % 2) * half + (0 if quadrant % 2 else margin) + rng.randint(0, room - extent)
    y0 = (quadrant // 2) * half + (0 if quadrant // 2 else margin) + rng.randint(0, room - extent)
    colour, shape = SHAPE_CLASSES[CLASSES[label]]
    box = (x0, y0, x0 + extent, y0 + extent)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0 + extent // 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=colour)
    return image


def write_quadrant_folder(root: Path, per_class: dict[str, int], size: int, margin: int = 0, seed: int = 0) -> list[tuple[Path, int, int]]:
    """An ImageFolder root/{split}/<class>/NNNN.png of quadrant images; returns
    (path, label, quadrant) of every image written."""
    rng = random.Random(seed)
    written = []
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                quadrant = rng.randrange(4)
                path = folder / f"{i:04d}.png"
                quadrant_image(rng, label, quadrant, size, margin).save(path)
                written.append((path, label, quadrant))
    return written

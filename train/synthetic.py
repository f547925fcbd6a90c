"""Small learnable image datasets made in code, for smoke tests and CI.

    python -m train.synthetic shapes DIR    # ImageFolder: DIR/{train,valid,test}/<class>/*.png
    python -m train.synthetic bins DIR      # bin-count style: DIR/images/*.jpg + DIR/metadata/*.json

Classes differ by colour and shape, so even a small CNN trained from scratch on a
CPU separates them within a few epochs. Needs only Pillow (no torch), so the host-side
test harness can use it too.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

SHAPE_CLASSES = {
    "red_circle": ((220, 40, 40), "circle"),
    "green_square": ((40, 190, 60), "square"),
    "blue_triangle": ((50, 70, 220), "triangle"),
}


def draw_shape(rng: random.Random, colour: tuple[int, int, int], shape: str, size: int) -> Image.Image:
    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    extent = rng.randint(size // 3, size * 2 // 3)
    x0 = rng.randint(0, size - extent)
    y0 = rng.randint(0, size - extent)
    jitter = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in colour)
    box = (x0, y0, x0 + extent, y0 + extent)
    if shape == "circle":
        draw.ellipse(box, fill=jitter)
    elif shape == "square":
        draw.rectangle(box, fill=jitter)
    else:
        draw.polygon([(x0 + extent // 2, y0), (x0, y0 + extent), (x0 + extent, y0 + extent)], fill=jitter)
    return image


def make_shapes(out: Path, per_class: dict[str, int] | None = None, size: int = 64, seed: int = 0) -> dict[str, int]:
    """ImageFolder tree out/{train,valid,test}/<class>/NNN.png; returns images per split."""
    per_class = per_class or {"train": 40, "valid": 12, "test": 12}
    rng = random.Random(seed)
    for split, count in per_class.items():
        for name, (colour, shape) in SHAPE_CLASSES.items():
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_shape(rng, colour, shape, size).save(folder / f"{i:04d}.png")
    return {split: count * len(SHAPE_CLASSES) for split, count in per_class.items()}


def make_bins(out: Path, count: int = 150, size: int = 64, seed: int = 0, max_quantity: int = 5) -> None:
    """Amazon-bin-style data: out/images/ID.jpg with N boxes drawn, and
    out/metadata/ID.json whose EXPECTED_QUANTITY is N (1..max_quantity)."""
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "metadata").mkdir(parents=True, exist_ok=True)
    cell = size // 3
    for i in range(count):
        quantity = i % max_quantity + 1
        image = Image.new("RGB", (size, size), (235, 235, 235))
        draw = ImageDraw.Draw(image)
        for slot in rng.sample(range(9), quantity):
            x, y = (slot % 3) * cell, (slot // 3) * cell
            draw.rectangle((x + 3, y + 3, x + cell - 3, y + cell - 3), fill=(30, 30, 160))
        image.save(out / "images" / f"{i:05d}.jpg", quality=95)
        metadata = {"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": quantity}
        (out / "metadata" / f"{i:05d}.json").write_text(json.dumps(metadata))


def make_image(class_name: str, size: int = 64, seed: int = 123) -> Image.Image:
    """One image of a shapes class, e.g. to send to a served model."""
    colour, shape = SHAPE_CLASSES[class_name]
    return draw_shape(random.Random(seed), colour, shape, size)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["shapes", "bins"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=40, help="shapes: training images per class")
    parser.add_argument("--count", type=int, default=150, help="bins: number of images")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind == "shapes":
        per_class = {"train": args.per_class, "valid": max(4, args.per_class // 3), "test": max(4, args.per_class // 3)}
        counts = make_shapes(args.out, per_class, args.size, args.seed)
        print(f"wrote {counts} images under {args.out}")
    else:
        make_bins(args.out, args.count, args.size, args.seed)
        print(f"wrote {args.count} images and metadata under {args.out}")


if __name__ == "__main__":
    main()

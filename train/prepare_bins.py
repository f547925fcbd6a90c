"""`train prepare-bins`: Amazon-bin-style images + metadata JSONs -> ImageFolder split.

    train prepare-bins --images DIR --metadata DIR --out DIR \\
        [--quantities 1-5] [--split 0.8,0.1,0.1] [--seed 0] [--link hardlink|symlink|copy]

Each image IMAGES/ID.jpg has METADATA/ID.json whose EXPECTED_QUANTITY (the number of
objects in the bin) is its class. Images whose quantity is in --quantities are split
per class (stratified, seeded) into OUT/{train,valid,test}/<quantity>/ID.jpg, which the
trainer reads as an ImageFolder. Files are hard-linked (no extra space); where that is
impossible (another filesystem) they are copied. Images with missing or unparseable
metadata are counted and reported, never fatal. Pure Python: no torch needed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from collections import Counter
from pathlib import Path

SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
QUANTITY_KEY = "EXPECTED_QUANTITY"
EXIT_USAGE = 2


def parse_quantities(text: str) -> list[int]:
    """'1-5' -> [1, 2, 3, 4, 5]; '1,3,5' and '0-2,7' work too."""
    values: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                low, high = (int(v) for v in part.split("-", 1))
                if low > high:
                    raise ValueError
                values.update(range(low, high + 1))
            else:
                values.add(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected quantities like 1-5 or 1,2,3") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected non-negative quantities like 1-5")
    return sorted(values)


def parse_split(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> fractions of train, valid, test (must sum to 1)."""
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three non-negative fractions train,valid,test summing to 1, e.g. 0.8,0.1,0.1")
    return parts  # type: ignore[return-value]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train prepare-bins", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of bin images (ID.jpg)")
    parser.add_argument("--metadata", type=Path, required=True, help="folder of metadata JSONs (ID.json)")
    parser.add_argument("--out", type=Path, required=True, help="ImageFolder root to create (train/valid/test)")
    parser.add_argument(
        "--quantities", type=parse_quantities, default=parse_quantities("1-5"), help="quantities kept as classes (default 1-5)"
    )
    parser.add_argument("--split", type=parse_split, default=(0.8, 0.1, 0.1), help="train,valid,test fractions (default 0.8,0.1,0.1)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed: the same seed gives the same split")
    parser.add_argument(
        "--link",
        choices=["hardlink", "symlink", "copy"],
        default="hardlink",
        help="how files reach the tree (hardlink falls back to copy across filesystems)",
    )
    return parser


def read_quantity(path: Path) -> int | str:
    """The image's EXPECTED_QUANTITY, or the reason it has none ('missing', 'unparseable',
    'no EXPECTED_QUANTITY')."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return "missing metadata"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "unparseable metadata"
    value = raw.get(QUANTITY_KEY) if isinstance(raw, dict) else None
    if isinstance(value, bool) or value is None:
        return f"no {QUANTITY_KEY}"
    try:
        return int(str(value).strip())
    except ValueError:
        return f"no {QUANTITY_KEY}"


def split_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Images per split for a class of n: floors, then the remainder by largest fraction
    left over (ties in train, valid, test order), so the counts always sum to n."""
    exact = [n * f for f in fractions]
    counts = [int(x) for x in exact]
    order = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign(by_class: dict[int, list[Path]], fractions: tuple[float, float, float], seed: int) -> dict[str, dict[int, list[Path]]]:
    """Seeded, stratified split: each class shuffled on its own and cut by split_counts."""
    rng = random.Random(seed)
    result: dict[str, dict[int, list[Path]]] = {split: {} for split in SPLITS}
    for quantity in sorted(by_class):
        images = sorted(by_class[quantity])
        rng.shuffle(images)
        start = 0
        for split, count in zip(SPLITS, split_counts(len(images), fractions), strict=False):
            result[split][quantity] = images[start : start + count]
            start += count
    return result


def place(source: Path, target: Path, link: str) -> str:
    """Put source at target; returns how ('hardlink', 'symlink' or 'copy')."""
    if link == "hardlink":
        try:
            os.link(source, target)
            return "hardlink"
        except OSError:
            pass  # another filesystem, or one without hard links: copy instead
    elif link == "symlink":
        target.symlink_to(source.resolve())
        return "symlink"
    shutil.copy2(source, target)
    return "copy"


def format_table(split: dict[str, dict[int, list[Path]]], quantities: list[int]) -> str:
    rows = [["quantity", *SPLITS, "total"]]
    for q in quantities:
        counts = [len(split[s].get(q, [])) for s in SPLITS]
        rows.append([str(q), *map(str, counts), str(sum(counts))])
    totals = [sum(len(v) for v in split[s].values()) for s in SPLITS]
    rows.append(["total", *map(str, totals), str(sum(totals))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths, strict=False))) for r in rows
    )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(sys.argv[1:] if argv is None else argv)
    for name in ("images", "metadata"):
        folder = getattr(args, name)
        if not folder.is_dir():
            print(f"error: --{name} {folder} is not a folder", file=sys.stderr)
            return EXIT_USAGE
    existing = [args.out / s for s in SPLITS if (args.out / s).exists() and any((args.out / s).iterdir())]
    if existing:
        print(f"error: {existing[0]} already has files; remove it or choose another --out", file=sys.stderr)
        return EXIT_USAGE

    wanted = set(args.quantities)
    by_class: dict[int, list[Path]] = {}
    skipped: Counter[str] = Counter()
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    for image in images:
        quantity = read_quantity(args.metadata / f"{image.stem}.json")
        if isinstance(quantity, str):
            skipped[quantity] += 1
        elif quantity not in wanted:
            skipped[f"quantity outside {format_quantities(args.quantities)}"] += 1
        else:
            by_class.setdefault(quantity, []).append(image)
    kept = sum(len(v) for v in by_class.values())
    if kept == 0:
        print(
            f"error: none of the {len(images)} images in {args.images} has a usable {QUANTITY_KEY} in {format_quantities(args.quantities)} "
            f"(skipped: {dict(skipped) or 'none'})",
            file=sys.stderr,
        )
        return EXIT_USAGE

    split = assign(by_class, args.split, args.seed)
    methods: Counter[str] = Counter()
    for split_name, classes in split.items():
        for quantity, files in classes.items():
            folder = args.out / split_name / str(quantity)
            folder.mkdir(parents=True, exist_ok=True)
            for source in files:
                methods[place(source, folder / source.name, args.link)] += 1

    print(f"{kept} of {len(images)} images -> {args.out} (seed {args.seed}, split {','.join(f'{f:g}' for f in args.split)})")
    print(format_table(split, args.quantities))
    if skipped:
        print("skipped: " + ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items())))
    else:
        print("skipped: none")
    print("files: " + ", ".join(f"{count} {how}" for how, count in sorted(methods.items())))
    return 0


def format_quantities(quantities: list[int]) -> str:
    if quantities == list(range(quantities[0], quantities[-1] + 1)) and len(quantities) > 1:
        return f"{quantities[0]}-{quantities[-1]}"
    return ",".join(map(str, quantities))


if __name__ == "__main__":
    sys.exit(main())

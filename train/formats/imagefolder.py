"""ImageFolder trees: one folder per class (torchvision's ImageFolder layout), and the
split folder names a channel may hold (train/ valid/ test/)."""

from __future__ import annotations

from pathlib import Path

from container import ConfigError
from train.formats.base import Sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TRAIN_NAMES = ("train", "training")
VALID_NAMES = ("valid", "validation", "val")
TEST_NAMES = ("test", "testing")


def first_existing(root: Path, names) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def list_image_folder(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, str]]]:
    """The class folders of an ImageFolder tree (sorted; with `classes` given, they must
    be among them) and every file under them as (path, class name), sorted."""
    if not root.is_dir():
        raise ConfigError(f"data directory {root} does not exist")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        loose = [p.name for p in root.iterdir() if p.is_file()][:3]
        hint = (
            f" (it holds files such as {loose}: images must sit in one folder per class)"
            if loose
            else " (it is empty: was the S3 prefix right?)"
        )
        raise ConfigError(f"{root} has no class folders{hint}")
    if classes is not None:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ConfigError(f"{root} has classes the training split lacks: {unknown[:10]}")
    files = [
        (path, name) for name in found for path in sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
    ]
    return found, files


def read(root: Path) -> list[Sample]:
    """Every file in the class folders, labelled with its folder's name (non-images too:
    the checks report them as unreadable, as the trainer's scan skips them)."""
    _, files = list_image_folder(root)
    return [Sample(str(path), (name,), key=path.relative_to(root).as_posix(), where=str(path)) for path, name in files]

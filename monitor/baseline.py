"""`monitor baseline`: compute a monitoring baseline for an existing model from any
image folder (models trained before baselines existed, or a baseline from other data),
and write it into the model directory (monitoring/, vision.artifact).

    monitor baseline --model DIR --data IMAGES [--max-images 5000]

IMAGES is an ImageFolder (one folder per class; a folder named like one of the model's
classes also measures the model's accuracy on it) or any folder of images, searched
recursively. Files the server's decoder refuses are skipped and counted.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from container import ConfigError
from container.monitoring import MonitorSettings
from vision import images, imagestats
from vision.baseline import DEFAULT_COMPONENTS, DEFAULT_REFERENCE_SIZE

log = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 5000


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monitor baseline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, type=Path, help="the model directory (model_spec.json, model.pt); monitoring/ is written into it"
    )
    parser.add_argument("--data", required=True, type=Path, help="an ImageFolder, or any folder of images")
    parser.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_IMAGES,
        help=f"a random sample of at most this many images (default {DEFAULT_MAX_IMAGES})",
    )
    parser.add_argument("--components", type=int, default=DEFAULT_COMPONENTS, help=f"PCA components kept (default {DEFAULT_COMPONENTS})")
    parser.add_argument(
        "--reference-size",
        type=int,
        default=DEFAULT_REFERENCE_SIZE,
        help=f"reference images kept for the MMD test (default {DEFAULT_REFERENCE_SIZE})",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def find_images(root: Path, classes: tuple[str, ...]) -> list[tuple[Path, int | None]]:
    """Every file under root (hidden ones aside), with its class index when its top
    folder is named like one of the model's classes."""
    if not root.is_dir():
        raise ConfigError(f"--data {root} is not a directory")
    index = {name: i for i, name in enumerate(classes)}
    found = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        label = index.get(relative.parts[0]) if len(relative.parts) > 1 else None
        found.append((path, label))
    if not found:
        raise ConfigError(f"--data {root} holds no files")
    return found


def decoded(files: list[tuple[Path, int | None]], limits: images.ImageLimits, skipped: list[str]) -> Iterator:
    for path, label in files:
        data = path.read_bytes()
        try:
            image = images.load_rgb(data, limits)
        except images.ImageRejected as err:
            skipped.append(f"{path}: {err}")
            continue
        yield image, imagestats.container_format(data), label


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from monitor.run import image_limits
    from vision.devices import select_device
    from vision.features import Embedder, compute_baseline

    for name in ("max_images", "components", "reference_size", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    settings = MonitorSettings.from_env(os.environ)
    embedder = Embedder.load(args.model, select_device(args.device), args.batch_size)
    files = find_images(args.data, embedder.classes)
    if len(files) > args.max_images:
        files = sorted(random.Random(args.seed).sample(files, args.max_images))
    skipped: list[str] = []
    info = {"source": f"monitor baseline --data {args.data}", "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    baseline = compute_baseline(
        embedder, decoded(files, image_limits(settings), skipped), info, args.components, args.reference_size, args.seed
    )
    for line in skipped[:10]:
        log.warning("skipped %s", line)
    baseline.info["skipped_files"] = len(skipped)
    baseline_id = baseline.save(args.model, settings.thresholds())
    accuracy = baseline.info.get("accuracy")
    log.info(
        "wrote the monitoring baseline %s to %s: %d images (%d skipped), %d PCA components of %d features, %d reference images%s",
        baseline_id,
        args.model / "monitoring",
        baseline.size,
        len(skipped),
        baseline.pca.k,
        baseline.pca.dim,
        len(baseline.reference),
        f", top-1 accuracy {accuracy['top1']:.3f} on {accuracy['images']} labelled images" if accuracy else "",
    )
    return 0

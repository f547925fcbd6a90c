"""What `train check-data` costs per 10k images: header-only (what the trainer runs at
start) and with every image decoded (--decode).

Writes N real-photo JPEGs (crops of scikit-learn's two sample photos, 300-640 px a side,
~50-150 KB each, like ImageNet's) as a class-folder tree in a temp dir, then times
train.check_data.check over them. Needs scikit-learn: run it in the unit-test image:

    docker run --rm -v $PWD:/src -w /src sagemaker-vision:unit python benchmarks/check_data/run.py --images 10000

Time it on a quiet machine: the check is one read, one SHA-256 and one header parse per
image (plus a decode with --decode), in a thread pool of one thread per CPU.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PIL import Image  # noqa: E402
from sklearn.datasets import load_sample_image  # noqa: E402

from train import check_data  # noqa: E402
from train.formats import plan  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=10)
    return parser


def write_photos(root: Path, count: int, classes: int) -> int:
    rng = random.Random(0)
    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    total = 0
    for i in range(count):
        photo = photos[i % 2]
        width, height = rng.randint(300, 640), rng.randint(300, 427)
        left, top = rng.randint(0, photo.width - width), rng.randint(0, photo.height - height)
        buffer = io.BytesIO()
        photo.crop((left, top, left + width, top + height)).save(buffer, "JPEG", quality=rng.randint(80, 95))
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.jpg").write_bytes(buffer.getvalue())
        total += buffer.tell()
    return total


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        size = write_photos(root, args.images, args.classes)
        print(f"{args.images} JPEGs, {size / 1e6:.0f} MB", flush=True)
        for decode in (False, True):
            started = time.perf_counter()
            samples = plan({}, train_dir=root).train.read()
            listed = time.perf_counter() - started
            report = check_data.check({"train": samples}, decode=decode)
            total = time.perf_counter() - started
            per_10k = total * 10_000 / args.images
            print(
                f"decode={decode}: {total:.1f}s ({listed:.1f}s listing), {per_10k:.1f}s per 10k images, fingerprint {report.fingerprint[:12]}"
            )


if __name__ == "__main__":
    main(get_args_parser().parse_args())

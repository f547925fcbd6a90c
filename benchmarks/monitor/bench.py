"""The monitor's throughput: captured images per second through decoding, image statistics
and the model, and the wall time of a whole run (checks and report included).

    docker run --rm -v $PWD:/src -w /src sagemaker-vision:latest \\
        python benchmarks/monitor/bench.py [--arch resnet50] [--images 400] [--size 640x480] [--format JPEG]

Runs inside the image (it needs torch). The model has random weights (no download) with
a 224-pixel eval transform; the baseline and the captures are smooth random photos of
--size, captured as base64 image bodies in Data Capture's layout. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from monitor import cli  # noqa: E402 - after the path insert
from vision import presets  # noqa: E402
from vision.artifact import ModelSpec  # noqa: E402
from vision.models import build_model  # noqa: E402

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--images", type=int, default=400, help="captured images in the window")
    parser.add_argument("--baseline-images", type=int, default=200)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the photos")
    parser.add_argument("--format", default="JPEG", choices=["JPEG", "PNG"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return parser


def photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour noise: compresses and decodes like a photo, not like flat colour."""
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": 90} if format == "JPEG" else {}))
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    model_dir = root / "model"
    model_dir.mkdir()
    torch.manual_seed(0)
    torch.save(build_model(args.arch, 10).state_dict(), model_dir / "model.pt")
    ModelSpec(args.arch, tuple(f"class{i}" for i in range(10)), 224, 256, presets.IMAGENET_MEAN, presets.IMAGENET_STD).save(model_dir)
    data = root / "data" / "images"
    data.mkdir(parents=True)
    for i in range(args.baseline_images):
        (data / f"{i:05d}.{args.format.lower()}").write_bytes(encoded(photo(rng, width, height), args.format))
    started = time.perf_counter()
    assert cli.main(["baseline", "--model", str(model_dir), "--data", str(root / "data")]) == 0
    baseline_s = time.perf_counter() - started

    capture_dir = root / "captures" / "bench" / "AllTraffic" / "2026" / "12" / "01" / "15"
    capture_dir.mkdir(parents=True)
    with (capture_dir / "capture.jsonl").open("w") as out:
        for i in range(args.images):
            body = base64.b64encode(encoded(photo(rng, width, height), args.format)).decode()
            when = (T0 + timedelta(seconds=i * 3600 / args.images)).strftime("%Y-%m-%dT%H:%M:%SZ")
            record = {
                "captureData": {
                    "endpointInput": {
                        "observedContentType": f"image/{args.format.lower()}",
                        "mode": "INPUT",
                        "data": body,
                        "encoding": "BASE64",
                    }
                },
                "eventMetadata": {"eventId": str(i), "inferenceTime": when},
                "eventVersion": "0",
            }
            out.write(json.dumps(record) + "\n")
    started = time.perf_counter()
    code = cli.main(
        [
            "--captures",
            str(root / "captures"),
            "--model",
            str(model_dir),
            "--out",
            str(root / "out"),
            "--start",
            "2026-12-01T15:00:00Z",
            "--end",
            "2026-12-01T16:00:00Z",
        ]
    )
    run_s = time.perf_counter() - started
    assert code == 0
    throughput = json.loads((root / "out" / "statistics.json").read_text())["sagemaker_vision"]["throughput"]
    result = {
        "arch": args.arch,
        "images": args.images,
        "size": args.size,
        "format": args.format,
        "torch_threads": torch.get_num_threads(),
        "images_per_second": throughput["images_per_second"],
        "run_seconds": round(run_s, 1),
        "baseline_images": args.baseline_images,
        "baseline_seconds": round(baseline_s, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

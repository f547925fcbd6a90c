"""What decoding in serve.decode_pool's worker processes costs per image, against
decoding in the calling thread (vision.images.load_rgb), for the serving benchmark's
two body sets: scikit-learn's china.jpg (640x427) and the 12-megapixel JPEG bench.py
makes from it (china.jpg upscaled to 4000x3000, quality 90).

    python benchmarks/serving/decode_pool.py                 # needs scikit-learn for china.jpg
    python benchmarks/serving/decode_pool.py --photo china.jpg --threads 1,4

For each image and thread count, the median and p90 wall time of one decode to an
HxWx3 uint8 array (what the eval transform's PILToTensor makes of the image):
    thread  np.asarray(vision.images.load_rgb(...)) in the calling thread
    pool    serve.decode_pool's decoded(): the worker's shared pixels, lent
    copy    serve.decode_pool's decode_array(): the same, copied out
with as many workers as calling threads. Run it on a quiet machine: the numbers are
per-image latencies of a few milliseconds.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from serve.decode_pool import DecodePool  # noqa: E402 (after the path insert)
from vision import images  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", type=Path, help="a JPEG to use instead of scikit-learn's china.jpg")
    parser.add_argument("--threads", default="1,4", help="comma-separated concurrent callers (default 1,4)")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    parser.add_argument("--draft", action="store_true", help="decode JPEGs at a reduced DCT scale (SM_VISION_JPEG_DRAFT)")
    return parser


def bodies(photo: Path | None) -> dict[str, bytes]:
    if photo is None:
        import sklearn.datasets

        photo = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
    small = photo.read_bytes()
    big = Image.open(io.BytesIO(small)).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    return {photo.name: small, "12mp.jpg": buffer.getvalue()}


def measure(decode, threads: int, seconds: float) -> list[float]:
    """Per-call wall times (ms) of `threads` callers decoding back to back."""
    times: list[list[float]] = [[] for _ in range(threads)]
    end = time.monotonic() + seconds

    def caller(out: list[float]) -> None:
        while time.monotonic() < end:
            start = time.perf_counter()
            decode()
            out.append((time.perf_counter() - start) * 1000)

    workers = [threading.Thread(target=caller, args=(out,)) for out in times]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [t for out in times for t in out]


def ways(pool: DecodePool, data: bytes, limits: images.ImageLimits) -> dict:
    def thread() -> None:
        np.asarray(images.load_rgb(data, limits))

    def lent() -> None:
        with pool.decoded(data, limits, time.monotonic() + 60) as pixels:
            pixels.shape  # noqa: B018 - the caller would hand the view to torch.from_numpy here

    def copied() -> None:
        pool.decode_array(data, limits, time.monotonic() + 60)

    return {"thread": thread, "pool": lent, "copy": copied}


def main(args: argparse.Namespace) -> None:
    limits = images.ImageLimits(draft_min_side=448 if args.draft else 0)
    print(f"{'image':10} {'threads':>7} {'way':>6} {'p50 ms':>8} {'p90 ms':>8} {'+p50 ms':>8} {'img/s':>8}")
    for name, data in bodies(args.photo).items():
        for threads in (int(t) for t in args.threads.split(",")):
            pool = DecodePool(threads).start()
            try:
                results = {}
                for way, decode in ways(pool, data, limits).items():
                    decode()  # warm
                    results[way] = measure(decode, threads, args.seconds)
            finally:
                pool.close()
            base = statistics.median(results["thread"])
            for way, times in results.items():
                p50, p90 = statistics.median(times), statistics.quantiles(times, n=10)[-1]
                print(f"{name:10} {threads:7d} {way:>6} {p50:8.2f} {p90:8.2f} {p50 - base:8.2f} {len(times) / args.seconds:8.1f}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())

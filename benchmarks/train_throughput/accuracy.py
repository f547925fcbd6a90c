"""Does bf16 autocast change what the trainer learns on a CPU? Final test accuracy of
`train` with amp=off and amp=bf16 on real data, same seed, same everything else.

    python3 benchmarks/train_throughput/accuracy.py [--image IMAGE] [--epochs 8]

Trains ResNet-18 with the image's own `train` on scikit-learn's handwritten digits
(1,797 real 8x8 scans upscaled to 32 px; stratified 80/20 split, the test fifth never
seen in training: benchmarks/serving/agreement.py writes the same data) once per
precision, and prints each run's final test accuracy and wall time. The rule for
`amp=auto` on CPUs: bf16 only if the speed benchmark (bench.py) gives >= 1.3x and the
accuracies here are within 1 point. Needs docker and scikit-learn on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "serving"))
from agreement import docker, make_digits  # noqa: E402 - the sibling benchmark's data and docker helper


def train(image: str, root: Path, amp: str, epochs: int) -> tuple[dict, float]:
    out = root / f"out-{amp}"
    for sub in ("model", "output"):
        (out / sub).mkdir(parents=True)
        os.chmod(out / sub, 0o777)
    mounts = ["-v", f"{root}/data:/opt/ml/input/data/training:ro", "-v", f"{out}/model:/opt/ml/model", "-v", f"{out}/output:/opt/ml/output"]
    started = time.monotonic()
    docker("run", "--rm", *mounts, image, "train", "--arch", "resnet18", "--image-size", "32", "--epochs", str(epochs), "--amp", amp)
    elapsed = time.monotonic() - started
    docker("run", "--rm", "--entrypoint", "chmod", "-v", f"{out}:/m", image, "-R", "a+rwX", "/m")
    return json.loads((out / "output" / "data" / "metrics.json").read_text())["final"], elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "sagemaker-vision:latest"))
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="train-accuracy-") as tmp:
        root = Path(tmp)
        make_digits(root)
        os.chmod(root, 0o777)
        results = {amp: train(args.image, root, amp, args.epochs) for amp in ("off", "bf16")}
    for amp, (final, elapsed) in results.items():
        print(f"amp={amp}: final {final['split']} accuracy {final['acc']:.4f}, macro F1 {final['macro_f1']:.4f}, {elapsed:.0f} s")
    gap = abs(results["bf16"][0]["acc"] - results["off"][0]["acc"]) * 100
    print(f"accuracy gap {gap:.2f} points (the rule allows 1); wall time bf16/off {results['bf16'][1] / results['off'][1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does serving in reduced precision change answers? Top-1 agreement with fp32 on real data.

    python3 benchmarks/serving/agreement.py [--image IMAGE] [--epochs 8]

Trains our ResNet-18 with the image's own `train` on scikit-learn's handwritten digits
(1,797 real 8x8 scans, upscaled to 32 px; a stratified 80/20 split, the test fifth never
seen in training), then runs the held-out images through the served classifier
(serve.engines.load_classifier: our decode, preprocessing, BatchNorm folding and
channels-last) once in fp32 and once in the precision `auto` picks on this CPU, with
the accuracy guard. Prints test accuracy of each, top-1 agreement (goal >= 99.5%) and
the largest probability difference. Then the same test images as 1600x1600 JPEGs,
decoded in full and in JPEG draft mode (SM_VISION_JPEG_DRAFT): accuracy of both and
their top-1 agreement. Needs docker, Pillow and scikit-learn on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COMPARE = r"""
import json, sys, torch
from pathlib import Path
from PIL import Image
from serve.engines import load_classifier
torch.set_num_threads(1)
root = Path(sys.argv[1])
files = sorted((root / "test").glob("*/*.png"))
results, classifiers = {}, {}
for name in ("fp32", "auto"):
    clf = classifiers[name] = load_classifier(root / "model", torch.device("cpu"), name)
    clf.warm_up()
    batch = torch.stack([clf.preprocess(Image.open(f).convert("RGB")) for f in files])
    probs = torch.cat([clf.probabilities(chunk) for chunk in batch.split(64)])
    guard = clf.guard
    results[name] = {"precision": clf.precision, "probs": probs,
                     "guard": None if guard is None else [guard.max_probability_diff, guard.decisive_flips, guard.bound]}
labels = torch.tensor([clf.classes.index(f.parent.name) for f in files])
# JPEG draft decoding (SM_VISION_JPEG_DRAFT) only acts on large JPEGs: each test image
# as a 1600x1600 JPEG, decoded in full and in draft mode down to twice the resize size.
import dataclasses, io
from vision.images import ImageLimits, load_rgb
full_limits = ImageLimits()
draft_limits = dataclasses.replace(full_limits, draft_min_side=2 * clf.spec.resize_size)
clf32 = classifiers["fp32"]
decoded = {"full": [], "draft": []}
draft_sizes = set()
for f in files:
    buffer = io.BytesIO()
    Image.open(f).convert("RGB").resize((1600, 1600), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    body = buffer.getvalue()
    decoded["full"].append(clf32.preprocess(load_rgb(body, full_limits)))
    small = load_rgb(body, draft_limits)
    draft_sizes.add(small.size)
    decoded["draft"].append(clf32.preprocess(small))
draft_top1 = {k: torch.cat([clf32.probabilities(c) for c in torch.stack(v).split(64)]).argmax(1) for k, v in decoded.items()}
ref, red = results["fp32"]["probs"], results["auto"]["probs"]
print("RESULT " + json.dumps({
    "images": len(files),
    "auto_precision": results["auto"]["precision"],
    "fp32_accuracy": float((ref.argmax(1) == labels).float().mean()),
    "auto_accuracy": float((red.argmax(1) == labels).float().mean()),
    "top1_agreement": float((ref.argmax(1) == red.argmax(1)).float().mean()),
    "max_probability_diff": float((ref - red).abs().max()),
    "guard_on_warm_up_inputs": results["auto"]["guard"],
    "jpeg_draft": {
        "decoded_size": sorted(draft_sizes),
        "full_decode_accuracy": float((draft_top1["full"] == labels).float().mean()),
        "draft_accuracy": float((draft_top1["draft"] == labels).float().mean()),
        "top1_agreement": float((draft_top1["full"] == draft_top1["draft"]).float().mean()),
    },
}))
"""


def make_digits(root: Path, size: int = 32) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    train_idx, test_idx = train_test_split(np.arange(len(pixels)), test_size=0.2, stratify=digits.target, random_state=0)
    for split, indices in (("train", train_idx), ("test", test_idx)):
        for i in indices:
            folder = root / "data" / split / f"digit_{digits.target[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i]).resize((size, size), Image.Resampling.BICUBIC).convert("RGB").save(folder / f"{i:04d}.png")


def docker(*args: str) -> str:
    docker_bin = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"
    result = subprocess.run([docker_bin, *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"docker {' '.join(args[:3])} ... failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "sagemaker-vision:latest"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/agreement.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agreement-") as tmp:
        root = Path(tmp)
        make_digits(root)
        (root / "model").mkdir()
        for path in (root, root / "model"):
            os.chmod(path, 0o777)
        mounts = ["-v", f"{root}/data:/opt/ml/input/data/training:ro", "-v", f"{root}/model:/opt/ml/model"]
        print(f"training resnet18 on digits for {args.epochs} epochs in {args.image}", flush=True)
        docker("run", "--rm", *mounts, args.image, "train", "--arch", "resnet18", "--image-size", "32", "--epochs", str(args.epochs))
        docker("run", "--rm", "--entrypoint", "chmod", "-v", f"{root}/model:/m", args.image, "-R", "a+rwX", "/m")
        output = docker(
            "run",
            "--rm",
            "-v",
            f"{root}/data/test:/d/test:ro",
            "-v",
            f"{root}/model:/d/model:ro",
            args.image,
            "python",
            "-c",
            COMPARE,
            "/d",
        )
    result = json.loads(output.split("RESULT ", 1)[1].splitlines()[0])
    print(
        f"digits test split, {result['images']} real images: fp32 accuracy {result['fp32_accuracy']:.4f}, "
        f"{result['auto_precision']} accuracy {result['auto_accuracy']:.4f}; top-1 agreement {result['top1_agreement']:.4f} "
        f"(goal >= 0.995), largest probability difference {result['max_probability_diff']:.4f}; "
        f"guard at warm-up (max diff, top-1 flips, bound): {result['guard_on_warm_up_inputs']}"
    )
    draft = result["jpeg_draft"]
    print(
        f"JPEG draft decoding, the same images as 1600x1600 JPEGs (decoded at {draft['decoded_size']}): full-decode accuracy "
        f"{draft['full_decode_accuracy']:.4f}, draft accuracy {draft['draft_accuracy']:.4f}, top-1 agreement {draft['top1_agreement']:.4f}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

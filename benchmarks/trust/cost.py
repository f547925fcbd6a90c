"""What an explained, TTA or calibrated answer costs next to a plain one, model side.

    python3 benchmarks/trust/cost.py --image IMAGE [--archs resnet18,resnet50] [--threads 1] [--rounds 40]

Runs inside the image, on the model as serving holds it (vision.models.build_model,
serve.model.fold_for_inference: BatchNorm folded, channels-last), at 224 pixels with
batch 1, in fp32 and in the precision `auto` picks on this CPU. Each round times, in
turn: a plain forward (softmax of the logits under inference_mode, the served path),
Grad-CAM (vision.explain: forward + head backward, logits included), Grad-CAM plus the
PNG overlay and the JSON-ready grid (vision.explain.overlay_png / describe), the
overlay alone at PNG compress levels 1 and 6, and flip TTA (vision.tta: one forward of
2 rows). Prints medians and ratios to the plain forward, the one-off Grad-CAM set-up
(tracing the graph) and the overlay's size. The input is scikit-learn's china.jpg
through the eval transform. Needs docker, Pillow and scikit-learn on the host.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = r"""
import statistics, sys, time
import torch
from PIL import Image
from serve.model import fold_for_inference
from vision import explain, precision, tta
from vision.models import build_model
from vision.presets import IMAGENET_MEAN, IMAGENET_STD, eval_transform

archs, threads, rounds = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
photo = Image.open("/data/photo.jpg").convert("RGB")
x = eval_transform(224)(photo)[None].contiguous(memory_format=torch.channels_last)
print(f"torch {torch.__version__}, {threads} thread(s), batch 1 at 224 px, {rounds} interleaved rounds, medians in ms")
for arch in archs:
    module = fold_for_inference(build_model(arch, 1000).eval(), arch)
    for name in ("fp32", "auto"):
        chosen = precision.choose(name, torch.device("cpu"))

        def plain(batch):
            with torch.inference_mode(), chosen.autocast():
                return torch.softmax(module(batch).float(), dim=1)

        start = time.perf_counter()
        cam = explain.GradCAM(module, x)
        setup = time.perf_counter() - start

        def gradcam():
            with chosen.autocast():
                e = cam(x)
            return torch.softmax(e.logits, dim=1), e

        def explained():
            probs, e = gradcam()
            png = explain.overlay_png(x[0], e.saliency[0], IMAGENET_MEAN, IMAGENET_STD)
            return probs, explain.describe(e, 0, [str(i) for i in range(1000)], png)

        _, e = gradcam()
        png1 = explain.overlay_png(x[0], e.saliency[0], IMAGENET_MEAN, IMAGENET_STD, compress_level=1)
        png6 = explain.overlay_png(x[0], e.saliency[0], IMAGENET_MEAN, IMAGENET_STD, compress_level=6)
        variants = {
            "plain": lambda: plain(x),
            "gradcam": gradcam,
            "gradcam+overlay+json": explained,
            "overlay png (level 1)": lambda: explain.overlay_png(x[0], e.saliency[0], IMAGENET_MEAN, IMAGENET_STD, compress_level=1),
            "overlay png (level 6)": lambda: explain.overlay_png(x[0], e.saliency[0], IMAGENET_MEAN, IMAGENET_STD, compress_level=6),
            "tta flip (2 rows)": lambda: tta.flip_averaged(plain, x),
        }
        for fn in variants.values():  # warm-up: allocations, oneDNN kernel choice
            fn(); fn()
        times = {k: [] for k in variants}
        for _ in range(rounds):
            for k, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - start) * 1000)
        base = statistics.median(times["plain"])
        print(f"\n{arch} {chosen.name}: Grad-CAM set-up {setup:.2f} s, map {cam.layer} {cam.grid[0]}x{cam.grid[1]}, "
              f"overlay {len(png1)} B at level 1, {len(png6)} B at level 6")
        for k, values in times.items():
            m = statistics.median(values)
            print(f"  {k:24s} {m:8.2f} ms  {m / base:5.2f}x plain")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="sagemaker-vision:latest")
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    from PIL import Image
    from sklearn.datasets import load_sample_image

    with tempfile.TemporaryDirectory() as tmp:
        Image.fromarray(load_sample_image("china.jpg")).save(Path(tmp) / "photo.jpg", quality=95)
        docker = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"
        command = [docker, "run", "--rm", "-v", f"{tmp}:/data:ro", args.image, "python", "-c", MEASURE]
        command += [args.archs, str(args.threads), str(args.rounds)]
        sys.exit(subprocess.run(command).returncode)


if __name__ == "__main__":
    main()

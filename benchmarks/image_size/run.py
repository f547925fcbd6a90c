"""The image's uncompressed size, its largest layers, and how it compares.

    python3 benchmarks/image_size/run.py [IMAGE] [--layers N] [--json FILE]

IMAGE defaults to sagemaker-vision:latest (build it with docker/build.sh first). Sizes
are docker's uncompressed sizes in decimal GB, as `docker images` prints them. The goal
is <= 8 GB; AWS's PyTorch deep learning containers are listed for comparison (their
approximate uncompressed sizes, GPU variants). Needs only the docker CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

GOAL_GB = 8.0
AWS_DLC_GB = {
    "AWS PyTorch DLC, training (GPU)": 28.0,
    "AWS PyTorch DLC, inference (GPU)": 14.0,
}


def docker_bin() -> str:
    found = os.environ.get("DOCKER") or ("/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker"))
    if not found:
        sys.exit("error: docker is not installed")
    return found


def docker(*args: str) -> str:
    result = subprocess.run([docker_bin(), *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def describe(step: str) -> str:
    """A history line without the build-arg prefix and secret-mount boilerplate."""
    if not step:
        return "(base image)"
    step = step.split("/bin/sh -c ", 1)[-1]
    if "pip install" in step:
        step = "RUN pip install" + step.split("pip install", 1)[1]
    return step


def measure(image: str, layers: int) -> dict:
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image).strip())
    history = []
    for line in docker("history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", image).splitlines():
        raw_size, _, created_by = line.partition("\t")
        history.append({"bytes": int(raw_size), "step": " ".join(created_by.split())})
    largest = sorted((h for h in history if h["bytes"] > 0), key=lambda h: -h["bytes"])[:layers]
    return {
        "image": image,
        "bytes": size,
        "goal_gb": GOAL_GB,
        "ratio_to_goal": size / 1e9 / GOAL_GB,
        "largest_layers": largest,
        "layer_count": len(history),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", default="sagemaker-vision:latest")
    parser.add_argument("--layers", type=int, default=8, help="largest layers to list")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    report = measure(args.image, args.layers)
    size_gb = report["bytes"] / 1e9
    verdict = "within" if size_gb <= GOAL_GB else "OVER"
    print(f"{args.image}: {gb(report['bytes'])} uncompressed, {report['layer_count']} layers")
    print(f"goal <= {GOAL_GB:g} GB: {report['ratio_to_goal']:.2f} of the goal ({verdict})")
    print()
    print(f"largest layers ({args.layers}):")
    for layer in report["largest_layers"]:
        print(f"  {gb(layer['bytes']):>9}  {describe(layer['step'])[:110]}")
    print()
    print("| image | uncompressed | vs this image |")
    print("| --- | ---: | ---: |")
    print(f"| {args.image} | {size_gb:.1f} GB | 1.0x |")
    for name, other in AWS_DLC_GB.items():
        print(f"| {name} | ~{other:g} GB | {other / size_gb:.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**report, "aws_dlc_gb": AWS_DLC_GB}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

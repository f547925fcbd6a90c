"""Does torch.compile (inductor) make our served forward faster on this CPU?

    python3 benchmarks/serving/compile_check.py [--image IMAGE] [--arch resnet50]

Builds IMAGE plus a C++ compiler and torch's headers (benchmarks/serving/compile/
Dockerfile: inductor generates and compiles C++ on CPU; the image ships neither), then, in one
container on one thread per forward as the server runs: our classifier (BatchNorm
folded, channels-last) eager and under torch.compile with inductor's freezing, in fp32
and in bf16 autocast, at batch 1 and 4. Prints the compile time (which a compiled
server would add to its cold start) and ms per image of each, with the ratios.
Needs docker on the host.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from bench import build_on, docker_bin  # this folder's, on sys.path when run as a script

MEASURE = r"""
import statistics, sys, time, torch
import torch._inductor.config as inductor
from vision.models import build_model
from serve.torch_model import fold_for_inference
torch.set_num_threads(1)
inductor.freezing = True  # weights become constants: what lets inductor fold and pre-pack them
arch = sys.argv[1]
eager = fold_for_inference(build_model(arch, 133).eval(), arch)

def ms_per_image(module, precision, rows, repeats=12):
    x = torch.randn(rows, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        for _ in range(3):
            module(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter(); module(x); times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000 / rows

for precision in ("fp32", "bf16"):
    torch._dynamo.reset()
    compiled = torch.compile(eager, backend="inductor")
    x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        compiled(x)
    compile_s = time.perf_counter() - start
    for rows in (1, 4):
        e, c = ms_per_image(eager, precision, rows), ms_per_image(compiled, precision, rows)
        print(f"RESULT {precision} batch {rows}: eager {e:.1f} ms/img, compiled {c:.1f} ms/img, "
              f"compiled/eager speed x{e / c:.2f}, first compile {compile_s:.0f} s", flush=True)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="sagemaker-vision:test")
    parser.add_argument("--arch", default="resnet50")
    args = parser.parse_args(argv)
    tag = build_on(args.image, "compile", "g++ and torch's C++ headers")
    docker = docker_bin()
    run = [docker, "run", "--rm", "--label", "sagemaker-vision-bench=1", tag, "python", "-c", MEASURE, args.arch]
    out = subprocess.run(run, check=True, capture_output=True, text=True)
    print(f"{args.arch}, one thread, 133 classes, on {cpu_name()}:")
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            print(" ", line.removeprefix("RESULT "))
    return 0


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "this CPU"


if __name__ == "__main__":
    sys.exit(main())

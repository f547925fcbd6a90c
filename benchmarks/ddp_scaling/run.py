"""DDP scaling of the built-in trainer through the real image: images/s with 1 process,
then with N (2 on CPU, one per GPU when the host has GPUs), on the same synthetic data
in the same run, and the scaling efficiency (imgs/s with N) / (N x imgs/s with 1).

    python3 benchmarks/ddp_scaling/run.py [--image IMAGE] [--build] [--nproc N]
        [--arch resnet18] [--image-size 64] [--batch-size 16] [--epochs 3] [--per-class 60]

Runs on the host (needs docker and Pillow). The batch size is per process, as in DDP
(weak scaling: N processes take 1/N of the steps). Throughput comes from the trainer's
own `images_per_s=` progress lines (already global: rank 0's window x world size);
epoch 1 is skipped (warm-up, allocator, first gloo/NCCL buckets) and the median of the
remaining windows is reported.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from train import synthetic  # noqa: E402  (Pillow only)

PROGRESS = re.compile(r"epoch=(\d+) step=(\d+)/(\d+) .*images_per_s=([0-9.eE+-]+)")


def docker_bin() -> str:
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"


def gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in result.stdout.splitlines()) if result.returncode == 0 else 0


def run_trainer(args, data: Path, nproc: int, gpus: int) -> tuple[list[float], str]:
    """One training run; returns the steady-state images/s windows and the log."""
    command = [docker_bin(), "run", "--rm", "--shm-size", "1g", "-v", f"{data}:/opt/ml/input/data/training:ro"]
    if gpus:
        command += ["--gpus", "all"]
    command += [
        args.image,
        "train",
        "--nproc",
        str(nproc),
        "--arch",
        args.arch,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--num-workers",
        str(args.num_workers),
        "--log-interval",
        str(args.log_interval),
        "--device",
        "cuda" if gpus else "cpu",
        # Outputs stay inside the throw-away container; nothing resumes from a previous run.
        "--resume",
        "false",
        "--checkpoint-dir",
        "/tmp/checkpoints",
        "--model-dir",
        "/tmp/model",
        "--output-data-dir",
        "/tmp/output",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    log = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"training with --nproc {nproc} failed (exit {result.returncode}):\n{log[-4000:]}")
    rates = [float(m.group(4)) for m in PROGRESS.finditer(log) if int(m.group(1)) > 1]
    if not rates:
        raise SystemExit(f"no progress lines after epoch 1 with --nproc {nproc}: raise --epochs or lower --log-interval\n{log[-4000:]}")
    return rates, log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=os.environ.get("IMAGE", "sagemaker-vision:latest"))
    parser.add_argument("--build", action="store_true", help="build the image with docker/build.sh first")
    parser.add_argument("--nproc", type=int, default=0, help="processes to compare with 1 (default: GPU count, else 2)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--epochs", type=int, default=3, help="epoch 1 is warm-up and not measured")
    parser.add_argument("--per-class", type=int, default=60, help="training images per class (3 classes)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    parser.add_argument("--log-interval", type=int, default=2, help="steps per throughput window")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is not measured")

    if args.build:
        subprocess.run([str(REPO / "docker" / "build.sh"), args.image], check=True)
    gpus = gpu_count()
    nproc = args.nproc or (gpus if gpus > 1 else 2)
    if gpus and nproc > gpus:
        raise SystemExit(f"--nproc {nproc} needs {nproc} GPUs; this host has {gpus}")

    with tempfile.TemporaryDirectory(prefix="ddp_scaling_") as tmp:
        data = Path(tmp) / "shapes"
        synthetic.make_shapes(data, {"train": args.per_class, "valid": 8}, size=args.image_size, seed=0)
        os.chmod(tmp, 0o755)
        print(
            f"image={args.image} device={f'cuda x{gpus}' if gpus else 'cpu (gloo)'} host_cpus={os.cpu_count()} "
            f"arch={args.arch} image_size={args.image_size} batch_per_process={args.batch_size} "
            f"train_images={3 * args.per_class} epochs={args.epochs} (epoch 1 skipped)",
            flush=True,
        )
        results = {}
        for n in (1, nproc):
            rates, _ = run_trainer(args, data, n, gpus)
            results[n] = statistics.median(rates)
            print(
                f"nproc={n} images_per_s={results[n]:.2f} (median of {len(rates)} windows, min {min(rates):.2f}, max {max(rates):.2f})",
                flush=True,
            )
    efficiency = results[nproc] / (nproc * results[1])
    print(
        f"scaling_efficiency={efficiency:.3f}  (= {results[nproc]:.2f} / ({nproc} x {results[1]:.2f}); speed-up {results[nproc] / results[1]:.2f}x)"
    )
    if not gpus:
        print(f"note: on CPU both runs share the same {os.cpu_count()} cores, so the ideal is a 1.0x speed-up (efficiency {1 / nproc:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

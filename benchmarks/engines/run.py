"""CPU inference engines side by side, through the real image, in one command.

    python3 benchmarks/engines/run.py [--image IMAGE] [--work DIR] [--rounds 5]
    python3 benchmarks/engines/run.py --extra-wheels DIR   # also OpenVINO, from wheels in DIR
    python3 benchmarks/engines/run.py --emulate-cpu Haswell-v4   # also int8 accuracy on an AVX2-only CPU (QEMU)

Engines: torch eager fp32 as served (BatchNorm folded, channels-last), torch bf16
autocast, ONNX Runtime fp32, ONNX Runtime int8 (static QDQ, per-channel; four recipes),
torch int8 (x86 backend, FX post-training quantization) and, when its wheels are given,
OpenVINO fp32 and int8. Each is timed at batch 1 and 4, one thread and all cores, on
ResNet-18 and ResNet-50 with 133 and 10 classes, interleaved; and its top-1 accuracy and
agreement with fp32 are measured on scikit-learn's digits test split through a ResNet-18
and a ResNet-50 trained by the image's own `train` on the training split (the data of
benchmarks/serving/agreement.py). The torch-free preprocessing is compared with the torch
transform on scikit-learn's sample photos and the digits. The CPU's flags are printed
beside every table (benchmarks/engines/measure.py does the measuring, inside the image).

--emulate-cpu reruns the accuracy section's ONNX models under QEMU's user-mode emulator
with that CPU model (Debian's qemu-user-static on the host, mounted into the container),
so ONNX Runtime runs the kernels of a CPU class this machine is not
(benchmarks/engines/onnx_accuracy.py).

Trained models are kept in --work (default benchmarks/results/engines-work) and reused by
later runs. Writes benchmarks/results/engines.json and engines.md. Needs docker, Pillow
and scikit-learn on the host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "serving"))
from agreement import docker, make_digits  # noqa: E402 - the sibling benchmark's digits split and docker helper

ARCHS = ("resnet18", "resnet50")
QEMU = Path("/usr/bin/qemu-x86_64-static")


def lay_out(work: Path) -> None:
    """The digits split and the sample photos, once."""
    if not (work / "data" / "test").is_dir():
        make_digits(work)
    photos = work / "photos"
    if not photos.is_dir():
        from sklearn.datasets import load_sample_image

        photos.mkdir(parents=True)
        for name in ("china.jpg", "flower.jpg"):
            Image.fromarray(np.asarray(load_sample_image(name))).save(photos / name, quality=95)


def train(image: str, work: Path, arch: str, epochs: int, cpus: str | None) -> None:
    model = work / "models" / arch
    if (model / "model_spec.json").is_file():
        print(f"{arch}: reusing the model in {model}", flush=True)
        return
    model.mkdir(parents=True, exist_ok=True)
    os.chmod(model, 0o777)
    print(f"{arch}: training on the digits train split for {epochs} epochs in {image}", flush=True)
    started = time.monotonic()
    limit = ["--cpus", cpus] if cpus else []
    docker(
        "run", "--rm", *limit, "-v", f"{work}/data:/opt/ml/input/data/training:ro", "-v", f"{model}:/opt/ml/model",
        image, "train", "--arch", arch, "--image-size", "32", "--epochs", str(epochs),
    )  # fmt: skip
    docker("run", "--rm", "--entrypoint", "chmod", "-v", f"{model}:/m", image, "-R", "a+rwX", "/m")
    print(f"{arch}: trained in {time.monotonic() - started:.0f} s", flush=True)


def emulate(image: str, work: Path, cpu: str) -> None:
    if not QEMU.is_file():
        sys.exit(f"--emulate-cpu needs {QEMU} on the host (apt-get install qemu-user-static)")
    if not list((work / "out").glob("acc-*/test_inputs.npy")):
        sys.exit("--emulate-cpu reruns the accuracy section's models: do not combine it with --skip-accuracy")
    print(f"accuracy of the ONNX models on an emulated {cpu} (slow: every instruction is emulated)", flush=True)
    docker(
        "run", "--rm", "-v", f"{HERE}:/bench:ro", "-v", f"{work}:/w", "-v", f"{QEMU}:/usr/local/bin/qemu:ro",
        "--entrypoint", "/usr/local/bin/qemu", image, "-cpu", cpu, "/opt/venv/bin/python3", "/bench/onnx_accuracy.py",
        "--work", "/w", "--cpu", cpu,
    )  # fmt: skip
    result = json.loads((work / "out" / f"emulated-{cpu}.json").read_text())
    lines = [
        "",
        f"#### int8 accuracy on an emulated {cpu} (QEMU user mode: ONNX Runtime sees that CPU's CPUID and runs its kernels)",
        "",
        f"u8 x s8 GEMM saturates with 8-bit weights: {result['u8s8_saturates_8bit_weights']}; "
        f"with 7-bit (reduce_range) weights: {result['u8s8_saturates_7bit_weights']}",
    ]
    for arch, rows in result["accuracy"].items():
        lines += ["", f"| {arch} model | top-1 accuracy | top-1 agreement with torch fp32 |", "| --- | --- | --- |"]
        lines += [f"| {name} | {100 * r['accuracy']:.2f}% | {100 * r['agreement_with_fp32']:.2f}% |" for name, r in rows.items()]
    with (work / "out" / "engines.md").open("a") as md:
        md.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "sagemaker-vision:latest"))
    parser.add_argument("--work", type=Path, default=Path("benchmarks/results/engines-work"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--train-cpus",
        help="docker run --cpus for training (the trainer then runs that many threads): 1 on a machine others load, where "
        "two threads that wait on each other run 10-25x slower than one",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--classes", default="133,10")
    parser.add_argument("--extra-wheels", type=Path, help="a folder of wheels (e.g. openvino) installed into the container first")
    parser.add_argument("--emulate-cpu", help="a QEMU CPU model (e.g. Haswell-v4: AVX2, no AVX-512, no VNNI) to rerun int8 accuracy on")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    return parser


def main(args: argparse.Namespace) -> int:
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o777)
    lay_out(work)
    if not args.skip_accuracy:
        for arch in args.archs.split(","):
            train(args.image, work, arch, args.epochs, args.train_cpus)
    out = work / "out"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    os.chmod(out, 0o777)
    command = f"python /bench/measure.py --work /w --rounds {args.rounds} --archs {args.archs} --classes {args.classes}"
    command += " --skip-speed" * args.skip_speed + " --skip-accuracy" * args.skip_accuracy
    mounts = ["-v", f"{HERE}:/bench:ro", "-v", f"{work}:/w"]
    if args.extra_wheels:
        mounts += ["-v", f"{args.extra_wheels.resolve()}:/wheels:ro"]
        command = "pip install -q --no-index --find-links /wheels /wheels/*.whl && " + command
    print(f"measuring in {args.image} (this takes a few minutes)", flush=True)
    output = docker("run", "--rm", *mounts, "--entrypoint", "bash", args.image, "-c", command)
    print(output[output.find("### Engines") :] if "### Engines" in output else output)
    if args.emulate_cpu:
        emulate(args.image, work, args.emulate_cpu)
    results = Path("benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    for path in [out / "engines.json", out / "engines.md", *out.glob("emulated-*.json")]:
        shutil.copyfile(path, results / path.name)
    print(f"wrote {results / 'engines.json'} and {results / 'engines.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

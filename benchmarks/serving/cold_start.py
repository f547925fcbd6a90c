"""Cold start of the torch-free image: container start -> /ping 200 -> first successful
prediction, and when int8 took over from fp32 (its accuracy guard runs in the background,
serve/background_guard.py). Compared with SM_VISION_WAIT_FOR_GUARD=true, the old order
(ready only after the guard).

    python3 benchmarks/serving/cold_start.py                       # ResNet-50, 5 starts each way
    python3 benchmarks/serving/cold_start.py --arch resnet18 --runs 3

The model: seeded random weights (133 classes, 224 px) with the engine files the trainer
writes (model.onnx, model.int8.onnx, calibration.npy from synthetic shapes), made once in
the full image. The client posts scikit-learn's china.jpg every 20 ms from the moment the
container is started, so "first prediction" is what a caller polling the endpoint sees.
Prints the CPU class and flags and the load average before and after: on a shared machine
the figures measure the load too. Needs the docker SDK, requests and scikit-learn.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # vision.cpu: the CPU class, without torch

from vision.cpu import cpu_class, cpu_flags  # noqa: E402

LABEL = "sagemaker-vision-bench"
SWITCHED = re.compile(r"switched to engine \S+, precision (\w+).* after ([\d.]+) s in the background")

MAKE_MODEL = r"""
import os, sys, torch
from pathlib import Path
from train import synthetic
from train.config import TrainConfig
from train.outputs import save_engine_files
from vision.artifact import ModelSpec
from vision.models import build_model
out, arch = Path(sys.argv[1]), sys.argv[2]
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
torch.save(build_model(arch, 133).state_dict(), out / "model.pt")
ModelSpec(arch, tuple(f"breed_{i}" for i in range(133)), 224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).save(out)
synthetic.make_shapes(Path("/tmp/shapes"), {"train": 22}, size=256, seed=0)
classes = sorted(p.name for p in Path("/tmp/shapes/train").iterdir())
samples = [(str(p), classes.index(p.parent.name)) for p in sorted(Path("/tmp/shapes/train").glob("*/*.png"))]
save_engine_files(TrainConfig(), samples, out)
for f in out.iterdir(): os.chmod(f, 0o666)
os.chmod(out, 0o777)
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "sagemaker-vision:latest"), help="the full image (makes the model)")
    parser.add_argument("--cpu-image", default=os.environ.get("IMAGE_CPU", "sagemaker-vision:latest-cpu"), help="the image measured")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--runs", type=int, default=5, help="starts per setting, interleaved")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_start.json"))
    return parser


def make_model(client, image: str, root: Path, arch: str) -> None:
    (root / "model").mkdir(parents=True)
    os.chmod(root, 0o777)
    os.chmod(root / "model", 0o777)
    volumes = {str(root / "model"): {"bind": "/out", "mode": "rw"}}
    logs = client.containers.run(image, ["python", "-c", MAKE_MODEL, "/out", arch], entrypoint=[], volumes=volumes, remove=True)
    if not (root / "model" / "model.int8.onnx").is_file():
        raise RuntimeError("the model has no model.int8.onnx:\n" + logs.decode(errors="replace")[-3000:])


def photo() -> bytes:
    from sklearn.datasets import load_sample_image

    out = io.BytesIO()
    Image.fromarray(load_sample_image("china.jpg")).save(out, format="JPEG", quality=90)
    return out.getvalue()


def start(client, image: str, root: Path, env: dict, body: bytes) -> dict:
    """One cold start: seconds to /ping 200 and to the first 200 prediction, and the switch."""
    started = time.monotonic()
    container = client.containers.run(
        image, ["serve"], detach=True, labels={LABEL: "1"}, environment=env,
        volumes={str(root): {"bind": "/opt/ml", "mode": "ro"}}, ports={"8080/tcp": ("127.0.0.1", None)},
    )  # fmt: skip
    try:
        ports = None
        while not ports:
            container.reload()
            ports = container.attrs["NetworkSettings"]["Ports"].get("8080/tcp")
        base, ping_s, first_s = f"http://127.0.0.1:{ports[0]['HostPort']}", None, None
        while first_s is None:
            if time.monotonic() - started > 300:
                raise RuntimeError("no prediction within 300 s:\n" + container.logs().decode(errors="replace")[-3000:])
            try:
                if ping_s is None and requests.get(base + "/ping", timeout=2).status_code == 200:
                    ping_s = time.monotonic() - started
                answer = requests.post(base + "/invocations", data=body, headers={"Content-Type": "image/jpeg"}, timeout=30)
                if answer.status_code == 200:
                    first_s = time.monotonic() - started
                    ping_s = ping_s or first_s
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        switched = None
        for _ in range(3000):  # at a lower priority on a loaded machine the guard may take minutes
            logs = container.logs().decode(errors="replace")
            switched = SWITCHED.search(logs)
            if switched or env.get("SM_VISION_WAIT_FOR_GUARD") == "true":  # the guard ran before ready
                break
            if "staying on fp32" in logs:  # the guard refused int8: fp32 serves for good
                break
            time.sleep(0.1)
        guard_s = float(switched[2]) if switched else None
        return {"ping_s": ping_s, "first_prediction_s": first_s, "guard_in_background_s": guard_s}
    finally:
        container.remove(force=True)


def summary(runs: list[dict], key: str) -> str:
    values = [run[key] for run in runs if run[key] is not None]
    return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})" if values else "-"


def main(args: argparse.Namespace) -> int:
    client, body = docker.from_env(), photo()
    flags = cpu_flags()
    print(f"CPU class {cpu_class(flags)}; flags: {' '.join(sorted(f for f in flags if f.startswith(('avx', 'amx', 'fma'))))}")
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs")
    settings = {"background guard (default)": {}, "SM_VISION_WAIT_FOR_GUARD=true": {"SM_VISION_WAIT_FOR_GUARD": "true"}}
    results: dict[str, list[dict]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_model(client, args.image, root, args.arch)
        for _ in range(args.runs):
            for name, env in settings.items():
                results[name].append(start(client, args.cpu_image, root, env, body))
    print(f"load average after: {os.getloadavg()}")
    for name, runs in results.items():
        print(f"{args.arch} on {args.cpu_image}, {name}:")
        for key in ("ping_s", "first_prediction_s", "guard_in_background_s"):
            print(f"  {key:24} {summary(runs, key)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"arch": args.arch, "cpu_class": cpu_class(flags), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

"""The monitor's false-alarm rate on in-distribution windows and its detection rate per
shift, at a stated window size, on a model the image trained on real images (scikit-learn's
digits), and its throughput.

    python3 benchmarks/monitor/rates.py [--image sagemaker-vision:latest] [--windows 200] [--shift-windows 50] [--window 200]

On the host (docker SDK, scikit-learn, Pillow): the digits are split as the container
test splits them (900 train, 400 validation = the baseline, 497 held out), the image
trains ResNet-18 at 32 pixels (`train`, which writes the baseline; or --model DIR reuses
a trained model), and every image the windows are drawn from is written as a PNG: the
held-out digits, the same blurred, brightened and rotated, and 500 crops of the two
sample photos. Then in the image (`--inside`): each image goes once through what
`monitor` does per captured image (the server's decoder, the image statistics, the
model's fp32 forward, the baseline's embedding and OOD distance: monitor.window.analyse on
Data Capture records), and each window, a random draw of --window images from a pool,
through the same checks and thresholds a `monitor` run applies (monitor.checks, seeded
per window). A window is a false alarm when any check is violated; a shifted window is
detected when the shift's own check is. Throughput: images per second of that pass, and a
whole `monitor` run over one window (report included).

Prints a table and the CPU it ran on; writes benchmarks/results/monitor_rates.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
POOLS = ("in-distribution", "blur", "brightness", "rotation", "foreign")
# The check each shift must trip (feature_name of the violation), and the pool it is drawn from.
EXPECTED = {
    "blur": ("blur", "image_sharpness"),
    "brightness": ("brightness", "image_brightness"),
    "rotation": ("rotation", "embedding"),
    "class-prior": ("in-distribution", "predicted_label"),
    "foreign": ("foreign", "ood_percentile"),
}
CLASS_PRIOR = (0, 1)  # the class-prior windows hold only these digits


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "sagemaker-vision:latest"))
    parser.add_argument("--model", type=Path, help="a digits model trained by the image (default: train one)")
    parser.add_argument("--windows", type=int, default=200, help="in-distribution windows (the false-alarm rate)")
    parser.add_argument("--shift-windows", type=int, default=50, help="windows per shift (the detection rates)")
    parser.add_argument("--window", type=int, default=200, help="images per window")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/monitor_rates.json")
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)  # the part that runs in the image
    return parser


# --- on the host -------------------------------------------------------------------------


def write_pools(root: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.support import digits, shifts

    everything = digits.load()
    random.Random(0).shuffle(everything)
    train, valid, held_out = everything[:900], everything[900:1300], everything[1300:]
    digits.write_image_folder(root / "data/train", train)
    digits.write_image_folder(root / "data/valid", valid)
    pools = {
        "in-distribution": [shifts.digit_image(d) for d in held_out],
        **{name: [change(shifts.digit_image(d)) for d in held_out] for name, change in shifts.SHIFTS.items()},
        "foreign": shifts.foreign(500, random.Random(2)),
    }
    for name, pool in pools.items():
        (root / "pools" / name).mkdir(parents=True)
        for i, image in enumerate(pool):
            image.save(root / "pools" / name / f"{i:04d}.png")
    return {"labels": [d.label for d in held_out]}


def docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    binary = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"
    return subprocess.run([binary, *args], check=True, **kwargs)


def train(image: str, root: Path) -> Path:
    command = ["train", "--arch", "resnet18", "--image-size", "32", "--epochs", "4", "--batch-size", "32", "--lr", "0.002"]
    command += ["--train-dir", "/bench/data/train", "--valid-dir", "/bench/data/valid", "--model-dir", "/bench/model"]
    print("training ResNet-18 on the digits in the image ...", flush=True)
    docker("run", "--rm", "-v", f"{root}:/bench", image, *command, stdout=subprocess.DEVNULL)
    return root / "model"


def host(args) -> int:
    with tempfile.TemporaryDirectory(prefix="monitor-rates-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o777)
        meta = write_pools(root)
        model = args.model or train(args.image, root)
        (root / "meta.json").write_text(json.dumps({**meta, **{k: getattr(args, k) for k in ("windows", "shift_windows", "window")}}))
        volumes = ["-v", f"{REPO}:/src:ro", "-v", f"{root}:/bench", "-v", f"{model.resolve()}:/model:ro", "-w", "/src"]
        docker("run", "--rm", *volumes, args.image, "python", "benchmarks/monitor/rates.py", "--inside", "/bench")
        results = json.loads((root / "results.json").read_text())
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


def report(results: dict) -> None:
    print(f"\nwindow: {results['window']} images; CPU: {results['cpu']}, torch threads {results['torch_threads']}")
    alarms = results["false_alarms"]
    print(
        f"in-distribution: {alarms['windows']} windows, false-alarm rate {alarms['rate']:.3f} (goal <= 0.05); by check {alarms['by_check']}"
    )
    for name, row in results["detection"].items():
        print(
            f"{name:12} {row['windows']} windows: detected by {row['check']} {row['rate']:.3f} (goal >= 0.95), any violation {row['any_rate']:.3f}"
        )
    print(f"throughput: {results['throughput']}")


# --- in the image ------------------------------------------------------------------------


def analyse_pool(folder: Path, embedder, baseline, limits):
    """Every image of a pool through the monitor's per-image pass, as captured requests."""
    from datetime import datetime, timezone

    from monitor.captures import CapturedItem
    from monitor.window import analyse

    when = datetime(2026, 12, 1, 15, tzinfo=timezone.utc)
    items = (CapturedItem(when, str(i), 0, payload=path.read_bytes()) for i, path in enumerate(sorted(folder.glob("*.png"))))
    return analyse(items, embedder, baseline, limits, keep_outliers=0)


def subset(pool, indices):
    """The window of these rows of an analysed pool (what analyse would give for them)."""
    import numpy as np

    from monitor.window import Window

    projected = pool.projected_array(0)[indices]
    return Window(
        pool.classes,
        times=[pool.times[i] for i in indices],
        labels=[pool.labels[i] for i in indices],
        max_probability=[pool.max_probability[i] for i in indices],
        projected=[np.asarray(projected)],
        ood_distance=[pool.ood_distance[i] for i in indices],
        image_numeric=[pool.image_numeric[i] for i in indices],
        formats=Counter({"PNG": len(indices)}),
    )


def violated(window, baseline, settings, seed: int) -> set[str]:
    import numpy as np

    from monitor import checks
    from monitor.captures import WindowCounts

    counts = WindowCounts(records=window.size)
    rng = np.random.default_rng(seed)
    results = checks.statistical_checks(window, baseline, settings, rng) + checks.operational_checks(window, counts, settings)
    return {check.feature_name for check in results if check.violated}


def cpu_flags() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?"
    )
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return f"{model}, {os.cpu_count()} CPUs, flags {' '.join(flag for flag in wanted if flag in flags)}"


def whole_run(root: Path, pool_dir: Path, size: int) -> dict:
    """One `monitor` run, report included, over one window of Data Capture records."""
    from datetime import datetime, timedelta, timezone

    from monitor import cli

    start = datetime(2026, 12, 1, 15, tzinfo=timezone.utc)
    folder = root / "captures/bench/AllTraffic/2026/12/01/15"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "window.jsonl").open("w") as out:
        for i, path in enumerate(sorted(pool_dir.glob("*.png"))[:size]):
            when = (start + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            data = {
                "observedContentType": "image/png",
                "mode": "INPUT",
                "data": base64.b64encode(path.read_bytes()).decode(),
                "encoding": "BASE64",
            }
            out.write(
                json.dumps(
                    {
                        "captureData": {"endpointInput": data},
                        "eventMetadata": {"eventId": str(i), "inferenceTime": when},
                        "eventVersion": "0",
                    }
                )
                + "\n"
            )
    started = time.perf_counter()
    argv = [
        "--captures",
        str(root / "captures"),
        "--model",
        "/model",
        "--out",
        str(root / "run"),
        "--start",
        "2026-12-01T15:00:00Z",
        "--end",
        "2026-12-01T16:00:00Z",
    ]
    assert cli.main(argv) == 0
    seconds = time.perf_counter() - started
    inner = json.loads((root / "run/statistics.json").read_text())["sagemaker_vision"]["throughput"]
    return {
        "images": size,
        "run_seconds": round(seconds, 2),
        "images_per_second_whole_run": round(size / seconds, 1),
        "per_image_pass": inner,
    }


def inside(root: Path) -> None:
    import torch

    from container.monitoring import MonitorSettings
    from monitor.run import image_limits
    from vision.baseline import Baseline
    from vision.features import Embedder

    meta = json.loads((root / "meta.json").read_text())
    settings = MonitorSettings.from_env({})
    embedder = Embedder.load(Path("/model"), torch.device("cpu"), settings.batch_size)
    baseline, _ = Baseline.load(Path("/model"))
    started = time.perf_counter()
    pools = {name: analyse_pool(root / "pools" / name, embedder, baseline, image_limits(settings)) for name in POOLS}
    analysed = sum(pool.size for pool in pools.values())
    pass_rate = analysed / (time.perf_counter() - started)
    size, rng = meta["window"], random.Random(7)
    by_check, alarms = Counter(), 0
    for w in range(meta["windows"]):
        found = violated(subset(pools["in-distribution"], rng.sample(range(pools["in-distribution"].size), size)), baseline, settings, w)
        alarms += bool(found)
        by_check.update(found)
    prior = [i for i, label in enumerate(meta["labels"]) if label in CLASS_PRIOR]
    detection = {}
    for name, (pool_name, check) in EXPECTED.items():
        pool, hits, any_hits = pools[pool_name], 0, 0
        for w in range(meta["shift_windows"]):
            indices = [rng.choice(prior) for _ in range(size)] if name == "class-prior" else rng.sample(range(pool.size), size)
            found = violated(subset(pool, indices), baseline, settings, 10_000 + w)
            hits += check in found
            any_hits += bool(found)
        detection[name] = {
            "windows": meta["shift_windows"],
            "check": check,
            "rate": hits / meta["shift_windows"],
            "any_rate": any_hits / meta["shift_windows"],
        }
    results = {
        "window": size,
        "cpu": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "baseline_images": baseline.size,
        "false_alarms": {"windows": meta["windows"], "rate": alarms / meta["windows"], "by_check": dict(by_check)},
        "detection": detection,
        "throughput": {
            "per_image_pass_images_per_second": round(pass_rate, 1),
            "pool_images": analysed,
            **whole_run(root / "whole", root / "pools/in-distribution", size),
        },
    }
    (root / "results.json").write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.inside:
        inside(args.inside)
        return 0
    return host(args)


if __name__ == "__main__":
    sys.exit(main())

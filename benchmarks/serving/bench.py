"""Our serving stack vs `serve --backend mms`, same image, same model, same run.

    python3 benchmarks/serving/bench.py                       # ResNet-18 and ResNet-50, 20 s each
    python3 benchmarks/serving/bench.py --archs resnet50 --duration 60
    python3 benchmarks/serving/bench.py --soak                # + 5 min at concurrency 32 (default server)

Per architecture and backend: cold start (container start -> /ping 200, and -> first
successful prediction, since MMS answers /ping before its model is loaded), p50
latency at concurrency 1 and its overhead over a bare forward pass (preprocessed
tensor, same thread count), then a closed loop of --concurrency clients for
--duration seconds: req/s, p50/p99, errors, peak RSS (sum over the container's
processes, sampled with `docker top`). Every loop is bounded and talks to 127.0.0.1
only. Needs the docker SDK, requests and Pillow on the host; the image must exist.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import docker
import requests
from PIL import Image, ImageDraw

LABEL = "sagemaker-vision-bench"
BACKENDS = ("asgi", "mms")

MAKE_MODEL = r"""
import os, sys, torch
from pathlib import Path
from train.models import build_model
from train.artifact import ModelSpec
out, arch = Path(sys.argv[1]), sys.argv[2]
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
torch.save(build_model(arch, 10).state_dict(), out / "model.pt")
ModelSpec(arch, tuple(f"class_{i}" for i in range(10)), 224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).save(out)
for f in out.iterdir(): os.chmod(f, 0o666)
os.chmod(out, 0o777)
"""

# The same forward the server runs, minus HTTP, decoding and preprocessing.
BARE_FORWARD = r"""
import os, sys, time, statistics, torch
from pathlib import Path
from serve.model import load_classifier
torch.set_num_threads(int(sys.argv[2]))
clf = load_classifier(Path(sys.argv[1]), torch.device("cpu"))
x = torch.randn(1, 3, 224, 224)
for _ in range(5): clf.probabilities(x)
times = []
for _ in range(30):
    t = time.perf_counter(); clf.probabilities(x); times.append(time.perf_counter() - t)
print("BARE_MS", statistics.median(times) * 1000)
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "sagemaker-vision:latest"))
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--backends", default="asgi,mms")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per backend and arch")
    parser.add_argument("--rounds", type=int, default=4, help="alternate backends this many times within --duration")
    parser.add_argument("--mms-workers", type=int, default=2, help="SAGEMAKER_MODEL_SERVER_WORKERS for MMS")
    parser.add_argument(
        "--asgi-env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for the default server (repeatable)"
    )
    parser.add_argument("--soak", action="store_true", help="also a soak of the default server (not for CI)")
    parser.add_argument("--soak-seconds", type=float, default=300)
    parser.add_argument("--soak-concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    return parser


def jpeg() -> bytes:
    image = Image.new("RGB", (320, 240), (235, 230, 220))
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 40, 220, 200), fill=(200, 40, 40))
    draw.rectangle((180, 100, 300, 220), fill=(40, 160, 60))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class RssSampler:
    """Peak of the summed RSS of the container's processes."""

    def __init__(self, container, period: float = 0.5):
        self.container, self.period = container, period
        self.samples: list[int] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        top = self.container.top(ps_args="-o pid,rss")
        column = top["Titles"].index("RSS")
        return sum(int(row[column]) for row in top["Processes"]) * 1024

    def _run(self):
        while not self.stop_event.is_set():
            with contextlib.suppress(Exception):  # the container may be stopping
                self.samples.append(self.sample())
            self.stop_event.wait(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples or [0])


def load_loop(url: str, body: bytes, concurrency: int, duration: float) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client():
        session = requests.Session()
        own, bad = [], 0
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                response = session.post(url, data=body, headers={"Content-Type": "image/jpeg"}, timeout=60)
                ok = response.status_code == 200
            except requests.RequestException:
                ok = False
            if ok:
                own.append(time.perf_counter() - start)
            else:
                bad += 1
        with lock:
            latencies.extend(own)
            errors[0] += bad

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "elapsed": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else float("nan"),
        "latency_list": latencies,
    }


def wait_for(predicate, timeout: float, container) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return time.monotonic() - start
        except requests.RequestException:
            pass
        container.reload()
        if container.status == "exited":
            raise RuntimeError("server exited:\n" + container.logs().decode(errors="replace")[-3000:])
        time.sleep(0.05)
    raise RuntimeError(f"not ready within {timeout} s")


def start_backend(client, image, root: Path, backend: str, args, body: bytes, bare_ms: float) -> dict:
    """Start one server; measure cold start and sequential latency; leave it running."""
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(args.mms_workers)} if backend == "mms" else dict(kv.split("=", 1) for kv in args.asgi_env)
    t0 = time.monotonic()
    container = client.containers.run(
        image,
        ["serve", "--backend", backend],
        detach=True,
        labels={LABEL: "1"},
        environment=env,
        volumes={str(root): {"bind": "/opt/ml", "mode": "ro"}},
        ports={"8080/tcp": ("127.0.0.1", None)},
    )
    while True:
        container.reload()
        ports = container.attrs["NetworkSettings"]["Ports"].get("8080/tcp")
        if ports:
            break
        time.sleep(0.05)
    base = f"http://127.0.0.1:{ports[0]['HostPort']}"
    wait_for(lambda: requests.get(base + "/ping", timeout=2).status_code == 200, 300, container)
    ping_s = time.monotonic() - t0
    post = lambda: requests.post(base + "/invocations", data=body, headers={"Content-Type": "image/jpeg"}, timeout=60)  # noqa: E731
    wait_for(lambda: post().status_code == 200, 300, container)
    first_s = time.monotonic() - t0
    for _ in range(10):
        post()
    sequential = []
    for _ in range(30):
        start = time.perf_counter()
        assert post().status_code == 200
        sequential.append(time.perf_counter() - start)
    p50_1 = statistics.median(sequential) * 1000
    return {
        "backend": backend,
        "container": container,
        "url": base + "/invocations",
        "cold_start_ping_s": ping_s,
        "cold_start_first_prediction_s": first_s,
        "p50_c1_ms": p50_1,
        "overhead_ms": p50_1 - bare_ms,
        "latencies": [],
        "errors": 0,
        "elapsed": 0.0,
        "peak_rss_mb": 0.0,
    }


def load_rounds(servers: list[dict], body: bytes, args) -> None:
    """Closed-loop load, alternating servers in --rounds slices so that a neighbour's
    CPU use on a shared machine hits every backend alike."""
    for _ in range(args.rounds):
        for server in servers:
            with RssSampler(server["container"]) as rss:
                result = load_loop(server["url"], body, args.concurrency, args.duration / args.rounds)
            server["latencies"] += result.pop("latency_list")
            server["errors"] += result["errors"]
            server["elapsed"] += result["elapsed"]
            server["peak_rss_mb"] = max(server["peak_rss_mb"], rss.peak / 2**20)
    for server in servers:
        lat = server["latencies"]
        server.update(
            requests=len(lat),
            rps=len(lat) / server["elapsed"],
            p50_ms=percentile(lat, 50) * 1000 if lat else float("nan"),
            p99_ms=percentile(lat, 99) * 1000 if lat else float("nan"),
        )


def soak(server: dict, body: bytes, args) -> dict:
    with RssSampler(server["container"], period=5) as rss:
        result = load_loop(server["url"], body, args.soak_concurrency, args.soak_seconds)
    result.pop("latency_list")
    samples = rss.samples
    head = statistics.mean(samples[: max(1, len(samples) // 10)])
    tail = statistics.mean(samples[-max(1, len(samples) // 10) :])
    return {
        **result,
        "rss_start_mb": head / 2**20,
        "rss_end_mb": tail / 2**20,
        "rss_growth_pct": (tail - head) / head * 100,
        "seconds": args.soak_seconds,
        "concurrency": args.soak_concurrency,
    }


def make_model(client, image, arch: str, root: Path) -> None:
    (root / "model").mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o777)
    os.chmod(root / "model", 0o777)
    out = client.containers.run(
        image,
        ["python", "-c", MAKE_MODEL, "/opt/ml/model", arch],
        remove=True,
        labels={LABEL: "1"},
        volumes={str(root): {"bind": "/opt/ml", "mode": "rw"}},
    )
    del out


def bare_forward_ms(client, image, root: Path, threads: int) -> float:
    out = client.containers.run(
        image,
        ["python", "-c", BARE_FORWARD, "/opt/ml/model", str(threads)],
        remove=True,
        labels={LABEL: "1"},
        volumes={str(root): {"bind": "/opt/ml", "mode": "ro"}},
    ).decode()
    return float(out.split("BARE_MS")[1].split()[0])


def print_table(results: list[dict]) -> None:
    header = f"{'arch':9} {'backend':7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'err':>4} {'peak RSS MB':>11} {'ping s':>7} {'1st pred s':>10} {'c=1 p50':>8} {'overhead ms':>11}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['arch']:9} {r['backend']:7} {r['rps']:7.1f} {r['p50_ms']:8.0f} {r['p99_ms']:8.0f} {r['errors']:4d} {r['peak_rss_mb']:11.0f} "
            f"{r['cold_start_ping_s']:7.1f} {r['cold_start_first_prediction_s']:10.1f} {r['p50_c1_ms']:8.1f} {r['overhead_ms']:11.1f}"
        )
    print()
    for arch in sorted({r["arch"] for r in results}):
        ours = next((r for r in results if r["arch"] == arch and r["backend"] == "asgi"), None)
        mms = next((r for r in results if r["arch"] == arch and r["backend"] == "mms"), None)
        if ours and mms:
            print(
                f"{arch}: req/s x{ours['rps'] / mms['rps']:.2f} (goal >= 1.5), p99 x{ours['p99_ms'] / mms['p99_ms']:.2f} (goal <= 0.5), "
                f"RSS x{ours['peak_rss_mb'] / mms['peak_rss_mb']:.2f} (goal <= 0.5), cold start {ours['cold_start_first_prediction_s']:.1f} s "
                f"vs MMS {mms['cold_start_first_prediction_s']:.1f} s"
            )
        if ours and "soak" in ours:
            s = ours["soak"]
            print(
                f"{arch} soak: {s['seconds']:.0f} s at concurrency {s['concurrency']}: {s['rps']:.1f} req/s, p99 {s['p99_ms']:.0f} ms, "
                f"{s['errors']} errors, RSS {s['rss_start_mb']:.0f} -> {s['rss_end_mb']:.0f} MB ({s['rss_growth_pct']:+.1f}%, goal < 10%)"
            )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    client = docker.from_env(timeout=600)
    client.images.get(args.image)
    body = jpeg()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
            for arch in args.archs.split(","):
                root = Path(tmp) / arch
                make_model(client, args.image, arch, root)
                cpus = os.cpu_count() or 1
                threads = max(1, cpus // min(4, cpus))  # what each server's forward uses (both backends)
                bare = bare_forward_ms(client, args.image, root, threads)
                print(f"{arch}: bare forward (1 x 3 x 224 x 224, {threads} thread(s)) {bare:.1f} ms", flush=True)
                servers = []
                try:
                    for backend in args.backends.split(","):
                        servers.append(start_backend(client, args.image, root, backend, args, body, bare))
                    load_rounds(servers, body, args)
                    if args.soak and servers[0]["backend"] == "asgi":
                        for server in servers[1:]:  # the soak runs alone
                            server["container"].remove(force=True)
                        servers[0]["soak"] = soak(servers[0], body, args)
                finally:
                    for server in servers:
                        server.pop("container").remove(force=True)
                for server in servers:
                    server.pop("latencies")
                    server.update(arch=arch, bare_forward_ms=bare, concurrency=args.concurrency, duration_s=args.duration)
                    results.append(server)
                    print(
                        f"  {server['backend']}: {server['rps']:.1f} req/s, p99 {server['p99_ms']:.0f} ms, peak RSS {server['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )
    finally:
        for container in client.containers.list(all=True, filters={"label": LABEL}):
            container.remove(force=True)
    print()
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

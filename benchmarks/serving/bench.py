"""Our server against the stacks SageMaker users run today, side by side in one run.

    python3 benchmarks/serving/bench.py                         # ResNet-18 and ResNet-50, c=1 and c=16
    python3 benchmarks/serving/bench.py --archs resnet50 --duration 60
    python3 benchmarks/serving/bench.py --quick                 # a short smoke run of every stack
    python3 benchmarks/serving/bench.py --stacks ours --capture # what capture for monitoring costs

Stacks (all on our image's base, Python, torch and JRE; the anchors are built from PyPI
by benchmarks/serving/anchors/Dockerfile):
  ours         `serve`, the model our trainer writes (model_spec.json + state dict)
  ours-script  `serve` running the user's inference.py below with the same weights, as a
               user moving off AWS's image runs it (--script-variant runs it again with
               more environment, e.g. 2proc:SAGEMAKER_MODEL_SERVER_WORKERS=2)
  torchserve   TorchServe 0.12 + sagemaker-pytorch-inference 2.0.25, the retired PyTorch
               inference DLC's stack, serving a plain user inference.py
               (benchmarks/serving/anchors/user_inference.py) with the same weights
  mms-toolkit  multi-model-server + sagemaker-inference running the same toolkit handler
The anchors run "tuned" (OMP_NUM_THREADS=1 per worker, as an expert sets it); with
--as-shipped they also run with torch's default thread count, as the DLC shipped.

Request variants (--request-variant, default explain, embedding and tta) send our server
the same photos with a custom attribute (X-Amzn-SageMaker-Custom-Attributes, e.g.
explain=gradcam) and report beside `ours` as `ours+NAME`: what an explained, embedding or
flip-TTA request costs against a plain one, on the same server. `ours+plain|NAME` is plain
requests measured while as many clients send NAME requests at once: whether those hold
plain ones up.

Per arch and stack: cold start (container start -> /ping 200, and -> first successful
prediction; TorchServe answers /ping before its workers are up), the bare forward pass
of our model (same threads and precision) and our overhead over it, then closed loops of
clients at each --concurrency, interleaved across stacks in --rounds slices so drift on
a shared machine hits every stack alike: req/s, p50/p99, errors, peak RSS, and the
server's CPU time per answered request (its container's CPU usage over the slices /
requests answered: what a stack spends on a request, which a loaded host disturbs far
less than req/s). Clients post
real photos (scikit-learn's china.jpg and flower.jpg) and, in a second body set, a
12-megapixel photo made by upscaling china.jpg. Everything talks to 127.0.0.1 only and
every loop is bounded in time. Accuracy in reduced precision is agreement.py's job.
Needs the docker SDK, requests, Pillow and scikit-learn on the host.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import docker
import numpy as np
import requests
from PIL import Image

HERE = Path(__file__).resolve().parent
LABEL = "sagemaker-vision-bench"
STACKS = ("ours", "ours-script", "torchserve", "mms-toolkit")
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
REQUEST_VARIANTS = ("explain:explain=gradcam", "embedding:output=embedding", "tta:tta=flip")
GOALS = {"resnet50": 2.0, "resnet18": 1.5}  # req/s ratio at concurrency 16 against each anchor
# --capture: our server again, capturing every answered request (serve/capture.py) into a
# folder in the container; the goal is at most 3% fewer req/s than without.
CAPTURE_ENV = {"SM_VISION_CAPTURE_PERCENT": "100", "SM_VISION_CAPTURE_DIR": "/tmp/captures", "SM_VISION_CAPTURE_ENDPOINT": "bench"}
CAPTURE_GOAL = 1.03  # ours / ours-capture req/s

MAKE_MODEL = r"""
import dataclasses, os, sys, torch
from pathlib import Path
from vision.models import build_model
from vision.artifact import INT8_FILE, ONNX_FILE, ModelSpec
from vision.engines.calibration import CALIBRATION_FILE, load_calibration
from vision.engines.preprocess import EvalPreprocess
out, arch = Path(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
module = build_model(arch, 133).eval()
torch.save(module.state_dict(), out / "model.pt")
spec = ModelSpec(arch, tuple(f"breed_{i}" for i in range(133)), 224, 256, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
if (out / CALIBRATION_FILE).exists():  # what the trainer adds (train/outputs.py): model.onnx and its int8 variant
    from vision.engines.export import export_onnx
    from vision.engines.quantize import quantize_int8
    normalized = EvalPreprocess.from_spec(spec).normalize(load_calibration(out, 224))
    export_onnx(module, 224, out / ONNX_FILE, torch.from_numpy(normalized[:8]))
    quantize_int8(out / ONNX_FILE, out / INT8_FILE, normalized)
    spec = dataclasses.replace(spec, calibration_file=CALIBRATION_FILE, onnx_file=ONNX_FILE, int8_file=INT8_FILE)
spec.save(out)
for f in out.iterdir(): os.chmod(f, 0o666)
os.chmod(out, 0o777)
"""

# Our server's forward, minus HTTP, decoding and preprocessing, in the precision it serves.
BARE_FORWARD = r"""
import os, sys, time, statistics, numpy as np
from pathlib import Path
from container import ServeConfig
from serve import codec
from serve.engines import load_classifier
clf = load_classifier(Path(sys.argv[1]), "cpu", os.environ.get("SM_VISION_PRECISION", "auto"), os.environ.get("SM_VISION_ENGINE", "auto"),
                      threads=int(sys.argv[2]), scratch=Path("/tmp/bare"))
clf.warm_up()  # the guard: what the server would keep
def median_ms(work, n=30):
    for _ in range(5): work()
    times = []
    for _ in range(n):
        t = time.perf_counter(); work(); times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000
x = np.random.default_rng(0).normal(size=(4, 3, 224, 224)).astype(np.float32)
limits = codec.DecodeLimits.from_config(ServeConfig.from_env(), draft_min_side=2 * clf.spec.resize_size)
photos = [p.read_bytes() for p in sorted(Path(sys.argv[3]).glob("*.jpg"))]
decode = [median_ms(lambda: codec.decode(body, "image/jpeg", clf.preprocess, limits)) for body in photos]
print("BARE_MS", median_ms(lambda: clf.probabilities(x[:1])), "BATCH4_MS", median_ms(lambda: clf.probabilities(x)) / 4,
      "DECODE_MS", statistics.mean(decode), "PRECISION", clf.engine + "-" + clf.precision)
"""


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "sagemaker-vision:latest"))
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--as-shipped", action="store_true", help="also run the anchors with torch's default thread count")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated client counts")
    parser.add_argument("--bodies", default="photos,12mp", help="photos (china.jpg, flower.jpg) and/or 12mp")
    parser.add_argument("--duration", type=float, default=20, help="seconds of load per stack, arch, concurrency and body set")
    parser.add_argument("--rounds", type=int, default=4, help="interleave the stacks this many times within --duration")
    parser.add_argument(
        "--ours-env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for our server (repeatable)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also run our server as stack ours-NAME with this environment, e.g. fp32:SM_VISION_PRECISION=fp32 (repeatable)",
    )
    parser.add_argument(
        "--script-variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also run our server on the user's inference.py as ours-script-NAME with this environment (repeatable)",
    )
    parser.add_argument(
        "--request-variant",
        action="append",
        default=None,
        metavar="NAME:ATTRIBUTES",
        help=f"also send our server requests with these custom attributes, as ours+NAME (repeatable; default {' '.join(REQUEST_VARIANTS)}; "
        "'none' for none)",
    )
    parser.add_argument("--no-mixed", action="store_true", help="skip the plain-under-variant loads (ours+plain|NAME)")
    parser.add_argument(
        "--capture",
        action="store_true",
        help="also run our server capturing 100%% of requests for monitoring (stack ours-capture; goal: <= 3%% fewer req/s)",
    )
    parser.add_argument(
        "--cpu-shares", type=int, default=None, help="docker CPU shares for every server (raise it on a host shared with other containers)"
    )
    parser.add_argument("--soak", action="store_true", help="then a soak of our server alone (RSS growth; not for CI)")
    parser.add_argument("--soak-seconds", type=float, default=300)
    parser.add_argument("--soak-concurrency", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="smoke run: resnet18, c=16, photos, 6 s, 2 rounds")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    return parser


# --- payloads ---------------------------------------------------------------------------


def photo_bodies() -> dict[str, list[bytes]]:
    """Real photos as JPEG files exactly as scikit-learn ships them, and a 12 MP one."""
    import sklearn.datasets

    images = Path(sklearn.datasets.__file__).parent / "images"
    photos = [(images / name).read_bytes() for name in ("china.jpg", "flower.jpg")]
    big = Image.open(io.BytesIO(photos[0])).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    return {"photos": photos, "12mp": [buffer.getvalue()]}


# --- measurement ------------------------------------------------------------------------


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


def container_cpu_s(container) -> float:
    """CPU seconds the container's processes have used so far, from its cgroup (v1 or v2)
    when this host shows it, else from the docker API (slower: it samples)."""
    cid = container.id
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage")
    if v1.is_file():
        return int(v1.read_text()) / 1e9
    for v2 in (Path(f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat"), Path(f"/sys/fs/cgroup/docker/{cid}/cpu.stat")):
        if v2.is_file():
            usage = dict(line.split() for line in v2.read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
    return container.stats(stream=False)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9


def post(url: str, body: bytes, attributes: str | None = None) -> bool:
    """One request on a new connection (readiness polling)."""
    return Client(url).post(body, attributes, keep_alive=False)


class Client:
    """One load-generator client: a keep-alive connection, as SageMaker's front end holds
    to a container, driven with http.client. Not `requests`: its own work per request
    (about 1-2 ms of Python here) would be counted as every server's latency and would take
    CPU from the server under test on the same cores. A failed request closes the
    connection; the next one opens a new one."""

    def __init__(self, url: str):
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port, self.path = parsed.hostname, parsed.port or 80, parsed.path or "/"
        self.connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, attributes: str | None = None, keep_alive: bool = True) -> bool:
        headers = {"Content-Type": "image/jpeg"}
        if attributes:
            headers[CUSTOM_ATTRIBUTES] = attributes
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.connection.request("POST", self.path, body=body, headers=headers)
            response = self.connection.getresponse()
            response.read()
            ok = response.status == 200
        except (OSError, http.client.HTTPException):
            ok = False
        if not (ok and keep_alive):
            self.close()
        return ok

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def load_loop(
    url: str, bodies: list[bytes], concurrency: int, duration: float, attributes: str | None = None, background: str | None = None
) -> tuple[list[float], int, float, list[float]]:
    """Closed loop: each client posts, waits for the answer, posts the next body. With
    `background`, as many more clients send requests with those attributes meanwhile;
    their latencies come back apart (the last item)."""
    latencies: list[float] = []
    background_latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client(offset: int, attributes: str | None, measured: bool):
        connection = Client(url)
        own, bad, i = [], 0, offset
        while time.monotonic() < deadline:
            start = time.perf_counter()
            if connection.post(bodies[i % len(bodies)], attributes):
                own.append(time.perf_counter() - start)
            else:
                bad += 1
            i += 1
        connection.close()
        with lock:
            (latencies if measured else background_latencies).extend(own)
            errors[0] += bad

    threads = [threading.Thread(target=client, args=(n, attributes, True)) for n in range(concurrency)]
    if background:
        threads += [threading.Thread(target=client, args=(n, background, False)) for n in range(concurrency)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0], time.monotonic() - start, background_latencies


def wait_for(predicate, timeout: float, container) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(requests.RequestException):
            if predicate():
                return time.monotonic() - start
        container.reload()
        if container.status == "exited":
            raise RuntimeError("server exited:\n" + container.logs().decode(errors="replace")[-3000:])
        time.sleep(0.05)
    raise RuntimeError(f"not ready within {timeout} s:\n" + container.logs().decode(errors="replace")[-3000:])


# --- stacks -----------------------------------------------------------------------------


@dataclass
class Server:
    stack: str  # ours, torchserve, mms-toolkit, or torchserve-shipped / mms-toolkit-shipped
    container: object
    url: str
    cold_start_ping_s: float
    cold_start_first_prediction_s: float
    p50_c1_ms: float
    loads: dict = field(default_factory=dict)  # (concurrency, body set) -> accumulated samples
    model_root: str = "ours"  # which /opt/ml tree it serves: ours, or the user's (inference.py)
    peak_rss_mb: float = 0.0
    attributes: str | None = None  # a request variant: custom attributes of every measured request
    background: str | None = None  # ... and of the unmeasured clients sent meanwhile


def is_ours(stack: str) -> bool:
    """Our server: ours, its variants (ours-NAME) and its request variants (ours+NAME)."""
    return stack == "ours" or stack.startswith(("ours-", "ours+"))


def runs_script(stack: str) -> bool:
    """Stacks serving the user's inference.py: the anchors and ours-script(-NAME)."""
    return not is_ours(stack) or stack == "ours-script" or stack.startswith("ours-script-")


def request_variants(server: Server, specs: list[str], photo: bytes, mixed: bool) -> list[Server]:
    """Pseudo-stacks on `server`'s container: ours+NAME (every request with the attributes)
    and ours+plain|NAME (plain requests while as many NAME requests run)."""
    variants = []
    for spec in specs:
        name, _, attributes = spec.partition(":")
        assert post(server.url, photo, attributes=attributes), f"{name}: {attributes} was refused"
        client, sequential = Client(server.url), []
        for _ in range(20):
            start = time.perf_counter()
            client.post(photo, attributes)
            sequential.append(time.perf_counter() - start)
        client.close()
        common = dict(container=server.container, url=server.url, cold_start_ping_s=0.0, cold_start_first_prediction_s=0.0)
        variants.append(Server(f"{server.stack}+{name}", p50_c1_ms=statistics.median(sequential) * 1000, attributes=attributes, **common))
        if mixed:
            variants.append(Server(f"{server.stack}+plain|{name}", p50_c1_ms=server.p50_c1_ms, background=attributes, **common))
    return variants


def start_server(client, image: str, stack: str, model_root: Path, env: dict, bodies: list[bytes], cpu_shares: int | None) -> Server:
    command = ["serve"] if is_ours(stack) else [stack.removesuffix("-shipped")]
    t0 = time.monotonic()
    container = client.containers.run(
        image,
        command,
        detach=True,
        labels={LABEL: "1"},
        environment=env,
        volumes={str(model_root): {"bind": "/opt/ml", "mode": "ro"}},
        ports={"8080/tcp": ("127.0.0.1", None)},
        cpu_shares=cpu_shares,
    )
    ports = None
    while not ports:
        container.reload()
        ports = container.attrs["NetworkSettings"]["Ports"].get("8080/tcp")
        time.sleep(0.05)
    base = f"http://127.0.0.1:{ports[0]['HostPort']}"
    wait_for(lambda: requests.get(base + "/ping", timeout=2).status_code == 200, 300, container)
    ping_s = time.monotonic() - t0
    url = base + "/invocations"
    wait_for(lambda: post(url, bodies[0]), 300, container)
    first_s = time.monotonic() - t0
    if is_ours(stack):  # int8's accuracy guard runs in the background: measure what serves after it
        wait_for(lambda: 'state="running"' not in requests.get(base + "/metrics", timeout=5).text, 600, container)
    client = Client(url)
    for _ in range(10):
        client.post(bodies[0])
    sequential = []
    for i in range(30):
        start = time.perf_counter()
        assert client.post(bodies[i % len(bodies)]), f"{stack}: a sequential request failed"
        sequential.append(time.perf_counter() - start)
    client.close()
    return Server(stack, container, url, ping_s, first_s, statistics.median(sequential) * 1000)


def stack_env(stack: str, ours_env: dict, variants: dict[str, dict]) -> dict:
    if stack in ("ours", "ours-script"):
        return dict(ours_env)
    if stack.startswith("ours-"):
        return {**ours_env, **variants[stack]}
    if stack.endswith("-shipped"):
        return {}
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def docker_bin() -> str:
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")


def build_on(image: str, folder: str, what: str) -> str:
    """Build HERE/folder/Dockerfile on top of `image` as IMAGE-NAME:bench-FOLDER, lending
    the host's CA to pip as a BuildKit secret (never stored in the image)."""
    tag = image.split(":")[0] + ":bench-" + folder
    command = [docker_bin(), "build", "-q", "-t", tag, "--build-arg", f"BASE_IMAGE={image}", "-f", str(HERE / folder / "Dockerfile")]
    ca = os.environ.get("PIP_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    if ca and Path(ca).is_file():
        command += ["--secret", f"id=pipca,src={ca}"]
    print(f"building {tag} on {image} ({what})", flush=True)
    subprocess.run([*command, str(HERE / folder)], check=True, env={**os.environ, "DOCKER_BUILDKIT": "1"}, stdout=subprocess.DEVNULL)
    return tag


def build_anchors(image: str) -> str:
    return build_on(image, "anchors", "TorchServe + sagemaker-pytorch-inference from PyPI")


def make_models(client, image: str, arch: str, root: Path) -> tuple[Path, Path]:
    """Two /opt/ml trees holding the same weights: ours (model_spec.json + state dict)
    and the user's (the same files plus code/inference.py, as their model.tar.gz has)."""
    ours, user = root / "ours", root / "user"
    for tree in (ours, user):
        (tree / "model").mkdir(parents=True, exist_ok=True)
        os.chmod(tree, 0o777)
        os.chmod(tree / "model", 0o777)
    np.save(ours / "model" / "calibration.npy", calibration_crops(photo_bodies()["photos"]), allow_pickle=False)
    client.containers.run(
        image,
        ["python", "-c", MAKE_MODEL, "/opt/ml/model", arch],
        remove=True,
        labels={LABEL: "1"},
        volumes={str(ours): {"bind": "/opt/ml", "mode": "rw"}},
    )
    shutil.copytree(ours / "model", user / "model", dirs_exist_ok=True)
    (user / "model" / "code").mkdir(exist_ok=True)
    shutil.copy(HERE / "anchors" / "user_inference.py", user / "model" / "code" / "inference.py")
    return ours, user


def calibration_crops(photos: list[bytes], count: int = 64, size: int = 224) -> np.ndarray:
    """The calibration sample a trained artifact carries (vision/engines/calibration.py):
    uint8 crops of real photos at random scales, so `auto` serves what it would serve a
    model our trainer wrote (ONNX Runtime int8 behind its guard on most CPU classes)."""
    rng = np.random.default_rng(0)
    images = [Image.open(io.BytesIO(body)).convert("RGB") for body in photos]
    crops = []
    for i in range(count):
        image = images[i % len(images)]
        scale = rng.uniform(size, 2 * size) / min(image.size)
        resized = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.Resampling.BILINEAR)
        left, top = rng.integers(0, resized.width - size + 1), rng.integers(0, resized.height - size + 1)
        crops.append(np.asarray(resized.crop((left, top, left + size, top + size))))
    return np.stack(crops)


def bare_forward(client, image: str, ours: Path, threads: int, env: dict) -> dict:
    """The engine-bound limit of our server: its engine's bare forward (batch 1, and per
    image at batch 4, the micro-batcher's rows) and the decode + preprocessing of the
    photos, each in one thread, in the serving container."""
    photos = ours / "photos"
    photos.mkdir(exist_ok=True)
    for i, body in enumerate(photo_bodies()["photos"]):
        (photos / f"{i}.jpg").write_bytes(body)
    out = client.containers.run(
        image,
        ["python", "-c", BARE_FORWARD, "/opt/ml/model", str(threads), "/opt/ml/photos"],
        remove=True,
        labels={LABEL: "1"},
        environment=env,
        volumes={str(ours): {"bind": "/opt/ml", "mode": "ro"}},
    ).decode()
    words = out.split("BARE_MS")[1].split()
    return {"bare_ms": float(words[0]), "batch4_ms": float(words[2]), "decode_ms": float(words[4]), "precision": words[6]}


def run_loads(servers: list[Server], bodies: dict[str, list[bytes]], args) -> None:
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        for body_set in args.bodies.split(","):
            for _ in range(args.rounds):
                for server in servers:
                    cpu_before = container_cpu_s(server.container)
                    with RssSampler(server.container) as rss:
                        lat, err, elapsed, background = load_loop(
                            server.url, bodies[body_set], concurrency, args.duration / args.rounds, server.attributes, server.background
                        )
                    slot = server.loads.setdefault(
                        (concurrency, body_set), {"latencies": [], "background": [], "errors": 0, "elapsed": 0.0, "cpu_s": 0.0}
                    )
                    slot["latencies"] += lat
                    slot["background"] += background
                    slot["errors"] += err
                    slot["elapsed"] += elapsed
                    slot["cpu_s"] += container_cpu_s(server.container) - cpu_before
                    server.peak_rss_mb = max(server.peak_rss_mb, rss.peak / 2**20)


def soak(server: Server, bodies: list[bytes], args) -> dict:
    """Our server alone under steady load: does its memory grow?"""
    with RssSampler(server.container, period=5) as rss:
        latencies, errors, elapsed, _ = load_loop(server.url, bodies, args.soak_concurrency, args.soak_seconds)
    head = statistics.mean(rss.samples[: max(1, len(rss.samples) // 10)])
    tail = statistics.mean(rss.samples[-max(1, len(rss.samples) // 10) :])
    return {
        "seconds": args.soak_seconds,
        "concurrency": args.soak_concurrency,
        "rps": len(latencies) / elapsed,
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else float("nan"),
        "errors": errors,
        "rss_start_mb": head / 2**20,
        "rss_end_mb": tail / 2**20,
        "rss_growth_pct": (tail - head) / head * 100,
    }


def summarise(server: Server, arch: str, limit: dict) -> dict:
    loads = {}
    for (concurrency, body_set), slot in server.loads.items():
        lat = slot["latencies"]
        loads[f"c{concurrency}-{body_set}"] = {
            "concurrency": concurrency,
            "bodies": body_set,
            "requests": len(lat),
            "errors": slot["errors"],
            "rps": len(lat) / slot["elapsed"] if slot["elapsed"] else 0.0,
            "p50_ms": percentile(lat, 50) * 1000 if lat else float("nan"),
            "p99_ms": percentile(lat, 99) * 1000 if lat else float("nan"),
            # with background clients (ours+plain|NAME) the container also spent CPU on theirs
            "cpu_ms_per_request": slot["cpu_s"] * 1000 / len(lat) if lat and not server.background else float("nan"),
        }
        if server.background:  # the other side of a mixed load: the requests sent beside the measured ones
            other = slot["background"]
            loads[f"c{concurrency}-{body_set}"].update(
                background_rps=len(other) / slot["elapsed"] if slot["elapsed"] else 0.0,
                background_p50_ms=percentile(other, 50) * 1000 if other else float("nan"),
            )
    summary = {
        "arch": arch,
        "stack": server.stack,
        "cold_start_ping_s": server.cold_start_ping_s,
        "cold_start_first_prediction_s": server.cold_start_first_prediction_s,
        "p50_c1_ms": server.p50_c1_ms,
        "peak_rss_mb": server.peak_rss_mb,
        "loads": loads,
    }
    if server.stack == "ours":
        bare_ms = limit["bare_ms"]
        summary.update(
            bare_forward_ms=bare_ms,
            precision=limit["precision"],
            overhead_pct=(server.p50_c1_ms / bare_ms - 1) * 100,
            engine_limit=limit,
            # one client: its latency against decode + the bare forward (goal <= 1.1x)
            c1_vs_decode_and_forward=server.p50_c1_ms / (limit["decode_ms"] + bare_ms),
            # every core busy: decode + the forward per image at the micro-batcher's rows
            limit_rps=(os.cpu_count() or 1) * 1000 / (limit["decode_ms"] + limit["batch4_ms"]),
        )
    if server.attributes or server.background:
        summary.update(attributes=server.attributes, background_attributes=server.background)
    return summary


# --- report -----------------------------------------------------------------------------


def machine_line() -> str:
    """The CPU model, its vector flags and the load average: printed beside every table."""
    model, flags = "unknown CPU", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    vector = sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} logical cores; flags: {' '.join(vector)}; load average {load}"


SCRIPT_GOAL = 1.3  # ours-script / tuned TorchServe req/s at c>=16, the same inference.py and weights


def print_script_ratios(results: list[dict], arch: str) -> None:
    """Our server on the user's inference.py against the anchors running the same script."""
    anchors = [r for r in results if r["arch"] == arch and not is_ours(r["stack"])]
    for script in (r for r in results if r["arch"] == arch and is_ours(r["stack"]) and runs_script(r["stack"])):
        for anchor in anchors:
            for name, load in sorted(script["loads"].items()):
                other = anchor["loads"].get(name)
                if not other or not other["rps"]:
                    continue
                goal = f" (goal >= {SCRIPT_GOAL}x req/s)" if load["concurrency"] >= 16 else ""
                print(
                    f"  {script['stack']} vs {anchor['stack']:18} {name:12} req/s x{load['rps'] / other['rps']:.2f}, "
                    f"p99 x{load['p99_ms'] / other['p99_ms']:.2f}, CPU/request x{load['cpu_ms_per_request'] / other['cpu_ms_per_request']:.2f}{goal}"
                )


def print_mixed(results: list[dict], arch: str) -> None:
    """Both sides of each mixed load (ours+plain|NAME), each as a share of what it does
    alone: shares adding up to about 1 mean the two kinds only share the cores; well
    below 1, one holds the other up."""
    alone = {r["stack"]: r for r in results if r["arch"] == arch}
    for mixed in (r for r in results if r["arch"] == arch and r.get("background_attributes")):
        base, _, name = mixed["stack"].partition("+plain|")
        plain, variant = alone.get(base), alone.get(f"{base}+{name}")
        for load_name, load in sorted(mixed["loads"].items()):
            if not plain or not variant or load_name not in plain["loads"] or load_name not in variant["loads"]:
                continue
            plain_share = load["rps"] / plain["loads"][load_name]["rps"]
            variant_share = load["background_rps"] / variant["loads"][load_name]["rps"]
            print(
                f"  mixed {load_name}: plain {load['rps']:.1f} req/s (p50 {load['p50_ms']:.0f} ms) beside {name} "
                f"{load['background_rps']:.1f} req/s (p50 {load['background_p50_ms']:.0f} ms): shares of alone "
                f"{plain_share:.2f} + {variant_share:.2f} = {plain_share + variant_share:.2f}"
            )


def print_report(results: list[dict]) -> None:
    print(machine_line())
    header = (
        f"{'arch':9} {'stack':20} {'load':12} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>10} {'err':>4} {'RSS MB':>7} "
        f"{'ping s':>7} {'1st pred s':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for name, load in sorted(r["loads"].items()):
            print(
                f"{r['arch']:9} {r['stack']:20} {name:12} {load['rps']:7.1f} {load['p50_ms']:8.0f} {load['p99_ms']:8.0f} "
                f"{load['cpu_ms_per_request']:10.1f} {load['errors']:4d} "
                f"{r['peak_rss_mb']:7.0f} {r['cold_start_ping_s']:7.1f} {r['cold_start_first_prediction_s']:10.1f}"
            )
    print()
    for arch in sorted({r["arch"] for r in results}):
        print_script_ratios(results, arch)
        ours = next((r for r in results if r["arch"] == arch and r["stack"] == "ours"), None)
        if not ours:
            continue
        print(
            f"{arch} ours: {ours['precision']}, bare forward {ours['bare_forward_ms']:.1f} ms, c=1 p50 {ours['p50_c1_ms']:.1f} ms: "
            f"server overhead {ours['overhead_pct']:+.1f}%; x{ours['c1_vs_decode_and_forward']:.2f} decode + bare forward (goal <= 1.1x)"
        )
        for name, load in sorted(ours["loads"].items()):
            if load["concurrency"] >= 16 and load["bodies"] == "photos":
                print(
                    f"  {name}: {load['rps']:.1f} req/s = {load['rps'] / ours['limit_rps']:.2f} of the engine-bound limit "
                    f"{ours['limit_rps']:.1f} req/s (all cores on decode + the batch-4 forward; goal >= 0.85)"
                )
        for variant in (r for r in results if r["arch"] == arch and r.get("attributes")):
            print(
                f"  {variant['stack']:22} c=1 p50 {variant['p50_c1_ms']:.1f} ms: x{variant['p50_c1_ms'] / ours['p50_c1_ms']:.2f} a plain request"
            )
        print_mixed(results, arch)
        for anchor in (r for r in results if r["arch"] == arch and r["stack"] != "ours" and not r.get("background_attributes")):
            for name, load in sorted(ours["loads"].items()):
                other = anchor["loads"].get(name)
                if not other or not other["rps"]:
                    continue
                goal = f" (goal >= {GOALS.get(arch, 1.5)}x req/s, <= 0.5x p99)" if load["concurrency"] >= 16 else ""
                if anchor["stack"] == "ours-capture":
                    goal = f" (goal <= {CAPTURE_GOAL}x req/s: capture costs at most 3%)"
                print(
                    f"  vs {anchor['stack']:20} {name:12} req/s x{load['rps'] / other['rps']:.2f}, p99 x{load['p99_ms'] / other['p99_ms']:.2f}{goal}"
                )
            print(
                f"  vs {anchor['stack']:20} RSS x{ours['peak_rss_mb'] / anchor['peak_rss_mb']:.2f}, first prediction "
                f"{ours['cold_start_first_prediction_s']:.1f} s vs {anchor['cold_start_first_prediction_s']:.1f} s"
            )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.archs, args.concurrency, args.bodies, args.duration, args.rounds = "resnet18", "16", "photos", 6, 2
    client = docker.from_env(timeout=600)
    client.images.get(args.image)
    stacks = args.stacks.split(",")
    if args.as_shipped:
        stacks += [s + "-shipped" for s in stacks if s != "ours"]
    variants = {}
    for spec in args.variant:
        name, _, assignments = spec.partition(":")
        variants[f"ours-{name}"] = dict(kv.split("=", 1) for kv in assignments.split(",") if kv)
    for spec in args.script_variant:
        name, _, assignments = spec.partition(":")
        variants[f"ours-script-{name}"] = dict(kv.split("=", 1) for kv in assignments.split(",") if kv)
    if args.capture:
        variants["ours-capture"] = dict(CAPTURE_ENV)
    stacks[1:1] = list(variants)  # variants right after ours, before the anchors
    request_specs = [spec for spec in (args.request_variant or REQUEST_VARIANTS) if spec != "none"]
    anchors = build_anchors(args.image) if any(not is_ours(s) for s in stacks) else None
    bodies = photo_bodies()
    ours_env = dict(kv.split("=", 1) for kv in args.ours_env)
    cpus = os.cpu_count() or 1
    threads = max(1, cpus // min(4, cpus))  # what each of our forward workers uses
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
            for arch in args.archs.split(","):
                ours_root, user_root = make_models(client, args.image, arch, Path(tmp) / arch)
                limit = bare_forward(client, args.image, ours_root, threads, ours_env)
                print(
                    f"{arch}: bare forward ({threads} thread(s), {limit['precision']}) {limit['bare_ms']:.1f} ms at batch 1, "
                    f"{limit['batch4_ms']:.1f} ms per image at batch 4; decode + preprocess {limit['decode_ms']:.1f} ms per photo",
                    flush=True,
                )
                servers: list[Server] = []
                soaked = None
                try:
                    for stack in stacks:
                        image = args.image if is_ours(stack) else anchors
                        root = user_root if runs_script(stack) else ours_root
                        env = stack_env(stack, ours_env, variants)
                        servers.append(start_server(client, image, stack, root, env, bodies["photos"], args.cpu_shares))
                        print(f"  {stack}: first prediction after {servers[-1].cold_start_first_prediction_s:.1f} s", flush=True)
                        if stack == "ours" and request_specs:
                            servers += request_variants(servers[-1], request_specs, bodies["photos"][0], not args.no_mixed)
                    run_loads(servers, bodies, args)
                    if args.soak:
                        for server in servers[1:]:  # the soak runs alone
                            if server.container is not servers[0].container:
                                server.container.remove(force=True)
                        soaked = soak(servers[0], bodies["photos"], args)
                        print(
                            f"  soak: {soaked['seconds']:.0f} s at concurrency {soaked['concurrency']}: {soaked['rps']:.1f} req/s, "
                            f"{soaked['errors']} errors, RSS {soaked['rss_start_mb']:.0f} -> {soaked['rss_end_mb']:.0f} MB "
                            f"({soaked['rss_growth_pct']:+.1f}%, goal < 10%)",
                            flush=True,
                        )
                finally:
                    for container in {id(server.container): server.container for server in servers}.values():
                        with contextlib.suppress(docker.errors.NotFound):
                            container.remove(force=True)
                results += [summarise(server, arch, limit) for server in servers]
                if args.soak:
                    results[-len(servers)]["soak"] = soaked
    finally:
        for container in client.containers.list(all=True, filters={"label": LABEL}):
            container.remove(force=True)
    print()
    print_report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

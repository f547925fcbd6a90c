"""Draining and crashes (issue 22) through the real image: SIGTERM under load (`docker
stop -t 30`, as SageMaker scales in) fails no request the server accepted and exits 0
well within the grace; a decode or inference worker process killed by the kernel
(SIGKILL, as the OOM killer does) is replaced while the server keeps answering."""

from __future__ import annotations

import io
import json
import threading
import time
from dataclasses import dataclass

import numpy as np
import requests
from PIL import Image

from tests.support.containers import wait_ping
from tests.support.endpoint import model_root, script_model_root, start_server

CLIENTS = 16
GRACE_S = 30


@dataclass
class Outcome:
    sent: float
    done: float
    status: int | None  # None: no answer (the connection was refused or closed)
    detail: str


class Load:
    """`clients` threads posting `body` back to back until stop(); every outcome kept."""

    def __init__(self, url: str, body: bytes, ctype: str, clients: int):
        self.url, self.body, self.ctype = url, body, ctype
        self.outcomes: list[Outcome] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        while not self.stopping.is_set():
            sent = time.monotonic()
            try:
                response = requests.post(self.url, data=self.body, headers={"Content-Type": self.ctype}, timeout=60)
                self.outcomes.append(Outcome(sent, time.monotonic(), response.status_code, response.text[:200]))
            except requests.RequestException as err:
                self.outcomes.append(Outcome(sent, time.monotonic(), None, f"{type(err).__name__}: {err}"[:300]))
                time.sleep(0.05)

    def stop(self) -> list[Outcome]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=90)
        return self.outcomes

    def answered(self, status: int, after: float = 0.0) -> int:
        return sum(1 for o in self.outcomes if o.status == status and o.sent >= after)


def photo(progressive: bool = False, size=(320, 240)) -> bytes:
    pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85, progressive=progressive)
    return buffer.getvalue()


def access_statuses(container) -> list[int]:
    """Statuses of /invocations in the JSON access log (SM_VISION_ACCESS_LOG=json)."""
    statuses = []
    for line in container.logs(stdout=True, stderr=False).decode(errors="replace").splitlines():
        if line.startswith('{"time"'):
            record = json.loads(line)
            if record["path"] == "/invocations":
                statuses.append(record["status"])
    return statuses


def processes(container) -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process in the container."""
    script = (
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        stat = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()\n"
        "        args = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').replace(b'\\n', b' ').decode(errors='replace')\n"
        "    except OSError:\n"
        "        continue\n"
        "    print(pid, stat[1], args)\n"
    )
    output = container.exec_run(["python", "-c", script]).output.decode()
    return [(int(pid), int(ppid), args) for pid, ppid, args in (line.split(" ", 2) for line in output.splitlines() if line.strip())]


def kill(container, pid: int) -> None:
    assert container.exec_run(["kill", "-9", str(pid)]).exit_code == 0


def models_ready(container) -> int:
    """How many worker processes have logged that their model is loaded."""
    return container.logs(stdout=True, stderr=True).decode(errors="replace").count("model ready in")


def ping(base: str) -> int:
    return requests.get(base + "/ping", timeout=10).status_code


def test_sigterm_under_load_finishes_what_it_accepted_and_exits_0(containers, image, model_store, tmp_path):
    root = model_root(tmp_path, model_store)
    container, base = start_server(containers, image, root, env={"SM_VISION_ACCESS_LOG": "json"})
    wait_ping(base, container)
    load = Load(base + "/invocations", photo(), "image/jpeg", CLIENTS)
    time.sleep(3)
    assert load.answered(200) > 0, load.outcomes[:5]
    stopping = time.monotonic()
    container.stop(timeout=GRACE_S)  # docker stop -t 30: SIGTERM, then SIGKILL once the grace is spent
    took = time.monotonic() - stopping
    outcomes = load.stop()
    container.reload()
    logs = container.logs().decode(errors="replace")
    assert container.attrs["State"]["ExitCode"] == 0, logs[-3000:]
    assert took < GRACE_S / 2, (took, logs[-3000:])
    # Every answer a client got is a prediction or a refusal of a new request; requests
    # after the listener closed were refused at connect, never accepted and failed.
    answered = [o for o in outcomes if o.status is not None]
    assert {o.status for o in answered} <= {200, 503}, [o for o in answered if o.status not in (200, 503)]
    assert any(o.status == 200 and o.done > stopping for o in answered), "no request in flight at SIGTERM finished"
    assert set(access_statuses(container)) <= {200, 503}, logs[-3000:]
    assert "shutting down: in-flight requests finished" in logs


def test_a_decode_worker_killed_under_load_is_replaced(containers, image, model_store, tmp_path):
    """Progressive JPEGs are decoded in the decode pool's processes: SIGKILL one (what
    the OOM killer does) while they decode. The request it was decoding is a 507; the
    server keeps answering, /ping says healthy (it can start workers), and a new
    worker takes the dead one's place."""
    root = model_root(tmp_path, model_store)
    container, base = start_server(containers, image, root)
    wait_ping(base, container)
    load = Load(base + "/invocations", photo(progressive=True), "image/jpeg", 4)
    try:
        time.sleep(2)
        forkserver = next(pid for pid, parent, args in processes(container) if parent == 1 and "forkserver" in args)
        workers = [pid for pid, parent, _ in processes(container) if parent == forkserver]
        assert workers, processes(container)
        killed_at = time.monotonic()
        kill(container, workers[0])
        assert ping(base) == 200
        time.sleep(3)
        assert ping(base) == 200
        assert load.answered(200, after=killed_at + 1) > 0
    finally:
        outcomes = load.stop()
    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 507}, [o for o in outcomes if o.status not in (200, 507)]
    alive = [pid for pid, parent, _ in processes(container) if parent == forkserver]
    assert workers[0] not in alive and len(alive) == len(workers), (workers, alive)


USER_MODEL = """
import torch

def model_fn(model_dir):
    return torch.nn.Identity()
"""


def test_an_inference_worker_process_killed_under_load_is_replaced(containers, image, tmp_path):
    """SAGEMAKER_MODEL_SERVER_WORKERS=2 runs a user's model in two server processes:
    SIGKILL one under load; the other keeps answering and a new one takes its place.
    Only the requests the killed process held fail (their connection is reset)."""
    root = script_model_root(tmp_path, USER_MODEL)
    container, base = start_server(containers, image, root, env={"SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    wait_ping(base, container)

    def servers() -> list[int]:
        return [pid for pid, parent, args in processes(container) if parent == 1 and "spawn_main" in args]

    first = servers()
    assert len(first) == 2, processes(container)
    load = Load(base + "/invocations", b"1,2,3\n", "text/csv", 4)
    try:
        time.sleep(2)
        killed_at = time.monotonic()
        kill(container, first[0])
        deadline = time.monotonic() + 120
        while not (len(servers()) == 2 and first[0] not in servers()) and time.monotonic() < deadline:
            assert ping(base) in (200, 503)  # 503: the replacement answered while it loads its model
            time.sleep(0.5)
        assert len(servers()) == 2 and first[0] not in servers(), processes(container)
        time.sleep(3)
        assert load.answered(200, after=killed_at + 1) > 0
    finally:
        outcomes = load.stop()
    assert {o.status for o in outcomes if o.status is not None} <= {200, 503}, outcomes[-5:]
    lost = [o for o in outcomes if o.status is None]
    assert all(o.sent < killed_at + 1 for o in lost), lost[:5]
    assert len(lost) <= 4, lost
    # Once the replacement has loaded its model (it answers 503 until then), every request is
    # answered. Pings alone cannot tell: the surviving worker may accept all of them while the
    # replacement is busy importing, so wait for the third "model ready" line in the log.
    ready_by = time.monotonic() + 120
    while models_ready(container) < 3 and time.monotonic() < ready_by:
        time.sleep(0.5)
    assert models_ready(container) == 3, container.logs()[-3000:]
    for _ in range(10):
        assert requests.post(base + "/invocations", data=b"1,2,3\n", headers={"Content-Type": "text/csv"}, timeout=30).status_code == 200

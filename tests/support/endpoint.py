"""The image's server as container tests talk to it: an /opt/ml tree serving one of the
model_store fixture's models, the server started on it, requests to it, the shape of
every prediction, and a loopback helper inside the server's container for URL inputs.
requests, Pillow and the standard library only (both test venvs have them)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import requests
from PIL import Image

from tests.support.containers import host_port, mount, opt_ml

CLASSES = ("class_0", "class_1", "class_2")  # the classes of the model_store fixture's models
IMG = Image.new("RGB", (80, 60), (200, 30, 30))


def model_root(tmp_path: Path, store: Path, name: str = "r18") -> Path:
    """An /opt/ml tree whose model/ holds a copy of store/name."""
    root = opt_ml(tmp_path)
    shutil.rmtree(root / "model")
    shutil.copytree(store / name, root / "model")
    os.chmod(root / "model", 0o777)
    return root


def script_model_root(tmp_path: Path, source: str) -> Path:
    """An /opt/ml tree whose model is a user's script alone (model/code/inference.py
    holding `source`), readable by the unprivileged user `serve` runs as."""
    root = opt_ml(tmp_path)
    code = root / "model" / "code"
    code.mkdir(parents=True)
    (code / "inference.py").write_text(source)
    for path in (root / "model", code):
        path.chmod(0o755)
    (code / "inference.py").chmod(0o644)
    return root


def start_server(containers, image, root: Path, env: dict | None = None, command=("serve",), port="8080/tcp", **run_options):
    container = containers.run(image, list(command), volumes=mount(root), environment=env or {}, ports={port: None}, **run_options)
    base = f"http://127.0.0.1:{host_port(container, port)}"
    return container, base


def post(base, body, ctype, path="/invocations", **kwargs):
    headers = {"Content-Type": ctype, **kwargs.pop("headers", {})}
    return requests.post(base + path, data=body, headers=headers, timeout=30, **kwargs)


def until_ok(send, timeout: float = 120) -> requests.Response:
    """send()'s first 200 response, or its last response once `timeout` has passed. MMS
    answers /ping before its worker has loaded the model and refuses, holds or drops
    requests until then: a connection error or a timeout is one more try (the last one
    raises), so a slow load on a busy machine is waited for, not failed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = send()
        except (requests.ConnectionError, requests.Timeout):
            if time.monotonic() > deadline:
                raise
        else:
            if response.status_code == 200 or time.monotonic() > deadline:
                return response
        time.sleep(1)


def assert_prediction(result: dict, classes=CLASSES, k=3):
    assert set(result) == {"predicted_label", "confidence", "probabilities", "top_k"}
    assert set(result["probabilities"]) == set(classes)
    assert abs(sum(result["probabilities"].values()) - 1) < 1e-4
    assert result["predicted_label"] == result["top_k"][0]["label"]
    assert result["confidence"] == max(result["probabilities"].values())
    assert len(result["top_k"]) == k
    probs = [entry["probability"] for entry in result["top_k"]]
    assert probs == sorted(probs, reverse=True)


# A loopback-only HTTP server run inside the server's container (allow-list it with
# SM_VISION_URL_ALLOW=127.0.0.1:9000): an image to fetch, the same image after 1.5 s
# (a request of many only ends at its deadline), one whose Content-Length is not a
# number, a body dripping a byte every 0.1 s, and redirects to addresses the URL guard
# must refuse.
LOOPBACK_HELPER = r"""
import io, time, http.server
from PIL import Image
buf = io.BytesIO(); Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "PNG"); PNG = buf.getvalue()
REDIRECTS = {"/redirect-metadata": "http://169.254.169.254/latest/meta-data/",
             "/redirect-private": "http://10.1.2.3/x.png",
             "/redirect-loopback": "http://127.0.0.1:8080/ping"}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/slow.png":
            time.sleep(1.5)
        if self.path in ("/img.png", "/slow.png"):
            self.send_response(200); self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG))); self.end_headers(); self.wfile.write(PNG)
        elif self.path == "/odd-length":
            self.send_response(200); self.send_header("Content-Length", "\u00b2"); self.end_headers(); self.wfile.write(PNG)
        elif self.path == "/drip":
            self.send_response(200); self.send_header("Content-Length", "600"); self.end_headers()
            for _ in range(600):
                self.wfile.write(b"x"); self.wfile.flush(); time.sleep(0.1)
        elif self.path in REDIRECTS:
            self.send_response(302); self.send_header("Location", REDIRECTS[self.path])
            self.send_header("Content-Length", "0"); self.end_headers()
        else:
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 9000), H).serve_forever()
"""


def start_loopback_helper(container) -> None:
    """LOOPBACK_HELPER on the container's 127.0.0.1:9000, once it answers."""
    container.exec_run(["python", "-c", LOOPBACK_HELPER], detach=True)
    probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9000/img.png', timeout=1)"
    for _ in range(50):
        if container.exec_run(["python", "-c", probe]).exit_code == 0:
            return
        time.sleep(0.2)
    raise AssertionError("loopback helper did not start")

"""A user's inference.py whose model_fn returns a torch module, through the real image
(serve/user_model.py): after the first request the module's forward runs on ONNX
Runtime fp32, the answers stay eager torch's (to 1e-4), requests it cannot serve still
run eager, /metrics names the engine, and SM_VISION_ENGINE=torch keeps eager."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import requests

from tests.support.containers import wait_exit, wait_for_log, wait_ping
from tests.support.endpoint import post, script_model_root, start_server

SCRIPT = """
import json, torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2)
        )
        self.fc = torch.nn.Linear(32, 4)
        self.labels = ["a", "b", "c", "d"]

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))

def model_fn(model_dir):
    return Net().eval()

def input_fn(body, content_type):
    return torch.tensor(json.loads(body), dtype=torch.float32)

def predict_fn(data, model):
    with torch.no_grad():
        logits = model(data)
    # the user's own attribute, after the forward was taken over
    return {"logits": logits.tolist(), "labels": [model.labels[i] for i in logits.argmax(1).tolist()]}

def output_fn(prediction, accept):
    return json.dumps(prediction)
"""
SWITCHED = r"your model's forward runs on ONNX Runtime fp32 from now on, for inputs of N x 3 x 16 x 16"


def batch(rows: int, side: int = 16, seed: int = 0) -> bytes:
    return json.dumps(np.random.default_rng(seed).normal(size=(rows, 3, side, side)).round(4).tolist()).encode()


def answer(base: str, body: bytes) -> dict:
    response = post(base, body, "application/json")
    assert response.status_code == 200, response.text
    return response.json()


def engine_metric(base: str) -> tuple[str, str] | None:
    """sm_vision_model_engine's engine and precision: only for a forward the server runs."""
    text = requests.get(base + "/metrics", timeout=10).text
    match = re.search(r'sm_vision_model_engine\{[^}]*engine="(\w+)"[^}]*precision="(\w+)"', text)
    return (match.group(1), match.group(2)) if match else None


def test_the_forward_moves_to_onnx_runtime_after_the_first_request_with_the_same_answers(containers, image, tmp_path):
    container, base = start_server(containers, image, script_model_root(tmp_path, SCRIPT))
    wait_ping(base, container)
    assert engine_metric(base) == ("torch", "fp32")
    first = answer(base, batch(2))  # eager; starts the export
    wait_for_log(container, SWITCHED, timeout=240)
    assert engine_metric(base) == ("onnxruntime", "fp32")
    again = answer(base, batch(2))
    assert again["labels"] == first["labels"]
    np.testing.assert_allclose(again["logits"], first["logits"], rtol=1e-4, atol=1e-5)
    assert len(answer(base, batch(5, seed=1))["logits"]) == 5  # any batch size
    assert len(answer(base, batch(1, side=24))["logits"]) == 1  # another image size: eager
    assert "stays on eager torch" not in container.logs().decode(errors="replace")


def test_sm_vision_engine_torch_keeps_the_users_forward_eager(containers, image, tmp_path):
    container, base = start_server(containers, image, script_model_root(tmp_path / "torch", SCRIPT), env={"SM_VISION_ENGINE": "torch"})
    wait_ping(base, container)
    answers = [answer(base, batch(2)) for _ in range(3)]
    time.sleep(8)  # an export, had one started, would be done within this on the tiny model (~1 s quiet)
    assert answers[1:] == answers[:1] * 2
    assert engine_metric(base) is None  # the user's forward, untouched: nothing of ours to name
    assert "ONNX Runtime" not in container.logs().decode(errors="replace")


def test_sigterm_while_the_export_runs_exits_0(containers, image, tmp_path):
    """SIGTERM right after the first request, with the background export still running
    (a ResNet-18 takes seconds to export): the server waits for it and exits 0; a
    process that finalized under a running export died with SIGSEGV (exit 139)."""
    resnet = "import torchvision; torch.manual_seed(0); model = torchvision.models.resnet18(num_classes=4); model.labels = list('abcd')"
    script = SCRIPT.replace("return Net().eval()", resnet + "; return model.eval()")
    container, base = start_server(containers, image, script_model_root(tmp_path, script))
    wait_ping(base, container)
    response = post(base, batch(1, side=64), "application/json")
    assert response.status_code == 200, response.text
    container.kill(signal="SIGTERM")
    code, logs = wait_exit(container, timeout=120)
    assert code == 0, logs[-3000:]

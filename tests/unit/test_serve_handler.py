"""The default handlers for a model that is not ours (AWS's toolkit defaults), the
default TorchScript model_fn, and where the user's script is found."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
import torch

from container import ConfigError
from serve.hooks import find_script
from serve.torch_model import load_torchscript
from tests.support.asgi import request, wait_ready, with_lifespan
from tests.support.payloads import npy_bytes as npy
from tests.support.payloads import png_bytes as png


class Doubler(torch.nn.Module):
    def forward(self, x):
        return x * 2


@pytest.fixture
def scripted_dir(tmp_path):
    directory = tmp_path / "ts"
    directory.mkdir()
    torch.jit.script(Doubler()).save(str(directory / "model.pt"))
    return directory


def test_default_model_fn_loads_the_only_torchscript_file(tmp_path, scripted_dir):
    (scripted_dir / "model.pt").rename(scripted_dir / "weights.pth")
    assert load_torchscript(scripted_dir, torch.device("cpu"))(torch.ones(1)).tolist() == [2.0]
    (scripted_dir / "other.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"exactly one \.pt or \.pth file is required, found \['other.pt', 'weights.pth'\]"):
        load_torchscript(scripted_dir, torch.device("cpu"))
    eager = tmp_path / "eager"
    eager.mkdir()
    torch.save(Doubler().state_dict(), eager / "model.pth")
    with pytest.raises(ConfigError, match="not TorchScript: save with torch.jit.save or provide model_fn"):
        load_torchscript(eager, torch.device("cpu"))


def test_tensor_payloads_and_accept_for_a_user_model(scripted_dir, serve_app):
    app = serve_app(scripted_dir)

    async def body():
        assert await wait_ready(app) == 200
        cases = [
            (b"[[1, 2], [3, 4]]", "application/json", None, b"[[2.0, 4.0], [6.0, 8.0]]"),
            (b"1,2\n3,4\n", "text/csv", "text/csv", b"2.0,4.0\n6.0,8.0\n"),
            (b"[[1, 2]]", "application/json", "application/jsonlines", b"[2.0, 4.0]\n"),
        ]
        for data, ctype, accept, expected in cases:
            headers = [("content-type", ctype)] + ([("accept", accept)] if accept else [])
            status, out = await request(app, "POST", "/invocations", data, headers)
            assert (status, out) == (200, expected), (ctype, accept, out)
        batch = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
        headers = [("content-type", "application/x-npy"), ("accept", "application/x-npy")]
        status, out = await request(app, "POST", "/invocations", npy(batch), headers)
        assert status == 200 and np.array_equal(np.load(io.BytesIO(out)), batch * 2)
        status, out = await request(app, "POST", "/invocations", b"[1]", [("content-type", "application/json"), ("accept", "image/png")])
        assert status == 406 and "text/csv" in json.loads(out)["error"]
        status, out = await request(app, "POST", "/invocations", b"x", [("content-type", "text/plain")])
        assert status == 415
        # An image still works: our default preprocessing feeds the user's model.
        status, out = await request(app, "POST", "/invocations", png(), [("content-type", "image/png")])
        assert status == 200 and np.array(json.loads(out)).shape == (1, 3, 224, 224)

    asyncio.run(with_lifespan(app, body))


def test_a_model_dir_without_spec_or_torchscript_fails_ping_with_the_reason(tmp_path, serve_app):
    directory = tmp_path / "m"
    directory.mkdir()
    torch.save({"w": torch.ones(1)}, directory / "model.pth")
    app = serve_app(directory)

    async def body():
        assert await wait_ready(app) == 500
        status, out = await request(app, "GET", "/ping")
        assert "not TorchScript" in json.loads(out)["error"]

    asyncio.run(with_lifespan(app, body))


def test_find_script_takes_only_the_name_of_an_absolute_host_path(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "transform.py").write_text("")
    assert find_script(model_dir, "/home/me/project/transform.py") == model_dir / "code" / "transform.py"
    assert find_script(model_dir, "transform") == model_dir / "code" / "transform.py"
    submit = tmp_path / "opt_ml_code"
    submit.mkdir()
    (submit / "serve_me.py").write_text("")
    assert find_script(model_dir, "serve_me.py", (submit,)) == submit / "serve_me.py"
    assert find_script(model_dir, "missing.py") is None  # and no inference.py either


PROBE_SCRIPT = """
import traceback
import torch

STACKS = []

class Probe(torch.nn.Module):
    def forward(self, x):
        STACKS.append([f.name for f in traceback.extract_stack() if "/serve/" in f.filename])
        return x

def model_fn(model_dir):
    return Probe()
"""


@pytest.mark.parametrize("predict_fn", ["", "def predict_fn(data, model, context):\n    return model(data)\n"])
def test_the_path_to_model_x_is_one_step_deep(tmp_path, serve_app, predict_fn):
    # Route -> HostedModel.invoke -> (inference pool) Handler.predict -> [the user's
    # predict_fn] -> model(x): nothing of ours between the step and the model.
    model_dir = tmp_path / "m"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text(PROBE_SCRIPT + predict_fn)
    app = serve_app(model_dir)

    async def body():
        assert await wait_ready(app) == 200
        status, out = await request(app, "POST", "/invocations", b"[[1.0]]", [("content-type", "application/json")])
        assert (status, out) == (200, b"[[1.0]]")

    asyncio.run(with_lifespan(app, body))
    import sys

    stacks = sys.modules["sm_vision_user_model"].STACKS
    assert stacks == [["predict"]], stacks

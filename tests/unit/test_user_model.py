"""serve.user_model: a user's torch module served with its forward on ONNX Runtime once a
checked export is in, eager torch in every other case."""

from __future__ import annotations

import time

import pytest
import torch

from serve.user_model import OnnxForward, accelerate


class SmallNet(torch.nn.Module):
    """A user's own class, with an attribute and a method of its own."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2)
        )
        self.fc = torch.nn.Linear(32, 5)
        self.class_names = [f"c{i}" for i in range(5)]

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))

    def name_of(self, index: int) -> str:
        return self.class_names[index]


class Noisy(SmallNet):
    """Computes something the export cannot reproduce: the check must refuse it."""

    def forward(self, x):
        return super().forward(x) + torch.rand(x.shape[0], 5)


class DataDependent(SmallNet):
    """Python control flow on a tensor's value: torch.export cannot trace it."""

    def forward(self, x):
        if x.mean() > 0:
            return super().forward(x)
        return -super().forward(x)


class TwoOutputs(SmallNet):
    def forward(self, x):
        return super().forward(x), self.features(x)


def settled(model, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while model.forward.state in ("eager", "exporting") and time.monotonic() < deadline:
        time.sleep(0.05)
    return model.forward.state


def eager(model, x):
    return type(model).forward(model, x)


def served(model, *shape: int) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.randn(*shape))


def test_a_checked_export_serves_later_calls_of_that_shape_with_any_batch(tmp_path):
    model = SmallNet().eval()
    accelerate(model, "cpu", "auto", 1, tmp_path / "scratch")
    assert isinstance(model.forward, OnnxForward)
    assert model.forward.served_by()[:2] == ("torch", "fp32")
    first = served(model, 1, 3, 16, 16)
    assert first.shape == (1, 5)
    assert settled(model) == "onnxruntime"
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        got = model(x)
        want = eager(model, x)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    assert model.forward.session is not None and model.forward.served_by()[:2] == ("onnxruntime", "fp32")
    # The user's object is untouched otherwise: its class, attributes, methods and weights.
    assert type(model) is SmallNet and model.name_of(2) == "c2" and "fc.weight" in model.state_dict()
    assert not list((tmp_path / "scratch").iterdir())  # the exported file is not kept


def test_calls_the_session_cannot_serve_run_eager(tmp_path):
    model = SmallNet().eval()
    accelerate(model, "cpu", "auto", 1, tmp_path)
    served(model, 1, 3, 16, 16)
    assert settled(model) == "onnxruntime"
    session = model.forward.session
    calls = []
    original = session.logits
    session.logits = lambda batch: calls.append(batch.shape) or original(batch)
    served(model, 2, 3, 16, 16)
    assert calls == [(2, 3, 16, 16)]
    served(model, 1, 3, 24, 24)  # another image size
    x = torch.randn(1, 3, 16, 16)
    with_grad = model(x)  # autograd on: a predict_fn that wants gradients gets eager's
    assert with_grad.requires_grad
    with torch.no_grad():
        model(x.double().float().to(memory_format=torch.channels_last))  # any layout of the same shape fits
    assert calls == [(2, 3, 16, 16), (1, 3, 16, 16)]


@pytest.mark.parametrize("kind", [Noisy, DataDependent])
def test_an_export_that_fails_or_disagrees_leaves_the_model_on_eager_torch(tmp_path, kind, caplog):
    model = kind().eval()
    accelerate(model, "cpu", "auto", 1, tmp_path)
    with torch.no_grad():
        x = torch.ones(1, 3, 16, 16)
        model(x)
        assert settled(model) == "torch"
        assert model.forward.session is None
        if kind is DataDependent:
            assert torch.equal(model(x), eager(model, x)) and torch.equal(model(-x), eager(model, -x))
    assert "stays on eager torch" in caplog.text


def test_a_model_whose_output_is_not_one_tensor_stays_eager(tmp_path):
    model = TwoOutputs().eval()
    accelerate(model, "cpu", "auto", 1, tmp_path)
    logits, features = served(model, 1, 3, 16, 16)
    time.sleep(0.2)
    assert model.forward.state == "eager" and features.shape == (1, 8, 2, 2)


def test_what_is_not_taken_over(tmp_path):
    training = SmallNet()  # model_fn forgot model.eval()
    accelerate(training, "cpu", "auto", 1, tmp_path)
    forced = SmallNet().eval()
    accelerate(forced, "cpu", "torch", 1, tmp_path)  # SM_VISION_ENGINE=torch
    gpu = SmallNet().eval()
    accelerate(gpu, "cuda", "auto", 1, tmp_path)
    hooked = SmallNet().eval()
    hooked.register_forward_hook(lambda module, inputs, output: output * 2)
    accelerate(hooked, "cpu", "auto", 1, tmp_path)
    scripted = torch.jit.script(SmallNet().eval())
    accelerate(scripted, "cpu", "auto", 1, tmp_path)
    for model in (training, forced, gpu, hooked):
        assert "forward" not in vars(model)
    assert not isinstance(scripted.forward, OnnxForward)
    accelerate({"not": "a module"}, "cpu", "auto", 1, tmp_path)  # whatever model_fn returns is served as it is


def test_every_export_in_a_process_runs_on_one_thread(monkeypatch, tmp_path):
    """torch 2.10 crashes a process whose second export runs on another thread than its first."""
    import threading

    from vision.engines import export

    threads = []
    monkeypatch.setattr(export, "_export", lambda module, example, path: threads.append(threading.get_ident()) or path)
    callers = [threading.Thread(target=export.export_module, args=(None, None, tmp_path / f"{i}.onnx")) for i in range(3)]
    for caller in callers:
        caller.start()
        caller.join()
    export.export_module(None, None, tmp_path / "main.onnx")
    assert len(threads) == 4 and len(set(threads)) == 1 and threads[0] != threading.get_ident()

"""A user's torch model with its forward run by ONNX Runtime (docs/serving.md, "Your
model's forward on ONNX Runtime").

AWS's toolkit runs whatever model_fn returns in eager torch. On a CPU the same fp32 math
takes about two thirds of eager's CPU time on ONNX Runtime (ResNet-50, one thread,
docs/benchmarks.md), and on a CPU the forward is nearly all of a request's cost. So when
model_fn returns a torch.nn.Module in eval mode, the server runs on the CPU and
SM_VISION_ENGINE is auto or onnxruntime, the module's forward is taken over:

- the first call with one float32 NCHW tensor and autograd off (predict_fn under
  torch.no_grad or inference_mode, as AWS's default predict_fn) runs eager as always,
  and a copy of the module is exported to ONNX (any batch size) on a background thread;
- the export is checked on that first call's input: ONNX Runtime's output must have
  eager's shape and lie within vision.engines.export.EXPORT_TOLERANCE of it;
- from then on, calls with that input's shape (any batch size) run on ONNX Runtime, in
  fp32, and return a torch tensor.

Anything else runs eager: keyword arguments, other shapes or dtypes, autograd on (a
predict_fn that takes gradients gets them), an output that is not one float32 tensor, a
module with forward hooks. A failed export or check is logged once and leaves the model
on torch for good. The module stays the user's own object, with its class, attributes,
methods and weights: only `forward` on the instance is replaced. SM_VISION_ENGINE=torch
leaves it untouched.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import threading
import time
from pathlib import Path

import torch

from vision.cpu import cpu_class

log = logging.getLogger(__name__)


def accelerate(model, device: str, engine: str, threads: int, scratch: Path | None) -> None:
    """Take over `model`'s forward (see the module docstring) when it qualifies."""
    if engine == "torch" or not device.startswith("cpu") or not isinstance(model, torch.nn.Module):
        return
    reason = unsuitable(model)
    if reason:
        log.info("your model's forward stays on eager torch: %s", reason)
        return
    model.forward = OnnxForward(model, threads, scratch)


def unsuitable(model: torch.nn.Module) -> str | None:
    """Why `model`'s forward cannot be taken over, or None."""
    if isinstance(model, torch.jit.ScriptModule):
        return "it is a TorchScript module"
    if model.training:
        return "model_fn returned it in training mode (call model.eval() to serve it on ONNX Runtime)"
    if model._forward_hooks or model._forward_pre_hooks:
        return "it has forward hooks"
    if "forward" in vars(model):
        return "its forward is already replaced on the instance"
    try:
        import onnxruntime  # noqa: F401 - in the image; absent where someone installed serve/ alone
    except ImportError:
        return "onnxruntime is not installed"
    return None


def servable(batch) -> bool:
    """Whether ONNX Runtime may take a call with this one input: a float32 NCHW tensor on
    the CPU, with autograd off (a predict_fn that takes gradients gets eager's)."""
    return (
        isinstance(batch, torch.Tensor)
        and not torch.is_grad_enabled()
        and batch.dtype == torch.float32
        and batch.device.type == "cpu"
        and batch.dim() == 4
    )


class _Eager(torch.nn.Module):
    """The module's own forward as a module of its own, for the exporter."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, batch):
        return type(self.module).forward(self.module, batch)


class OnnxForward:
    """What replaces `module.forward`: ONNX Runtime once the checked export is in, eager
    otherwise. Thread-safe: the server's inference threads call it at once."""

    def __init__(self, module: torch.nn.Module, threads: int, scratch: Path | None):
        self.module = module
        self.eager = module.forward  # the class's forward, bound to the module
        self.threads, self.scratch = threads, scratch
        self.lock = threading.Lock()
        self.state = "eager"  # eager -> exporting -> onnxruntime, or -> torch (for good)
        self.shape: tuple[int, ...] | None = None  # the per-row input shape the session serves
        self.session = None  # vision.engines.onnx_runtime.OnnxClassifier once checked
        self.cpu_class = cpu_class()

    def __call__(self, *args, **kwargs):
        one_input = not kwargs and len(args) == 1 and servable(args[0])
        if one_input and self.session is not None and tuple(args[0].shape[1:]) == self.shape:
            return torch.from_numpy(self.session.logits(args[0].detach().numpy()))
        output = self.eager(*args, **kwargs)
        if one_input and self.state == "eager" and isinstance(output, torch.Tensor) and output.dtype == torch.float32:
            with self.lock:
                if self.state != "eager":
                    return output
                self.state = "exporting"
            batch, expected = args[0].detach().clone(), output.detach().clone()
            # Not a daemon: a SIGTERM while the export runs then waits for it (seconds)
            # before the interpreter finalizes. A daemon thread left inside the exporter or
            # ONNX Runtime's session set-up at finalization aborted the process (exit 139).
            threading.Thread(target=self.export, args=(batch, expected), name="onnx-export").start()
        return output

    def served_by(self) -> tuple[str, str, str]:
        """(engine, precision, CPU class) for /metrics: onnxruntime once switched, else torch."""
        return "onnxruntime" if self.session is not None else "torch", "fp32", self.cpu_class

    def __deepcopy__(self, memo):
        return None  # a copy of the module (the exporter's) gets no forward of its own: see export

    def export(self, batch: torch.Tensor, expected: torch.Tensor) -> None:
        """Export a copy of the module (the exporter swaps parameters while it traces; the
        module itself keeps serving), check it on the first call, then switch."""
        from vision.engines.export import check_outputs, export_module
        from vision.engines.onnx_runtime import OnnxClassifier

        started = time.monotonic()
        try:
            clone = copy.deepcopy(self.module)
            vars(clone).pop("forward", None)  # the copy's forward is its class's
            example = torch.cat([batch[:1], batch[:1]])  # two rows keep the batch axis dynamic
            if self.scratch is not None:
                self.scratch.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="user-model-", dir=self.scratch) as folder:
                path = export_module(_Eager(clone).eval(), example, Path(folder) / "model.onnx")
                session = OnnxClassifier(path, threads=self.threads, spinning=False)  # read whole: the file may go
            diff = check_outputs(expected.numpy(), session.logits(batch.numpy()), "ONNX Runtime's output differs from eager torch's")
        except Exception as err:  # noqa: BLE001 - whatever the exporter or the check raises, eager keeps serving
            self.state = "torch"
            log.warning("your model's forward stays on eager torch: its ONNX export failed: %s", f"{type(err).__name__}: {err}"[:500])
            return
        self.shape = tuple(batch.shape[1:])
        self.session, self.state = session, "onnxruntime"
        log.info(
            "your model's forward runs on ONNX Runtime fp32 from now on, for inputs of N x %s (exported and checked in %.1f s; "
            "largest relative difference from eager torch %.1e; SM_VISION_ENGINE=torch keeps eager)",
            " x ".join(map(str, self.shape)),
            time.monotonic() - started,
            diff,
        )

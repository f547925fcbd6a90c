"""A trained classifier -> model.onnx (fp32, dynamic batch axis), checked against torch.

The graph is the eval-mode module as torch.export sees it (torch.onnx.export with
dynamo=True, the default exporter since torch 2.9; its optimizer folds BatchNorm into
the convolutions). It outputs logits; the runtime applies softmax, as the torch path
does. The export is refused if ONNX Runtime's output differs from torch's by more than
`EXPORT_TOLERANCE` on the check batch.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from vision.artifact import INT8_FILE, ONNX_FILE, ModelSpec
from vision.models import build_model

__all__ = [
    "INT8_FILE",
    "ONNX_FILE",
    "ExportError",
    "check_export",
    "check_outputs",
    "export_module",
    "export_onnx",
    "load_trained",
]

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# Largest |logit| difference, relative to the largest |logit|, between ONNX Runtime and
# torch. Both run the same fp32 math in other orders (and ONNX Runtime folds BatchNorm):
# measured ~1e-6 on ResNets; a wrong export (a missed op, a swapped layout) is off by O(1).
EXPORT_TOLERANCE = 1e-3


# The exporter's chatter, quieted while it runs: one line per registered torchvision op it
# cannot type (never in a classifier), and its graph passes' progress at INFO.
QUIET_LOGGERS = {"torch.onnx._internal.exporter._schemas": logging.ERROR, "onnx_ir": logging.WARNING, "onnxscript": logging.WARNING}


class ExportError(RuntimeError):
    """The exported model does not compute what the torch model does."""


def load_trained(model_dir: Path) -> tuple[ModelSpec, torch.nn.Module]:
    """The spec and the eval-mode module of a state-dict artifact (vision/artifact.py)."""
    spec = ModelSpec.load(model_dir)
    module = build_model(spec.arch, spec.num_classes)
    module.load_state_dict(torch.load(Path(model_dir) / spec.weights_file, map_location="cpu", weights_only=True))
    return spec, module.eval()


def export_onnx(module: torch.nn.Module, image_size: int, path: Path, check_batch: torch.Tensor | None = None) -> Path:
    """Export `module` (eval mode, float32) for NCHW inputs of `image_size` with any batch
    size, then run `check_batch` (default: 2 seeded random images) through both."""
    module = module.eval()
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    export_module(module, example, path)
    check_export(module, path, example if check_batch is None else check_batch)
    return Path(path)


def export_module(module: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    """`module`'s forward -> ONNX at `path`, for one input shaped as `example` but with any
    batch size (`example` needs at least 2 rows: torch.export specialises a batch of 1).
    Runs on the process's one export thread, whichever thread calls."""
    return _export_thread().submit(_export, module, example, path).result()


_EXPORTER: list[concurrent.futures.ThreadPoolExecutor] = []
_EXPORTER_LOCK = threading.Lock()


def _export_thread() -> concurrent.futures.ThreadPoolExecutor:
    """One thread for every export in the process: on torch 2.10 a torch.export in a
    second thread, after one in another thread, kills the process (segmentation fault,
    reproduced with two threads exporting one after the other), and a server exports
    from its loading thread, a user model's background export, or several models'."""
    with _EXPORTER_LOCK:
        if not _EXPORTER:
            _EXPORTER.append(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="onnx-export"))
        return _EXPORTER[0]


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> Path:
    quieted = {name: logging.getLogger(name) for name in QUIET_LOGGERS}
    levels = {name: logger.level for name, logger in quieted.items()}
    with warnings.catch_warnings():
        # torch.export's deprecation notices about pytree internals, and one warning per
        # torchvision detection op the exporter registers (never in a classifier): not ours.
        warnings.simplefilter("ignore", FutureWarning)
        for name, logger in quieted.items():
            logger.setLevel(QUIET_LOGGERS[name])
        try:
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
        finally:
            for name, logger in quieted.items():
                logger.setLevel(levels[name])
    program.save(str(path))
    return Path(path)


def check_outputs(expected: np.ndarray, got: np.ndarray, what: str) -> float:
    """The largest |difference| of an exported model's outputs from torch's, relative to
    the largest |expected|; ExportError (`what` differ(s) ... by ...) above
    EXPORT_TOLERANCE or when the shapes differ."""
    same_shape = expected.shape == got.shape
    diff = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-6)) if same_shape else float("inf")
    if not diff <= EXPORT_TOLERANCE:
        raise ExportError(f"{what} by {diff:.2e} (relative), above {EXPORT_TOLERANCE:g}")
    return diff


def check_export(module: torch.nn.Module, path: Path, batch: torch.Tensor) -> float:
    """The relative logit difference of the exported model on `batch`; ExportError above
    EXPORT_TOLERANCE."""
    from vision.engines.onnx_runtime import OnnxClassifier

    with torch.inference_mode():
        expected = module(batch).float().numpy()
    got = OnnxClassifier(path, threads=1).logits(batch.numpy().astype(np.float32))
    diff = check_outputs(expected, got, f"{path}: ONNX Runtime's logits differ from torch's")
    log.info("exported %s (ONNX Runtime vs torch: largest relative logit difference %.1e)", path, diff)
    return diff

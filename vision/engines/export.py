"""A trained classifier -> model.onnx (fp32, dynamic batch axis), checked against torch.

The graph is the eval-mode module as torch.export sees it (torch.onnx.export with
dynamo=True, the default exporter since torch 2.9; its optimizer folds BatchNorm into
the convolutions). It outputs logits; the runtime applies softmax, as the torch path
does. The export is refused if ONNX Runtime's output differs from torch's by more than
`EXPORT_TOLERANCE` on the check batch.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from vision.artifact import ModelSpec
from vision.models import build_model

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# Largest |logit| difference, relative to the largest |logit|, between ONNX Runtime and
# torch. Both run the same fp32 math in other orders (and ONNX Runtime folds BatchNorm):
# measured ~1e-6 on ResNets; a wrong export (a missed op, a swapped layout) is off by O(1).
EXPORT_TOLERANCE = 1e-3


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
    schemas_log = logging.getLogger("torch.onnx._internal.exporter._schemas")
    level = schemas_log.level
    with warnings.catch_warnings():
        # torch.export's deprecation notices about pytree internals, and one warning per
        # torchvision detection op the exporter registers (never in a classifier): not ours.
        warnings.simplefilter("ignore", FutureWarning)
        schemas_log.setLevel(logging.ERROR)
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
            schemas_log.setLevel(level)
    program.save(str(path))
    check_export(module, path, example if check_batch is None else check_batch)
    return Path(path)


def check_export(module: torch.nn.Module, path: Path, batch: torch.Tensor) -> float:
    """The relative logit difference of the exported model on `batch`; ExportError above
    EXPORT_TOLERANCE."""
    from vision.engines.onnx_runtime import OnnxClassifier

    with torch.inference_mode():
        expected = module(batch).float().numpy()
    got = OnnxClassifier(path, threads=1).logits(batch.numpy().astype(np.float32))
    diff = float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-6))
    if not diff <= EXPORT_TOLERANCE:
        raise ExportError(f"{path}: ONNX Runtime's logits differ from torch's by {diff:.2e} (relative), above {EXPORT_TOLERANCE:g}")
    log.info("exported %s (ONNX Runtime vs torch: largest relative logit difference %.1e)", path, diff)
    return diff

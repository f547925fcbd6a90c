"""Which engine serves our classifier, and loading it there (docs/serving.md, "Engines
and precision").

    SM_VISION_ENGINE     auto | torch | onnxruntime
    SM_VISION_PRECISION  auto | fp32 | bf16 | fp16 (torch) | int8 (onnxruntime)

`auto` decides, in this order:
  1. the torch-free image has only ONNX Runtime;
  2. a user's inference.py runs on torch (its hooks were written for torch tensors);
  3. a GPU runs torch (in its native precision);
  4. bf16/fp16 asked for runs torch; int8 asked for runs ONNX Runtime;
  5. on a CPU, the CPU's class decides (vision.cpu.AUTO_ENGINE): ONNX Runtime, int8 when
     the artifact carries a calibration sample for the guard, on every class measured so
     far; torch bf16 on AMX (not measured against ONNX Runtime there yet);
  6. a model that carries neither model.onnx nor a calibration sample (trained before
     the trainer wrote them) is served on torch, as it always was;
  0. before all these: a model whose own evaluation transform the torch-free
     preprocessing does not reproduce runs torch, whatever is asked (timm's squash and
     border crop modes; timm's center mode is Pillow's resize and a center crop, the same
     as torchvision's, and goes on as any other model).
Whatever runs a reduced precision, the accuracy guard (vision.guard) falls back to
fp32, logged, when it disagrees with fp32: at warm-up on torch, and for ONNX Runtime
int8 in the background while fp32 serves, unless SM_VISION_WAIT_FOR_GUARD=true
(serve.background_guard). A model that needs torch in the torch-free
image (a user's script, TorchScript, no model.onnx) fails to load with a message naming
the full image, and /ping reports it.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from container import ConfigError, ServeConfig, cpu_count
from serve.machine import has_torch, share_cores, torch_missing
from serve.model import Classifier, calibration_sample, is_torchscript
from vision.artifact import SPEC_FILE, ModelSpec
from vision.cpu import AUTO_ENGINE, OTHER, cpu_class
from vision.engines.preprocess import EvalPreprocess

log = logging.getLogger(__name__)

ENGINE_DIR = "engines"  # under a model's scratch directory: what is exported or quantized at load


def choose_engine(requested: str, precision: str, device: str, spec: ModelSpec, model_dir: Path, hooks: bool, cpu: str) -> str:
    """torch or onnxruntime for our classifier (see the module docstring)."""
    if spec.preprocess != "torchvision" and not torch_free_preprocessing(spec):
        return torch_for_own_preprocessing(requested, precision, spec)
    if not has_torch():
        if requested == "torch" or precision in ("bf16", "fp16"):
            raise torch_missing(f"SM_VISION_ENGINE={requested}, SM_VISION_PRECISION={precision} asks for the torch engine")
        return "onnxruntime"
    if requested == "onnxruntime" and not device.startswith("cpu"):
        raise ConfigError(f"SM_VISION_ENGINE=onnxruntime runs on the CPU, and this server's device is {device} (SM_VISION_DEVICE=cpu)")
    if hooks:
        if requested == "onnxruntime" or precision == "int8":
            raise ConfigError(
                "a user's inference.py runs on the torch engine: unset SM_VISION_ENGINE=onnxruntime / SM_VISION_PRECISION=int8"
            )
        return "torch"
    if requested != "auto":
        return requested
    if precision == "int8":
        if not device.startswith("cpu"):
            raise ConfigError(f"SM_VISION_PRECISION=int8 runs on ONNX Runtime on the CPU, and this server's device is {device}")
        return "onnxruntime"
    if not device.startswith("cpu") or precision in ("bf16", "fp16") or AUTO_ENGINE[cpu] == "torch":
        return "torch"
    if not carries_engines(spec, model_dir):
        log.info("serving on torch: the model carries neither model.onnx nor a calibration sample (trained before the trainer wrote them)")
        return "torch"
    return "onnxruntime"


def torch_free_preprocessing(spec: ModelSpec) -> bool:
    """Whether vision.engines.preprocess reproduces the spec's evaluation transform."""
    try:
        EvalPreprocess.from_spec(spec)
    except ValueError:
        return False
    return True


def torch_for_own_preprocessing(requested: str, precision: str, spec: ModelSpec) -> str:
    """The torch engine for a model whose library brings an evaluation transform the
    torch-free preprocessing does not reproduce (timm's squash and border crop modes): a
    near miss would shift every answer, not fail."""
    why = f"a {spec.preprocess} model with crop_mode={spec.crop_mode!r} is preprocessed as {spec.preprocess} does, on the torch engine"
    if not has_torch():
        raise torch_missing(why)
    if requested == "onnxruntime" or precision == "int8":
        raise ConfigError(f"{why}: unset SM_VISION_ENGINE=onnxruntime / SM_VISION_PRECISION=int8")
    return "torch"


def carries_engines(spec: ModelSpec, model_dir: Path) -> bool:
    """Whether ONNX Runtime can serve the model without guessing: it has model.onnx, or
    trainer's weights and a calibration sample to export and quantize at load."""
    if spec.onnx_file and (model_dir / spec.onnx_file).is_file():
        return True
    weights = model_dir / spec.weights_file
    exportable = weights.suffix != ".pt2" and weights.is_file() and not is_torchscript(weights)
    return exportable and bool(spec.calibration_file) and (model_dir / spec.calibration_file).is_file()


def load_classifier(
    model_dir: Path,
    device="cpu",
    precision: str = "auto",
    engine: str = "torch",
    *,
    threads: int | None = None,
    workers: int = 1,
    scratch: Path | None = None,
    hooks: bool = False,
    wait_for_guard: bool = True,
) -> Classifier:
    """Our artifact in `model_dir` on the engine chosen for these settings. Called from a
    user's model_fn it keeps the torch engine unless told otherwise (`engine`), as hooks
    expect, and leaves torch's threads as the server set them (`threads` None); the server
    passes its resolved settings; `wait_for_guard` False serves fp32 until ONNX Runtime
    int8's guard passes in the background (SM_VISION_WAIT_FOR_GUARD)."""
    spec, device = ModelSpec.load(model_dir), str(device)
    cpu = cpu_class()
    chosen = choose_engine(engine, precision, device, spec, model_dir, hooks, cpu)
    calibration = calibration_sample(model_dir, spec)
    if chosen == "onnxruntime":
        from serve import onnx_model

        scratch = Path(tempfile.mkdtemp(prefix="sm-vision-engines-")) if scratch is None else scratch
        wanted = "fp32" if precision == "auto" and cpu == OTHER else precision  # int8 is measured on x86 classes only
        try:
            threads = threads or max(1, cpu_count() // workers)
            return onnx_model.load(model_dir, spec, wanted, cpu, calibration, scratch, threads, workers, wait_for_guard)
        except Exception as err:
            if engine != "auto" or precision == "int8" or not has_torch():
                raise
            log.warning("serving on torch: ONNX Runtime cannot serve the model: %s", err)
    from serve import torch_model

    if threads is not None:
        share_cores(device, threads)
    return torch_model.load(model_dir, spec, device, precision, cpu, calibration, workers)


def load_default_model(model_dir: Path, config: ServeConfig, scratch: Path | None, hooks: bool):
    """The model when the user's script has no model_fn: ours (model_spec.json), else
    TorchScript (AWS's default model_fn). `config` is resolved."""
    if (model_dir / SPEC_FILE).exists():
        return load_classifier(
            model_dir,
            config.device,
            config.precision,
            config.engine,
            threads=config.threads,
            workers=config.workers,
            scratch=None if scratch is None else scratch / ENGINE_DIR,
            hooks=hooks,
            wait_for_guard=config.wait_for_guard,
        )
    if not has_torch():
        raise torch_missing(f"the model has no {SPEC_FILE}: a TorchScript model (AWS's default model_fn)")
    from serve import torch_model

    share_cores(config.device, config.threads)
    return torch_model.load_torchscript(model_dir, config.device)

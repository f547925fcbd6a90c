"""Load what the trainer wrote (vision/artifact.py) into a ready-to-run Classifier.

/opt/ml/model may hold the files directly or a model.tar.gz (local runs; SageMaker
extracts it for us). The weights file named by the spec may be a state_dict (the
trainer's default), a TorchScript archive or a torch.export program (.pt2).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import torch
from PIL import Image
from torch.fx.experimental.optimization import fuse

from container import ConfigError
from serve.archive import ExtractLimits, extract_model_archive
from vision import precision
from vision.artifact import SPEC_FILE, UNCALIBRATED_TEMPERATURE, ModelSpec
from vision.models import build_model
from vision.presets import eval_transform_for

log = logging.getLogger(__name__)

ARCHIVE = "model.tar.gz"


def prepare_model_dir(model_dir: Path, scratch: Path, limits: ExtractLimits) -> Path:
    """The directory holding the model files: model_dir itself, or `scratch` with
    model_dir/model.tar.gz extracted into it (serve.archive's checked extraction)."""
    archive = model_dir / ARCHIVE
    if not archive.is_file() or (model_dir / SPEC_FILE).exists():
        return model_dir
    extract_model_archive(archive, scratch, limits)
    log.info("extracted %s into %s", archive, scratch)
    return scratch


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def load_module(spec: ModelSpec, weights: Path, device: torch.device) -> torch.nn.Module:
    if not weights.is_file():
        raise ConfigError(f"{weights} is missing (model_spec.json names weights_file={spec.weights_file!r})")
    if weights.suffix == ".pt2":
        module = torch.export.load(str(weights)).module()
    elif _is_torchscript(weights):
        module = torch.jit.load(str(weights), map_location=device)
    else:
        module = build_model(spec.arch, spec.num_classes)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except Exception as err:  # noqa: BLE001 - unpickling and shape errors mean the same here
            raise ConfigError(f"cannot load {weights} into {spec.arch} with {spec.num_classes} classes: {err}") from None
        module = fold_for_inference(module.eval(), spec.arch)
    if hasattr(module, "eval"):
        module.eval()
    return module.to(device)


def fold_for_inference(module: torch.nn.Module, arch: str) -> torch.nn.Module:
    """Fold eval BatchNorm into the preceding conv (FX) and switch to channels-last,
    which oneDNN's CPU convolutions and cuDNN both prefer. Measured here on CPU at
    batch 1: resnet18 1.23x, resnet50 1.12x, efficientnet_b0 1.27x faster, outputs
    equal to 1e-4. An architecture FX cannot trace is served unfolded."""
    try:
        module = fuse(module)
    except Exception as err:  # noqa: BLE001 - tracing failures of any kind: keep the eager model
        log.info("serving %s without BatchNorm folding (FX could not trace it: %s)", arch, err)
    return module.to(memory_format=torch.channels_last)


def module_nbytes(module) -> int:
    """Bytes held by a module's parameters and buffers (0 for anything else)."""
    if not isinstance(module, (torch.nn.Module, torch.jit.ScriptModule)):
        return 0
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def warm_up_images(size: int) -> list[Image.Image]:
    """Deterministic, varied inputs for the warm-up and the precision guard: flat grey,
    a colour gradient, a checkerboard and seeded noise (no data ships with a model)."""
    grey = Image.new("RGB", (size, size), (127, 127, 127))
    ramp = torch.linspace(0, 255, size).to(torch.uint8)
    gradient = torch.stack([ramp.expand(size, size), ramp.expand(size, size).T, ramp.flip(0).expand(size, size)], dim=-1)
    checker = ((torch.arange(size)[:, None] // 8 + torch.arange(size)[None, :] // 8) % 2 * 255).to(torch.uint8)
    noise = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    arrays = (gradient, checker[..., None].expand(size, size, 3), noise)
    return [grey, *(Image.fromarray(a.contiguous().numpy()) for a in arrays)]


class Classifier:
    """The default model: module + the spec's transforms + class names, run in the
    precision chosen for the device (kept only if the guard at warm-up agrees)."""

    def __init__(self, module, spec: ModelSpec, device: torch.device, chosen: precision.Precision | None = None):
        self.module = module
        self.spec = spec
        self.device = device
        self.classes = spec.classes
        self.transform = eval_transform_for(spec)  # timm's own transform for a timm model
        # A multi-label model's classes are independent: a sigmoid each, decided at its threshold.
        self.thresholds = (spec.thresholds or (0.5,) * spec.num_classes) if spec.multi_label else None
        self.precision = chosen or precision.Precision("fp32", device.type)
        self.guard: precision.GuardResult | None = None

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Calibrated softmax of the model on `batch` (multi-label: a sigmoid per class), in
        the served precision."""
        with self.precision.autocast():
            return self.calibrated(self.module(self.prepare(batch))).cpu()

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of model input on the device, channels-last as the folded module's weights."""
        batch = batch.to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax(logits / T) in float32, T the spec's temperature (train.calibration);
        multi-label: a sigmoid per class. T = 1 (every model trained before calibration
        existed) skips the division: the answer is exactly what it always was."""
        logits = logits.float()
        if self.spec.multi_label:
            return torch.sigmoid(logits)
        if self.spec.temperature != UNCALIBRATED_TEMPERATURE:
            logits = logits / self.spec.temperature
        return torch.softmax(logits, dim=1)

    def nbytes(self) -> int:
        return module_nbytes(self.module)

    def warm_up(self) -> None:
        """First forwards (allocations, oneDNN kernel choice) before traffic, and the
        accuracy guard: the reduced precision stays only if it agrees with fp32."""
        batch = torch.stack([self.preprocess(image) for image in warm_up_images(self.spec.image_size)])
        chosen, self.precision = self.precision, precision.Precision("fp32", self.device.type)
        try:  # probabilities runs in fp32 here; the guard runs it again under the chosen autocast
            self.guard = precision.guard(self.probabilities, batch, chosen)
        finally:
            self.precision = self.guard.precision if self.guard is not None else chosen
        self.probabilities(batch[:1])


def load_classifier(model_dir: Path, device: torch.device, precision_name: str = "auto") -> Classifier:
    """`precision_name`: auto (what the device runs natively), fp32, bf16 or fp16."""
    spec = ModelSpec.load(model_dir)
    chosen = precision.choose(precision_name, device)
    return Classifier(load_module(spec, model_dir / spec.weights_file, device), spec, device, chosen)


def load_torchscript(model_dir: Path, device: torch.device):
    """AWS's default model_fn: model.pt, else the only .pt/.pth file, as TorchScript."""
    path = model_dir / "model.pt"
    if not path.is_file():
        found = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.suffix in (".pt", ".pth")) if model_dir.is_dir() else []
        if len(found) != 1:
            raise ConfigError(
                f"{model_dir} has no {SPEC_FILE} (a model trained by this image) and no model_fn in code/inference.py, so the "
                f"default model_fn loads TorchScript: exactly one .pt or .pth file is required, found {found}"
            )
        path = model_dir / found[0]
    if not _is_torchscript(path):
        raise ConfigError(f"{path.name} is not TorchScript: save with torch.jit.save or provide model_fn in code/inference.py")
    return torch.jit.load(str(path), map_location=device).eval()


def load_default_model(model_dir: Path, device: torch.device, precision_name: str):
    """The model when the user's script has no model_fn: ours, else TorchScript."""
    if (model_dir / SPEC_FILE).exists():
        return load_classifier(model_dir, device, precision_name)
    return load_torchscript(model_dir, device)

"""A classifier's logits *and* its penultimate-layer features, from one forward pass.

The features are what the classification head reads: a forward pre-hook on the head
that vision.models.head_name finds (the last Linear, or SqueezeNet's final 1x1 conv)
captures its input. That works for every torchvision classifier and for timm models
too (their head's `fc` is the last Linear and reads the pooled pre-logits), with no
per-architecture code. A 4-D input (a convolutional head) is global-average pooled and
a 3-D one (tokens) averaged over tokens, so features are always N x D.

    tap = PenultimateTap(module)                  # one hook, for the module's lifetime
    logits, features = tap.forward(batch)         # from any number of threads
    tap.close()

The monitor (monitor/), `monitor baseline` and the trainer's baseline use Embedder,
which adds the model's own eval transform and runs in fp32: monitoring compares
features across runs and machines, so they must not depend on a device's autocast.
The server can take a tap on its own module to score requests (vision.baseline).
"""

from __future__ import annotations

import threading
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from container import ConfigError
from vision import imagestats
from vision.artifact import ModelSpec
from vision.baseline import DEFAULT_COMPONENTS, DEFAULT_REFERENCE_SIZE, Baseline, fit_baseline
from vision.models import build_model, head_name
from vision.presets import eval_transform


def pooled(features: torch.Tensor) -> torch.Tensor:
    """The head's input as N x D."""
    if features.dim() == 4:
        return features.mean(dim=(2, 3))
    if features.dim() == 3:
        return features.mean(dim=1)
    return features.flatten(1)


class PenultimateTap:
    """A forward pre-hook on the classification head. Each thread's forward keeps its own
    features (thread-local), so concurrent forwards on one module do not mix them."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.head_name = head_name(module)
        self.head = module.get_submodule(self.head_name)
        self._local = threading.local()
        self._handle = self.head.register_forward_pre_hook(self._capture)

    def _capture(self, _head, args) -> None:
        self._local.features = pooled(args[0]).detach()

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) of one forward pass."""
        self._local.features = None
        logits = self.module(batch)
        features = self._local.features
        if features is None:
            raise RuntimeError(f"the head {self.head_name!r} was not called by the forward pass")
        return logits, features

    def close(self) -> None:
        self._handle.remove()


def logits_and_features(module: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of `module` returning its logits and penultimate features."""
    tap = PenultimateTap(module)
    try:
        return tap.forward(batch)
    finally:
        tap.close()


def _is_archive_module(path: Path) -> bool:
    """TorchScript and torch.export files are zip archives; a state_dict from torch.save is too,
    but holds data.pkl at its top folder and no code."""
    if path.suffix == ".pt2":
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def load_module(model_dir: Path, device: torch.device) -> tuple[nn.Module, ModelSpec]:
    """The trainer's model (model_spec.json + state_dict) in eval mode, unfused: hooks
    need the module tree, which TorchScript and torch.export programs do not expose."""
    spec = ModelSpec.load(model_dir)
    weights = model_dir / spec.weights_file
    if not weights.is_file():
        raise ConfigError(f"{weights} is missing (model_spec.json names weights_file={spec.weights_file!r})")
    if _is_archive_module(weights):
        raise ConfigError(
            f"{weights.name} is a TorchScript or torch.export program: monitoring needs the state_dict the trainer writes "
            "(features come from a hook on the classification head, which compiled programs do not expose)"
        )
    module = build_model(spec.arch, spec.num_classes)
    try:
        module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as err:  # noqa: BLE001 - unpickling and shape errors mean the same here
        raise ConfigError(f"cannot load {weights} into {spec.arch} with {spec.num_classes} classes: {err}") from None
    return module.eval().to(device), spec


class Embedder:
    """PIL images -> (probabilities N x C, features N x D) as float32 numpy arrays: the
    model's eval transform, one fp32 forward per batch."""

    def __init__(self, module: nn.Module, spec: ModelSpec, device: torch.device, batch_size: int = 32):
        self.spec = spec
        self.device = device
        self.batch_size = batch_size
        self.transform = eval_transform(spec.image_size, spec.resize_size, spec.mean, spec.std, spec.interpolation)
        self.tap = PenultimateTap(module)

    @classmethod
    def load(cls, model_dir: Path, device: torch.device, batch_size: int = 32) -> Embedder:
        module, spec = load_module(model_dir, device)
        return cls(module, spec, device, batch_size)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @torch.inference_mode()
    def embed(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        probabilities, features = [], []
        for first in range(0, len(images), self.batch_size):
            batch = torch.stack([self.transform(image) for image in images[first : first + self.batch_size]]).to(self.device)
            logits, feats = self.tap.forward(batch)
            probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            features.append(feats.float().cpu().numpy())
        if not probabilities:
            return np.zeros((0, self.spec.num_classes), np.float32), np.zeros((0, 0), np.float32)
        return np.concatenate(probabilities), np.concatenate(features)


def compute_baseline(
    embedder: Embedder,
    samples: Iterable[tuple[Image.Image, str, int | None]],
    info: Mapping[str, object] | None = None,
    components: int = DEFAULT_COMPONENTS,
    reference_size: int = DEFAULT_REFERENCE_SIZE,
    seed: int = 0,
) -> Baseline:
    """The monitoring baseline of `embedder`'s model on (RGB image, container format,
    true class index or None) samples, streamed a batch at a time. With true classes,
    the baseline also records the model's accuracy on them."""
    probabilities, features, stats, truth = [], [], [], []
    batch: list[Image.Image] = []

    def flush() -> None:
        if batch:
            probs, feats = embedder.embed(batch)
            probabilities.append(probs)
            features.append(feats)
            batch.clear()

    for image, format, label in samples:
        stats.append(imagestats.measure(image, format))
        truth.append(label)
        batch.append(image)
        if len(batch) == embedder.batch_size:
            flush()
    flush()
    if not stats:
        return fit_baseline(np.zeros((0, 1)), np.zeros((0, len(embedder.classes))), [], embedder.classes, info)
    probs = np.concatenate(probabilities)
    info = dict(info or {})
    known = [i for i, label in enumerate(truth) if label is not None]
    if known:
        info["accuracy"] = {
            "images": len(known),
            "top1": float((probs[known].argmax(axis=1) == np.array([truth[i] for i in known])).mean()),
        }
    return fit_baseline(np.concatenate(features), probs, stats, embedder.classes, info, components, reference_size, seed)

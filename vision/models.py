"""Model factory: any torchvision classification architecture by name, head resized.

Weights are never downloaded here: `weights_path` points at a torchvision state-dict
file (from a `pretrained` channel or a baked path). Serving rebuilds the same model
from the saved spec through `build_model`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from container import ConfigError


def list_architectures() -> list[str]:
    # module=torchvision.models lists classification models only (not detection etc.).
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(arch: str, num_classes: int, weights_path: Path | None = None) -> nn.Module:
    """The architecture with random init (or `weights_path`), classifier sized for
    `num_classes`. Pretrained ImageNet files have a 1000-way head: load them before
    the head is replaced."""
    valid = list_architectures()
    if arch not in valid:
        raise ConfigError(f"arch={arch!r} is not a torchvision classification model; choose one of: {', '.join(valid)}")
    model = torchvision.models.get_model(arch, weights=None)
    if weights_path is not None:
        load_pretrained(model, weights_path)
    replace_head(model, num_classes)
    return model


def load_pretrained(model: nn.Module, weights_path: Path) -> None:
    if not weights_path.is_file():
        raise ConfigError(
            f"pretrained weights file {weights_path} does not exist; pass a torchvision "
            "state-dict file (e.g. resnet50-11ad3fa6.pth) in the 'pretrained' channel or "
            "set pretrained-weights to its path"
        )
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ConfigError(f"cannot load pretrained weights {weights_path}: {err}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a checkpoint from torchvision's reference scripts
    state = {k.removeprefix("module."): v for k, v in state.items()}
    head = head_name(model)
    # The file's head may have any class count; it is replaced right after, so skip it.
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in compatible and not k.startswith(head + ".")]
    if missing:
        raise ConfigError(
            f"pretrained weights {weights_path} do not fit this architecture: "
            f"{len(missing)} tensors missing or mis-shaped (first: {missing[0]})"
        )
    model.load_state_dict(compatible, strict=False)


def head_name(model: nn.Module) -> str:
    """Dotted name of the final classification layer (the last Linear, or SqueezeNet's
    final 1x1 conv)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d):
                last = name
    if last is None:
        raise ConfigError(f"cannot find a classification head in {type(model).__name__}")
    return last


def replace_head(model: nn.Module, num_classes: int) -> None:
    name = head_name(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child) if not child.isdigit() else parent[int(child)]
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size)
    if child.isdigit():
        parent[int(child)] = new
    else:
        setattr(parent, child, new)
    # Some architectures (googlenet, inception) also carry aux heads; they are only
    # used in training mode with aux_logits, which get_model(weights=None) leaves off.
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes


def freeze_backbone(model: nn.Module) -> None:
    """Train the classifier head only (fine-tuning from pretrained weights)."""
    head = head_name(model)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith(head + ".")

"""Model factory: any torchvision classification architecture by name, or any timm model
as `timm/<name>`, head resized.

Weights are never downloaded here: `weights_path` points at a file from a `pretrained`
channel or a baked path. For torchvision it is a state-dict file (e.g.
resnet50-11ad3fa6.pth). For timm it is a `.safetensors` or `.pth` file, e.g. the
`model.safetensors` of a Hugging Face Hub snapshot the user uploaded; timm's own loader
reads it (its per-model checkpoint filters, EMA keys, classifier dropped when the class
count differs), and a `config.json` beside it (the Hub snapshot's) supplies the
pretrained config: input size, mean/std, interpolation and crop. Serving rebuilds the
same model from the saved spec through `build_model`.

timm is imported only for `timm/` architectures.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import torch
import torchvision
from torch import nn

from container import ConfigError

TIMM_PREFIX = "timm/"
# Pretrained files a `pretrained` channel may hold, most preferred first: safetensors
# cannot run code when loaded; .bin is what older Hub snapshots call a torch file.
PRETRAINED_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def list_architectures() -> list[str]:
    # module=torchvision.models lists classification models only (not detection etc.).
    return sorted(torchvision.models.list_models(module=torchvision.models))


def is_timm(arch: str) -> bool:
    return arch.startswith(TIMM_PREFIX)


def close_matches(name: str, choices, what: str) -> str:
    """' did you mean a, b?' for a misspelt `name`, or where to look when nothing is close."""
    found = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.6)
    return f"; did you mean {', '.join(found)}?" if found else f"; no {what} is close to it"


def build_model(arch: str, num_classes: int, weights_path: Path | None = None) -> nn.Module:
    """The architecture with random init (or `weights_path`), classifier sized for
    `num_classes`. Pretrained ImageNet files have a 1000-way head: load them before
    the head is replaced."""
    if is_timm(arch):
        return _build_timm(arch.removeprefix(TIMM_PREFIX), num_classes, weights_path)
    valid = list_architectures()
    if arch not in valid:
        hint = close_matches(arch, valid, "torchvision classification model")
        if _timm_has(arch):
            hint = f"; timm has it: arch={TIMM_PREFIX}{arch}"
        raise ConfigError(f"arch={arch!r} is not a torchvision classification model{hint} (timm models: arch={TIMM_PREFIX}<name>)")
    model = torchvision.models.get_model(arch, weights=None)
    if weights_path is not None:
        load_pretrained(model, weights_path)
    replace_head(model, num_classes)
    return model


def _timm_has(name: str) -> bool:
    try:
        import timm
    except ImportError:
        return False
    return timm.is_model(name)


def check_timm_name(name: str) -> None:
    """ConfigError naming close matches unless `name` (optionally `arch.tag`, a
    pretrained tag such as convnext_tiny.fb_in1k) is a timm model."""
    import timm

    if ":" in name:  # hf-hub:..., local-dir:...: sources timm would fetch from; weights come from the channel
        raise ConfigError(
            f"arch={TIMM_PREFIX}{name}: give the timm model name (e.g. timm/convnext_tiny.fb_in1k); "
            "pretrained weights come from the 'pretrained' channel, never from a hub"
        )
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        hint = close_matches(arch, timm.list_models(), "timm model")
        raise ConfigError(f"arch={TIMM_PREFIX}{name}: timm {timm.__version__} has no model {arch!r}{hint}")
    if tag:
        tagged = timm.list_pretrained(f"{arch}.*")
        if name not in tagged:
            hint = close_matches(name, tagged, f"pretrained tag of {arch}")
            raise ConfigError(f"arch={TIMM_PREFIX}{name}: {arch!r} has no pretrained tag {tag!r}{hint}")


def _build_timm(name: str, num_classes: int, weights_path: Path | None) -> nn.Module:
    import timm

    check_timm_name(name)
    if weights_path is None:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    if not weights_path.is_file():
        raise ConfigError(
            f"pretrained weights file {weights_path} does not exist; put the model's .safetensors (or .pth) file, "
            "e.g. a Hugging Face Hub snapshot's model.safetensors, in the 'pretrained' channel"
        )
    # `file` is the highest-priority source timm knows after an in-memory state dict: with
    # it set, timm reads the local file and never looks at a URL or the Hub.
    overlay = {**hub_snapshot_config(weights_path, name), "file": str(weights_path)}
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=num_classes)
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"pretrained weights {weights_path} do not fit {TIMM_PREFIX}{name}: {first[:300]}") from None


def hub_snapshot_config(weights_path: Path, name: str) -> dict:
    """The pretrained config of a Hugging Face Hub snapshot (its config.json beside the
    weights), so input size, mean/std, interpolation, crop and the file's class count
    follow the snapshot rather than timm's default tag; {} when there is none."""
    config_file = weights_path.with_name("config.json")
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{config_file} (beside the pretrained weights) is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        return {}
    architecture = config.get("architecture")
    if architecture and architecture != name.partition(".")[0]:
        raise ConfigError(
            f"the pretrained weights' {config_file} is for timm model {architecture!r}, but arch={TIMM_PREFIX}{name}: "
            f"set arch={TIMM_PREFIX}{architecture} or upload the snapshot of {name}"
        )
    overlay = {k: v for k, v in (config.get("pretrained_cfg") or {}).items() if k not in ("hf_hub_id", "url", "file", "source")}
    if "num_classes" in config:
        overlay["num_classes"] = config["num_classes"]  # the file's head size, for timm's drop-the-classifier check
    return overlay


def find_pretrained_file(directory: Path) -> Path | None:
    """The weights file in a `pretrained` channel: the .safetensors file if there is one,
    else the .pth/.pt/.bin file; None for an empty or missing directory."""
    if not directory.is_dir():
        return None
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in PRETRAINED_SUFFIXES)
    for suffix in PRETRAINED_SUFFIXES:
        found = [p for p in files if p.suffix == suffix]
        if len(found) == 1:
            return found[0]
        if found:
            raise ConfigError(
                f"the 'pretrained' channel holds {len(found)} {suffix} files ({[str(p.relative_to(directory)) for p in found][:5]}); "
                "leave exactly one weights file in it"
            )
    return None


def load_pretrained(model: nn.Module, weights_path: Path) -> None:
    if not weights_path.is_file():
        raise ConfigError(
            f"pretrained weights file {weights_path} does not exist; pass a torchvision "
            "state-dict file (e.g. resnet50-11ad3fa6.pth) in the 'pretrained' channel or "
            "set pretrained-weights to its path"
        )
    try:
        if weights_path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights_path), device="cpu")
        else:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise ConfigError(f"cannot load pretrained weights {weights_path}: {err}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a checkpoint from torchvision's reference scripts
    state = {k.removeprefix("module."): v for k, v in state.items()}
    heads = head_names(model)
    # The file's head may have any class count; it is replaced right after, so skip it.
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in compatible and not any(k.startswith(head + ".") for head in heads)]
    if missing:
        raise ConfigError(
            f"pretrained weights {weights_path} do not fit this architecture: "
            f"{len(missing)} tensors missing or mis-shaped (first: {missing[0]})"
        )
    model.load_state_dict(compatible, strict=False)


def _is_timm_model(model: nn.Module) -> bool:
    return callable(getattr(model, "get_classifier", None)) and callable(getattr(model, "reset_classifier", None))


def head_names(model: nn.Module) -> list[str]:
    """Dotted names of the classification layers: for timm models the modules
    get_classifier() returns (two for distilled models such as DeiT), else the last
    Linear (or SqueezeNet's final 1x1 conv)."""
    if _is_timm_model(model):
        heads = model.get_classifier()
        heads = heads if isinstance(heads, (tuple, list)) else (heads,)
        names = [name for head in heads for name, module in model.named_modules() if module is head and name]
        if len(names) != len(heads) or any(isinstance(model.get_submodule(n), nn.Identity) for n in names):
            raise ConfigError(f"cannot find a classification head in timm model {type(model).__name__}")
        return names
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
    return [last]


def head_name(model: nn.Module) -> str:
    """Dotted name of the (first) final classification layer."""
    return head_names(model)[0]


def replace_head(model: nn.Module, num_classes: int) -> None:
    if _is_timm_model(model):
        model.reset_classifier(num_classes)  # timm knows each model's pooling and head layout
        return
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
    """Train the classifier head(s) only (fine-tuning from pretrained weights)."""
    heads = head_names(model)
    for name, param in model.named_parameters():
        param.requires_grad = any(name.startswith(head + ".") for head in heads)

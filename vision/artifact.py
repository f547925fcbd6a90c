"""The train -> serve contract: what /opt/ml/model holds.

    model.pt         state_dict of the unwrapped model (loads with weights_only=True)
    model_spec.json  ModelSpec: architecture, class names and preprocessing
    monitoring/      the monitoring baseline (optional; vision.baseline writes and reads it):
      baseline.json      summary: classes, label and confidence distributions, image
                         statistics, the PCA and OOD calibration, a content hash
      reference.npz      arrays: the PCA basis, the reference sample of projected features,
                         the OOD calibration scores, per-image predictions and statistics
      statistics.json    the same in Model Monitor's statistics.json shape
      constraints.json   Model Monitor's constraints.json shape, with the monitor's thresholds

Serving rebuilds the model with vision.models.build_model and its transforms with
vision.presets.eval_transform from the spec alone. No torch import here, so host-side
code and serving tests can read specs without it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from container import ConfigError

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "model.pt"
FORMAT_VERSION = 1
MONITORING_DIR = "monitoring"
BASELINE_FILE = f"{MONITORING_DIR}/baseline.json"
REFERENCE_FILE = f"{MONITORING_DIR}/reference.npz"
BASELINE_STATISTICS_FILE = f"{MONITORING_DIR}/statistics.json"
BASELINE_CONSTRAINTS_FILE = f"{MONITORING_DIR}/constraints.json"


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    classes: tuple[str, ...]
    image_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    weights_file: str = WEIGHTS_FILE
    format_version: int = FORMAT_VERSION
    versions: dict[str, str] = field(default_factory=dict)  # torch/torchvision that wrote it

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def save(self, model_dir: Path) -> Path:
        path = model_dir / SPEC_FILE
        data = asdict(self)
        data["num_classes"] = self.num_classes  # for humans and non-Python readers
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: Path) -> ModelSpec:
        path = model_dir / SPEC_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} is missing: {model_dir} was not written by this trainer (or lacks code/inference.py)") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}") from None
        if data.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{path}: format_version {data.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
        try:
            return cls(
                arch=data["arch"],
                classes=tuple(data["classes"]),
                image_size=int(data["image_size"]),
                resize_size=int(data["resize_size"]),
                mean=tuple(data["mean"]),
                std=tuple(data["std"]),
                interpolation=data.get("interpolation", "bilinear"),
                weights_file=data.get("weights_file", WEIGHTS_FILE),
                format_version=data["format_version"],
                versions=dict(data.get("versions", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path} is malformed: {err!r}") from None

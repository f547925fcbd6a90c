"""The train -> serve contract: what /opt/ml/model holds.

    model.pt         state_dict of the unwrapped model (loads with weights_only=True)
    model_spec.json  ModelSpec: architecture, class names, preprocessing and the
                     softmax temperature (train.calibration)
    model.onnx       the same network exported for ONNX Runtime (fp32, dynamic batch;
                     vision/engines/export.py)                                  optional
    model.int8.onnx  its int8 variant, calibrated on calibration.npy
                     (vision/engines/quantize.py); left out when it fails its
                     accuracy check (spec.int8_check)                           optional
    calibration.npy  64 stratified training images as the eval preprocessing crops them
                     (uint8; vision/engines/calibration.py): int8's calibration and the
                     serving accuracy guard's images                            optional
    monitoring/      the monitoring baseline (optional; vision.baseline writes and reads it):
      baseline.json      summary: classes, label and confidence distributions, image
                         statistics, the PCA and OOD calibration, a content hash
      reference.npz      arrays: the PCA basis, the reference sample of projected features,
                         the OOD calibration scores, per-image predictions and statistics
      statistics.json    the same in Model Monitor's statistics.json shape
      constraints.json   Model Monitor's constraints.json shape, with the monitor's thresholds

Serving rebuilds the model with vision.models.build_model and its transforms with
vision.presets.eval_transform_for(spec) from the spec alone. No torch import here, so
host-side code and serving tests can read specs without it.

Fields added after format_version 1 was first written all have defaults that mean what
older files meant, so every model_spec.json ever written still loads, and format_version
stays 1 (an older server reading a newer file ignores the fields it does not know).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from container import ConfigError

SPEC_FILE = "model_spec.json"
WEIGHTS_FILE = "model.pt"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
FORMAT_VERSION = 1
UNCALIBRATED_TEMPERATURE = 1.0  # softmax(logits / 1.0): the logits as the network gives them

# Which library's evaluation transform `preprocess` names: "torchvision" is
# vision.presets.eval_transform (tensor resize, as the trainer has always done); "timm" is
# timm.data.create_transform(is_training=False), so a timm model is served with exactly
# the resize, crop and interpolation timm evaluates it with.
PREPROCESS_LIBRARIES = ("torchvision", "timm")
CROP_MODES = ("center", "squash", "border")  # timm's crop modes; torchvision's is "center"

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
    versions: dict[str, str] = field(default_factory=dict)  # torch/torchvision (and timm) that wrote it
    preprocess: str = "torchvision"  # PREPROCESS_LIBRARIES
    crop_pct: float | None = None  # image_size / resize size, as timm's pretrained config states it
    crop_mode: str = "center"  # CROP_MODES
    multi_label: bool = False  # independent sigmoid per class instead of one softmax
    thresholds: tuple[float, ...] = ()  # multi-label: per-class decision thresholds (empty: 0.5 each)
    dataset: dict = field(default_factory=dict)  # the training data's fingerprint and check summary
    # Served probabilities are softmax(logits / temperature): the trainer fits it on the
    # validation split (train.calibration). Specs written before it existed load with
    # 1.0, which leaves the logits as they are; no value changes which class is on top.
    temperature: float = UNCALIBRATED_TEMPERATURE
    # The CPU engines' files (optional; "" = not in the artifact: written before they
    # existed, or export_onnx=false, or their export failed). Serving exports or quantizes
    # at load what is missing when it can, else serves torch (docs/serving.md).
    onnx_file: str = ""
    int8_file: str = ""
    calibration_file: str = ""
    # The trainer's int8 accuracy check on the validation split (vision/engines/accuracy.py:
    # Int8Check.to_dict, with "passed"); {} = not run. A failed one left model.int8.onnx
    # out, and serving `auto` then runs fp32.
    int8_check: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def int8_failed_check(self) -> bool:
        """The trainer checked int8 against labels and it lost too much accuracy."""
        return self.int8_check.get("passed") is False

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
        temperature = data.get("temperature", UNCALIBRATED_TEMPERATURE)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not (math.isfinite(temperature) and temperature > 0)
        ):
            raise ConfigError(f"{path}: temperature {temperature!r} must be a finite number above 0")
        try:
            spec = cls(
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
                preprocess=data.get("preprocess", "torchvision"),
                crop_pct=None if data.get("crop_pct") is None else float(data["crop_pct"]),
                crop_mode=data.get("crop_mode", "center"),
                multi_label=_boolean(data.get("multi_label", False)),
                thresholds=tuple(float(t) for t in data.get("thresholds", ())),
                dataset=dict(data.get("dataset", {})),
                temperature=float(temperature),
                onnx_file=_file_name(data.get("onnx_file", "")),
                int8_file=_file_name(data.get("int8_file", "")),
                calibration_file=_file_name(data.get("calibration_file", "")),
                int8_check=dict(data.get("int8_check") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path} is malformed: {err!r}") from None
        if spec.preprocess not in PREPROCESS_LIBRARIES:
            raise ConfigError(
                f"{path}: preprocess={spec.preprocess!r} is not supported (expected one of {', '.join(PREPROCESS_LIBRARIES)})"
            )
        if spec.crop_mode not in CROP_MODES:
            raise ConfigError(f"{path}: crop_mode={spec.crop_mode!r} is not supported (expected one of {', '.join(CROP_MODES)})")
        if spec.thresholds and len(spec.thresholds) != spec.num_classes:
            raise ConfigError(f"{path}: {len(spec.thresholds)} thresholds for {spec.num_classes} classes")
        return spec


def _file_name(value) -> str:
    """A file beside model_spec.json: a plain name, never a path out of the model directory."""
    if not isinstance(value, str) or "/" in value or "\\" in value or value in (".", ".."):
        raise ValueError(f"expected a file name in the model directory, got {value!r}")
    return value


def _boolean(value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value

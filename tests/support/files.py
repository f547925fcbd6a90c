"""Files tests write: SageMaker's JSON config files and the like."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


# What the built-in trainer leaves in /opt/ml/model by default: the weights and their
# spec, the CPU engines' files (docs/serving.md, "Engines and precision") and the
# monitoring baseline of the validation split (docs/monitoring.md).
TRAINED_MODEL_FILES = ["calibration.npy", "model.int8.onnx", "model.onnx", "model.pt", "model_spec.json", "monitoring"]

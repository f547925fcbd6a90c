"""int8's accuracy check with labels: the fp32 and the int8 model on held-out images,
scored against their labels. No torch.

The serving guard (vision.guard) compares int8 with fp32 on the calibration crops, the
images int8's ranges were set on, and without labels: it catches a broken kernel or
export, not an int8 model that generalises worse. That needs images the model was not
fitted or calibrated on, and their labels, which only the trainer has: it runs this on
the validation split after quantizing and keeps the int8 model only if it loses at most
`max_drop` accuracy points against fp32 (vision.guard.INT8_MAX_DROP_POINTS;
train/outputs.py). Without it, serving `auto` runs fp32 (docs/serving.md).

Accuracy is the share of right decisions, as served: top-1 for a single-label model;
for a multi-label model, each class's yes/no at its threshold (the spec's thresholds on
the temperature-scaled sigmoid).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from vision.engines.onnx_runtime import OnnxClassifier
from vision.guard import INT8_MAX_DROP_POINTS
from vision.scores import probabilities

# Validation images checked at most. A ResNet-50 at 224 px costs about 0.1 s of one core
# per image here (its fp32 and int8 forwards, benchmarks/engines), so 100 core-seconds.
MAX_IMAGES = 1000


@dataclass(frozen=True)
class Int8Check:
    images: int
    fp32_accuracy: float  # percent
    int8_accuracy: float  # percent
    agreement: float  # percent of images whose served decisions are the same in both
    max_drop: float  # percentage points

    @property
    def drop(self) -> float:
        return self.fp32_accuracy - self.int8_accuracy

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop + 1e-9

    def summary(self) -> str:
        return (
            f"int8 vs fp32 on {self.images} validation images: accuracy {self.int8_accuracy:.2f}% vs {self.fp32_accuracy:.2f}% "
            f"({-self.drop:+.2f} points, the bound is -{self.max_drop:g}), decisions agree on {self.agreement:.2f}%"
        )

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed}

    @classmethod
    def from_dict(cls, data: dict) -> Int8Check:
        """The check as model_spec.json holds it (to_dict; "passed" is derived, and a key this
        version does not know is ignored)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def decisions(logits: np.ndarray, multi_label: bool, thresholds, temperature: float) -> np.ndarray:
    """The served decisions: class indices (N), or a multi-label model's yes/no per class (N x C)."""
    scores = probabilities(logits, temperature, multi_label)
    if not multi_label:
        return scores.argmax(1)
    return scores >= (np.asarray(thresholds, dtype=np.float32) if len(thresholds) else np.float32(0.5))


def check_int8(
    fp32: Path,
    int8: Path,
    crops: np.ndarray,
    labels: np.ndarray,
    normalize: Callable[[np.ndarray], np.ndarray],
    *,
    multi_label: bool = False,
    thresholds=(),
    temperature: float = 1.0,
    max_drop: float = INT8_MAX_DROP_POINTS,
    threads: int = 0,
    batch: int = 32,
) -> Int8Check:
    """Both models on `crops` (the eval crops, N x H x W x 3 uint8, normalized a batch at a
    time by `normalize`: 1000 crops at 224 px are 600 MB as float32) against `labels`
    (class indices, or N x C multi-hot for a multi-label model)."""
    if len(crops) == 0 or len(crops) != len(labels):
        raise ValueError(f"the int8 check needs as many labels as images (and some), got {len(crops)} and {len(labels)}")
    chunks = np.array_split(np.arange(len(crops)), max(1, -(-len(crops) // batch)))
    answers = []
    for path in (fp32, int8):
        session = OnnxClassifier(path, threads=threads)
        logits = np.concatenate([session.logits(normalize(crops[chunk])) for chunk in chunks])
        answers.append(decisions(logits, multi_label, thresholds, temperature))
    labels = np.asarray(labels).astype(bool) if multi_label else np.asarray(labels)
    fp32_answers, int8_answers = answers
    same = (fp32_answers == int8_answers).all(1) if multi_label else fp32_answers == int8_answers
    return Int8Check(
        images=len(crops),
        fp32_accuracy=float((fp32_answers == labels).mean() * 100),
        int8_accuracy=float((int8_answers == labels).mean() * 100),
        agreement=float(same.mean() * 100),
        max_drop=max_drop,
    )

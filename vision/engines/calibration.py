"""The calibration sample: a few real training images, preprocessed, that travel in the
model artifact.

int8 quantization needs the range of every activation on real inputs, and an accuracy
guard needs real inputs to compare engines on; synthetic images (grey, noise) give
neither. The sample is stored as the uint8 crops the eval preprocessing makes (resized
and center-cropped, before normalization): 4x smaller than float32 and exactly what the
model sees, since normalization is fixed by the spec. 64 crops are 9.6 MB at 224 px and
0.2 MB at 32 px. Stored with numpy's own format (np.save, loaded without pickle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.npy"
DEFAULT_COUNT = 64


def stratified_indices(labels: Sequence[int], count: int = DEFAULT_COUNT, seed: int = 0) -> np.ndarray:
    """`count` indices into `labels`, spread over the classes as evenly as they allow
    (round-robin over classes, each class's images in a seeded random order)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == label))) for label in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < min(count, len(labels)):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(int(queue.pop()))
    return np.sort(np.asarray(picked, dtype=np.int64))


def save_calibration(crops: np.ndarray, model_dir: Path) -> Path:
    check_crops(crops)
    path = Path(model_dir) / CALIBRATION_FILE
    np.save(path, np.ascontiguousarray(crops), allow_pickle=False)
    return path


def load_calibration(model_dir: Path, image_size: int | None = None) -> np.ndarray:
    """The stored crops (N x H x W x 3 uint8); ValueError if they are not that, or not
    `image_size` square when given."""
    crops = np.load(Path(model_dir) / CALIBRATION_FILE, allow_pickle=False)
    check_crops(crops, image_size)
    return crops


def check_crops(crops: np.ndarray, image_size: int | None = None) -> None:
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3 or len(crops) == 0:
        raise ValueError(f"calibration sample must be N x H x W x 3 uint8 with N >= 1, got {crops.dtype} {crops.shape}")
    if image_size is not None and crops.shape[1:3] != (image_size, image_size):
        raise ValueError(f"calibration crops are {crops.shape[2]}x{crops.shape[1]}, the model takes {image_size}x{image_size}")

"""One pass over a window's captured items: decode each image with the server's decoder
and limits, measure it, run the model on it in batches, and keep per-image results
(small: a few numbers and the PCA projection per image; the images themselves are
dropped after their batch, except thumbnails of the most unusual few for the report).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from PIL import Image

from container import ConfigError
from monitor.captures import CapturedItem
from vision import images, imagestats
from vision.baseline import Baseline

THUMBNAIL = 96  # pixels, the long side of a report thumbnail
FAILURE_KINDS = {images.ImageTooLarge: "too_large", images.ImageUnsupported: "unsupported", images.ImageUnreadable: "unreadable"}
MAX_FAILURE_EXAMPLES = 5


@dataclass
class Outlier:
    distance: float
    percentile: float
    label: str
    time: datetime
    event_id: str
    thumbnail: Image.Image


@dataclass
class Window:
    classes: tuple[str, ...]
    times: list[datetime] = field(default_factory=list)  # per decoded image
    labels: list[int] = field(default_factory=list)
    max_probability: list[float] = field(default_factory=list)
    projected: list[np.ndarray] = field(default_factory=list)  # per batch: the baseline's embedding, images x (k + 1)
    ood_distance: list[float] = field(default_factory=list)
    image_numeric: list[tuple[float, ...]] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # kind -> decode failures
    failure_examples: list[str] = field(default_factory=list)
    failure_times: list[datetime] = field(default_factory=list)
    compared: int = 0  # images whose captured answer had a label
    agreed: int = 0  # ... that the monitor's model reproduced
    outliers: list = field(default_factory=list)  # heap of (distance, sequence, Outlier)
    seconds: float = 0.0  # decoding + statistics + forward passes

    @property
    def size(self) -> int:
        return len(self.labels)

    @property
    def throughput(self) -> float:
        """Images per second through decoding, statistics and the model."""
        return self.size / self.seconds if self.seconds > 0 else 0.0

    @property
    def failure_count(self) -> int:
        return sum(self.failures.values())

    def projected_array(self, dim: int) -> np.ndarray:
        return np.concatenate(self.projected) if self.projected else np.zeros((0, dim))

    def column(self, name: str) -> np.ndarray:
        values = np.array(self.image_numeric, dtype=np.float64).reshape(-1, len(imagestats.NUMERIC))
        return values[:, imagestats.NUMERIC.index(name)]

    def label_counts(self) -> np.ndarray:
        return np.bincount(np.array(self.labels, dtype=np.int64), minlength=len(self.classes))

    def fail(self, kind: str, message: str, when: datetime) -> None:
        self.failures[kind] += 1
        self.failure_times.append(when)
        if len(self.failure_examples) < MAX_FAILURE_EXAMPLES:
            self.failure_examples.append(message[:200])

    def top_outliers(self) -> list[Outlier]:
        return [entry[2] for entry in sorted(self.outliers, key=lambda entry: -entry[0])]


def _decode(item: CapturedItem, limits: images.ImageLimits) -> tuple[Image.Image, str]:
    if isinstance(item.payload, np.ndarray):
        return images.array_to_rgb(item.payload, limits), "NPY"
    return images.load_rgb(item.payload, limits), imagestats.container_format(item.payload)


def analyse(items: Iterable[CapturedItem], embedder, baseline: Baseline, limits: images.ImageLimits, keep_outliers: int = 16) -> Window:
    """Every evaluable item of `items` through decoder, statistics and model."""
    window = Window(embedder.classes)
    pending: list[tuple[CapturedItem, Image.Image, imagestats.ImageStats]] = []
    sequence = itertools.count()
    started = time.perf_counter()

    def flush() -> None:
        if not pending:
            return
        probabilities, features = embedder.embed([image for _, image, _ in pending])
        if features.shape[1] != baseline.pca.dim:
            raise ConfigError(
                f"the model's features have {features.shape[1]} dimensions, the baseline's {baseline.pca.dim}: "
                "the baseline was computed for another model"
            )
        embedded = baseline.embed(features)
        distances = baseline.ood_distance(embedded=embedded)
        percentiles = baseline.ood_percentile(distances=distances)
        window.projected.append(embedded)
        for (item, image, stats), probs, distance, percentile in zip(pending, probabilities, distances, percentiles, strict=True):
            label = int(probs.argmax())
            window.times.append(item.time)
            window.labels.append(label)
            window.max_probability.append(float(probs[label]))
            window.ood_distance.append(float(distance))
            window.image_numeric.append(stats.numeric())
            window.formats[stats.format] += 1
            if item.captured_label is not None:
                window.compared += 1
                window.agreed += item.captured_label == window.classes[label]
            if keep_outliers and (len(window.outliers) < keep_outliers or distance > window.outliers[0][0]):
                thumbnail = image.copy()
                thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
                outlier = Outlier(float(distance), float(percentile), window.classes[label], item.time, item.event_id, thumbnail)
                entry = (float(distance), next(sequence), outlier)
                if len(window.outliers) < keep_outliers:
                    heapq.heappush(window.outliers, entry)
                else:
                    heapq.heapreplace(window.outliers, entry)
        pending.clear()

    for item in items:
        if item.skipped:
            continue
        if item.failure:
            window.fail("bad_body", item.failure, item.time)
            continue
        try:
            image, format = _decode(item, limits)
        except images.ImageRejected as err:
            window.fail(FAILURE_KINDS.get(type(err), "unreadable"), str(err), item.time)
            continue
        pending.append((item, image, imagestats.measure(image, format)))
        if len(pending) >= embedder.batch_size:
            flush()
    flush()
    window.seconds = time.perf_counter() - started
    return window

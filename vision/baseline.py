"""The monitoring baseline, and the per-image out-of-distribution (OOD) score against it.

A baseline describes what a model saw when it was known to work (a validation split,
or any ImageFolder through `monitor baseline`): its penultimate features
(vision.features), its predictions, and the images' statistics (vision.imagestats).
It lives in the model artifact under monitoring/ (names in vision.artifact).

Features are compared in one small space, the *embedding*: each feature vector is
scaled to unit length (what matters for OOD detection is its direction, Sun et al.
2022), projected on at most `components` principal directions (and at most one per
FIT_IMAGES_PER_COMPONENT fit images, so the PCA does not overfit a small baseline), and
one coordinate is added, its distance from that subspace (what the projection leaves
out). Rabanser et al. (2019) found such a reduction to a few dozen dimensions before
MMD works best.

The baseline images are split in two at random, so that everything the monitor
compares is out-of-sample on both sides:
- the *fit* half estimates the PCA and is the set of *neighbours* of the OOD score;
- the *held-out* half, embedded, is the reference sample for embedding drift (MMD),
  and its OOD distances are the calibration scores of the OOD score.
A PCA overfits the sample it is fitted on, and a point is its own nearest neighbour:
comparing new images with the fit half would raise false alarms, comparing them with
the held-out half does not. Predictions and image statistics involve no fitting and
use every baseline image.

OOD distance: the distance from an image's embedding to its K-th nearest neighbour
among the fit half (deep nearest neighbours, Sun et al. 2022, who take K near 0.1% of
the set: K = max(1, fit images // 1000) here). The per-image
scores, the shared piece (issue #25 shows them per request; the monitor counts them
per window):

    ood_percentile(x) = 100 * #{calibration d < d(x)} / n        0 .. 100
    ood_p_value(x)    = (1 + #{calibration d >= d(x)}) / (n + 1)  a conformal p-value

For an image from the baseline's distribution the p-value is uniform (P(p <= a) <= a,
exactly: calibration and new images are scored against the same fit half, so their
distances are exchangeable; the monitor's OOD check is a rank test of the same fact).

Numpy only (no torch): a server or host tool reads a baseline and scores features
from its own forward pass.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from container import ConfigError
from vision import imagestats, modelmonitor
from vision.artifact import BASELINE_CONSTRAINTS_FILE, BASELINE_FILE, BASELINE_STATISTICS_FILE, MONITORING_DIR, REFERENCE_FILE

BASELINE_VERSION = 1
DEFAULT_COMPONENTS = 32  # Rabanser et al. (2019) reduce to 32 dimensions before MMD
FIT_IMAGES_PER_COMPONENT = 10
FIT_IMAGES_PER_NEIGHBOUR = 1000  # K of the K-th nearest neighbour: 0.1% of the fit half, at least 1
DEFAULT_REFERENCE_SIZE = 1000  # held-out images kept as the MMD reference sample
MAX_FIT_IMAGES = 10_000  # the PCA and the neighbours: at most this many images (seconds, not megabytes)
MIN_IMAGES = 20  # fewer baseline images cannot estimate a PCA and a reference at once
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
CONFIDENCE_BINS = 20  # max-probability histogram bins over [0, 1]


@dataclass(frozen=True, eq=False)
class Pca:
    mean: np.ndarray  # D
    components: np.ndarray  # k x D, orthonormal rows
    variances: np.ndarray  # k, descending
    total_variance: float

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def k(self) -> int:
        return int(self.components.shape[0])

    def embed(self, features: np.ndarray) -> np.ndarray:
        """N x (k + 1): the projection of the centred features, and their distance from it."""
        centred = np.asarray(features, np.float64) - self.mean
        if centred.ndim != 2 or centred.shape[1] != self.dim:
            raise ValueError(f"features of shape {list(centred.shape)}; the baseline's have {self.dim} dimensions")
        projected = centred @ self.components.T
        residual = np.sqrt(np.maximum((centred**2).sum(axis=1) - (projected**2).sum(axis=1), 0.0))
        return np.concatenate([projected, residual[:, None]], axis=1)


def fit_pca(features: np.ndarray, max_components: int = DEFAULT_COMPONENTS) -> Pca:
    """At most `max_components` principal directions (fewer when the sample's rank is lower)."""
    x = np.asarray(features, np.float64)
    n, dim = x.shape
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    variances = singular**2 / max(n - 1, 1)
    total = float(variances.sum())
    if total <= 0:
        raise ConfigError("every baseline image has the same features: the model's penultimate layer is constant (a broken model?)")
    informative = int((variances > total * 1e-9).sum())
    k = max(1, min(max_components, n - 1, dim, informative))
    return Pca(mean, vt[:k].copy(), variances[:k], total)


def unit_length(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def kth_neighbour_distance(queries: np.ndarray, points: np.ndarray, k: int) -> np.ndarray:
    """Euclidean distance from each query to its k-th nearest point (k >= 1)."""
    k = min(k, len(points))
    out = np.empty(len(queries))
    for first in range(0, len(queries), 1024):  # bounds the distance matrix at 1024 x n
        chunk = queries[first : first + 1024]
        squared = (chunk**2).sum(1)[:, None] + (points**2).sum(1)[None, :] - 2.0 * chunk @ points.T
        out[first : first + len(chunk)] = np.sqrt(np.maximum(np.partition(squared, k - 1, axis=1)[:, k - 1], 0.0))
    return out


@dataclass(frozen=True, eq=False)
class Baseline:
    classes: tuple[str, ...]
    pca: Pca
    neighbours: np.ndarray  # fit-half embeddings: what the OOD distance measures to
    k_neighbour: int  # the OOD distance is to the k-th nearest of them
    reference: np.ndarray  # held-out embeddings: the MMD reference sample
    calibration: np.ndarray  # held-out images' OOD distances, ascending
    labels: np.ndarray  # predicted class index of every baseline image
    max_probability: np.ndarray  # its top probability
    image_numeric: np.ndarray  # n x len(imagestats.NUMERIC)
    format_counts: dict[str, int]
    info: dict = field(default_factory=dict)  # source, created, counts, seed, accuracy

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def label_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))

    def image_column(self, name: str) -> np.ndarray:
        return self.image_numeric[:, imagestats.NUMERIC.index(name)]

    # --- the embedding and the per-image OOD score ---
    def embed(self, features: np.ndarray) -> np.ndarray:
        """Penultimate features (N x D) -> the embedding the monitor compares (N x (k + 1))."""
        return self.pca.embed(unit_length(features))

    def ood_distance(self, features: np.ndarray | None = None, embedded: np.ndarray | None = None) -> np.ndarray:
        embedded = self.embed(features) if embedded is None else embedded
        return kth_neighbour_distance(embedded, self.neighbours, self.k_neighbour)

    def ood_percentile(self, features: np.ndarray | None = None, distances: np.ndarray | None = None) -> np.ndarray:
        """Percent of the calibration images that are less unusual (0..100)."""
        distances = self.ood_distance(features) if distances is None else np.asarray(distances)
        return 100.0 * np.searchsorted(self.calibration, distances, side="left") / len(self.calibration)

    def ood_p_value(self, features: np.ndarray | None = None, distances: np.ndarray | None = None) -> np.ndarray:
        """Conformal p-value: small means unlike the baseline."""
        distances = self.ood_distance(features) if distances is None else np.asarray(distances)
        n = len(self.calibration)
        at_least = n - np.searchsorted(self.calibration, distances, side="left")
        return (1.0 + at_least) / (n + 1.0)

    # --- files ---
    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "pca_mean": self.pca.mean.astype(np.float32),
            "pca_components": self.pca.components.astype(np.float32),
            "pca_variances": self.pca.variances,
            "pca_total_variance": np.float64(self.pca.total_variance),
            "neighbours": self.neighbours.astype(np.float32),
            "k_neighbour": np.int64(self.k_neighbour),
            "reference": self.reference.astype(np.float32),
            "calibration": self.calibration,
            "labels": self.labels.astype(np.int32),
            "max_probability": self.max_probability.astype(np.float32),
            "image_numeric": self.image_numeric.astype(np.float64),
        }

    def summary(self, baseline_id: str) -> dict:
        """baseline.json: everything a person or a non-Python reader wants to know."""
        explained = self.pca.variances / self.pca.total_variance
        counts = self.label_counts
        histogram, _ = np.histogram(self.max_probability, bins=CONFIDENCE_BINS, range=(0.0, 1.0))
        return {
            "format_version": BASELINE_VERSION,
            "baseline_id": baseline_id,
            **self.info,
            "images": self.size,
            "classes": list(self.classes),
            "predicted_labels": {name: int(count) for name, count in zip(self.classes, counts, strict=True)},
            "max_probability": {
                "mean": float(self.max_probability.mean()),
                "quantiles": _quantiles(self.max_probability),
                "histogram": {"bins": CONFIDENCE_BINS, "range": [0.0, 1.0], "counts": [int(c) for c in histogram]},
            },
            "image_statistics": {
                name: {
                    "mean": float(self.image_column(name).mean()),
                    "std": float(self.image_column(name).std()),
                    "min": float(self.image_column(name).min()),
                    "max": float(self.image_column(name).max()),
                    "quantiles": _quantiles(self.image_column(name)),
                }
                for name in imagestats.NUMERIC
            },
            "image_formats": dict(sorted(self.format_counts.items())),
            "pca": {
                "feature_dim": self.pca.dim,
                "components": self.pca.k,
                "explained_variance_ratio": float(explained.sum()),
                "fit_images": int(self.info.get("fit_images", 0)),
            },
            "reference_images": int(self.reference.shape[0]),
            "ood": {
                "score": f"distance to the nearest fit-half embedding number {self.k_neighbour} (of {len(self.neighbours)})",
                "calibration_images": len(self.calibration),
                "distance_quantiles": _quantiles(self.calibration),
            },
        }

    def model_monitor_statistics(self, baseline_id: str) -> dict:
        features = [modelmonitor.numeric_feature("max_probability", self.max_probability)]
        features += [
            modelmonitor.numeric_feature(f"image_{name}", self.image_column(name), integral=name in ("width", "height"))
            for name in imagestats.NUMERIC
        ]
        features.append(modelmonitor.string_feature("predicted_label", [self.classes[i] for i in self.labels]))
        features.append(modelmonitor.string_feature("image_format", self.format_counts))
        return modelmonitor.statistics(self.size, features, {"baseline_id": baseline_id, "kind": "baseline"})

    def model_monitor_constraints(self, thresholds: Mapping[str, object] | None) -> dict:
        numeric = ["max_probability", *(f"image_{name}" for name in imagestats.NUMERIC)]
        domains = {"predicted_label": self.classes, "image_format": self.format_counts}
        return modelmonitor.constraints(numeric, domains, dict(thresholds or {}))

    def save(self, model_dir: Path, thresholds: Mapping[str, object] | None = None) -> str:
        """Write monitoring/ into model_dir (replacing one there); returns the baseline id.
        The files are written to a temporary folder first, so a reader never sees half."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.arrays())
        data = buffer.getvalue()
        baseline_id = hashlib.sha256(data).hexdigest()[:16]
        staging = Path(tempfile.mkdtemp(prefix=f".{MONITORING_DIR}-", dir=model_dir))
        try:
            (staging / Path(REFERENCE_FILE).name).write_bytes(data)
            documents = {
                BASELINE_FILE: self.summary(baseline_id),
                BASELINE_STATISTICS_FILE: self.model_monitor_statistics(baseline_id),
                BASELINE_CONSTRAINTS_FILE: self.model_monitor_constraints(thresholds),
            }
            for name, document in documents.items():
                (staging / Path(name).name).write_text(json.dumps(document, indent=2) + "\n")
            staging.chmod(0o755)
            target = model_dir / MONITORING_DIR
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return baseline_id

    @classmethod
    def load(cls, model_dir: Path) -> tuple[Baseline, str]:
        """(baseline, baseline id) from model_dir/monitoring; ConfigError naming what is wrong."""
        summary_path, reference_path = model_dir / BASELINE_FILE, model_dir / REFERENCE_FILE
        if not summary_path.is_file() or not reference_path.is_file():
            raise ConfigError(
                f"{model_dir} has no monitoring baseline ({BASELINE_FILE} and {REFERENCE_FILE}): compute one with "
                f"`monitor baseline --model {model_dir} --data IMAGES` (an ImageFolder of images like the training data)"
            )
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{summary_path} is not valid JSON: {err}") from None
        if summary.get("format_version") != BASELINE_VERSION:
            raise ConfigError(
                f"{summary_path}: format_version {summary.get('format_version')!r} is not supported (expected {BASELINE_VERSION})"
            )
        data = reference_path.read_bytes()
        baseline_id = hashlib.sha256(data).hexdigest()[:16]
        if summary.get("baseline_id") != baseline_id:
            raise ConfigError(
                f"{reference_path} does not belong to {summary_path} (baseline_id {summary.get('baseline_id')!r}, file hash {baseline_id})"
            )
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                pca = Pca(
                    arrays["pca_mean"].astype(np.float64),
                    arrays["pca_components"].astype(np.float64),
                    arrays["pca_variances"].astype(np.float64),
                    float(arrays["pca_total_variance"]),
                )
                info_keys = ("source", "created", "seed", "fit_images", "skipped_files", "accuracy")
                baseline = cls(
                    classes=tuple(summary["classes"]),
                    pca=pca,
                    neighbours=arrays["neighbours"].astype(np.float64),
                    k_neighbour=int(arrays["k_neighbour"]),
                    reference=arrays["reference"].astype(np.float64),
                    calibration=arrays["calibration"].astype(np.float64),
                    labels=arrays["labels"].astype(np.int64),
                    max_probability=arrays["max_probability"].astype(np.float64),
                    image_numeric=arrays["image_numeric"].astype(np.float64),
                    format_counts=dict(summary.get("image_formats", {})),
                    info={key: summary[key] for key in info_keys if key in summary},
                )
        except (KeyError, ValueError, OSError) as err:
            raise ConfigError(f"{reference_path} is malformed: {err!r}") from None
        return baseline, baseline_id


def _quantiles(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    return {f"p{round(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES} if values.size else {}


def fit_baseline(
    features: np.ndarray,
    probabilities: np.ndarray,
    stats: Sequence[imagestats.ImageStats],
    classes: Sequence[str],
    info: Mapping[str, object] | None = None,
    components: int = DEFAULT_COMPONENTS,
    reference_size: int = DEFAULT_REFERENCE_SIZE,
    seed: int = 0,
) -> Baseline:
    """A baseline from the model's outputs on n images (rows in the same order)."""
    features = np.asarray(features, np.float64)
    probabilities = np.asarray(probabilities, np.float64)
    n = features.shape[0]
    if n < MIN_IMAGES:
        raise ConfigError(f"a monitoring baseline needs at least {MIN_IMAGES} images; got {n}")
    if probabilities.shape != (n, len(classes)) or len(stats) != n:
        raise ValueError(
            f"{n} feature rows, probabilities of shape {list(probabilities.shape)}, {len(stats)} image statistics, {len(classes)} classes"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    fit, held = order[: n // 2], order[n // 2 :]
    fit = fit[:MAX_FIT_IMAGES]
    unit = unit_length(features)
    pca = fit_pca(unit[fit], min(components, max(1, len(fit) // FIT_IMAGES_PER_COMPONENT)))
    neighbours = pca.embed(unit[fit])
    k_neighbour = max(1, len(fit) // FIT_IMAGES_PER_NEIGHBOUR)
    held_embedded = pca.embed(unit[held])
    reference = np.arange(len(held)) if len(held) <= reference_size else np.sort(rng.choice(len(held), reference_size, replace=False))
    return Baseline(
        classes=tuple(classes),
        pca=pca,
        neighbours=neighbours,
        k_neighbour=k_neighbour,
        reference=held_embedded[reference],
        calibration=np.sort(kth_neighbour_distance(held_embedded, neighbours, k_neighbour)),
        labels=probabilities.argmax(axis=1),
        max_probability=probabilities.max(axis=1),
        image_numeric=np.array([s.numeric() for s in stats], dtype=np.float64).reshape(n, len(imagestats.NUMERIC)),
        format_counts=dict(Counter(s.format for s in stats)),
        info={**dict(info or {}), "seed": seed, "fit_images": len(fit)},
    )

"""The window against the baseline: every check, its verdict, and the drift over time.

| check              | feature_name              | constraint_check_type | statistic                        |
| ------------------ | ------------------------- | --------------------- | -------------------------------- |
| embedding_drift    | embedding                 | embedding_drift_check | MMD^2, permutation test          |
| label_drift        | predicted_label           | prediction_drift_check| chi-square (effect: TV distance) |
| confidence_drift   | max_probability           | prediction_drift_check| Kolmogorov-Smirnov               |
| ood_rate           | ood_percentile            | ood_check             | Mann-Whitney U on OOD distances  |
| image_<statistic>  | image_<statistic> (x6)    | data_quality_check    | Kolmogorov-Smirnov               |
| decode_failures    | decode_failure_rate       | data_quality_check    | share of images that fail        |
| volume             | record_count              | volume_check          | records in the window            |
| model_agreement    | captured_predicted_label  | model_mismatch_check  | share of answers reproduced      |

The first ten are statistical tests, each at level alpha / 10 (Bonferroni), so a window
drawn from the baseline's distribution raises a false alarm with probability at most
alpha. A KS, label or OOD test also needs its effect to reach min_effect. They run only
with at least min_images decoded images; the last three always run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import numpy as np

from container import ConfigError
from container.monitoring import MonitorSettings
from monitor import stats
from monitor.captures import WindowCounts
from monitor.window import Window
from vision import imagestats
from vision.baseline import Baseline

STATISTICAL_TESTS = 4 + len(imagestats.NUMERIC)
BUCKET_STEPS = [timedelta(minutes=m) for m in (1, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)]
TIME_BUCKETS = 12  # about this many points in the drift-over-time plot
MIN_BUCKET_IMAGES = 5  # fewer images in a bucket: no MMD^2 for it


@dataclass(frozen=True)
class Check:
    name: str
    feature_name: str
    check_type: str
    violated: bool
    description: str
    statistic: float | None = None
    p_value: float | None = None
    level: float | None = None
    effect: float | None = None
    skipped: str | None = None

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def violation(self) -> dict:
        return {"feature_name": self.feature_name, "constraint_check_type": self.check_type, "description": self.description}


def check_permutations(settings: MonitorSettings) -> None:
    """The MMD test must be able to reach its level: 1 / (permutations + 1) <= alpha / tests."""
    level = settings.alpha / STATISTICAL_TESTS
    needed = math.ceil(1.0 / level) - 1
    if settings.permutations < needed:
        raise ConfigError(
            f"SM_VISION_MONITOR_PERMUTATIONS={settings.permutations}: the MMD test's smallest p-value 1/{settings.permutations + 1} "
            f"is above its level alpha/{STATISTICAL_TESTS} = {level:.4g}; use at least {needed}"
        )


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _tested(name, feature, kind, result: stats.StatResult, level, what: str, min_effect: float | None = None) -> Check:
    significant = result.p_value <= level
    large = min_effect is None or (result.effect or 0.0) >= min_effect
    verdict = "drift" if significant and large else "no drift"
    detail = f"{what}: p = {_fmt(result.p_value)} (level {_fmt(level)})"
    if min_effect is not None:
        detail += f", effect {_fmt(result.effect or 0.0)} (minimum {_fmt(min_effect)})"
    return Check(name, feature, kind, significant and large, f"{verdict}: {detail}", result.statistic, result.p_value, level, result.effect)


def _skipped(name, feature, kind, reason: str) -> Check:
    return Check(name, feature, kind, False, f"not tested: {reason}", skipped=reason)


def statistical_checks(window: Window, baseline: Baseline, settings: MonitorSettings, rng: np.random.Generator) -> list[Check]:
    level = settings.alpha / STATISTICAL_TESTS
    specs = [
        ("embedding_drift", "embedding", "embedding_drift_check"),
        ("label_drift", "predicted_label", "prediction_drift_check"),
        ("confidence_drift", "max_probability", "prediction_drift_check"),
        ("ood_rate", "ood_percentile", "ood_check"),
        *((f"image_{name}", f"image_{name}", "data_quality_check") for name in imagestats.NUMERIC),
    ]
    if window.size < settings.min_images:
        reason = f"{window.size} decoded images, fewer than min_images={settings.min_images}"
        return [_skipped(*spec, reason) for spec in specs]
    checks = []
    projected = window.projected_array(baseline.reference.shape[1])
    sample = (
        projected
        if len(projected) <= settings.max_drift_images
        else projected[rng.choice(len(projected), settings.max_drift_images, replace=False)]
    )
    mmd = stats.mmd_test(baseline.reference, sample, settings.permutations, rng)
    what = f"MMD² {_fmt(mmd.statistic)} between {len(sample)} captured and {len(baseline.reference)} reference images ({settings.permutations} permutations)"
    checks.append(_tested(*specs[0], mmd, level, what))
    labels = stats.label_test(baseline.label_counts, window.label_counts())
    checks.append(_tested(*specs[1], labels, level, f"predicted labels chi² {_fmt(labels.statistic)}", settings.min_effect))
    confidence = stats.ks_test(baseline.max_probability, window.max_probability)
    checks.append(_tested(*specs[2], confidence, level, f"max probability KS {_fmt(confidence.statistic)}", settings.min_effect))
    distances = np.array(window.ood_distance)
    flagged = int((baseline.ood_p_value(distances=distances) <= settings.ood_level).sum())
    ood = stats.rank_test(baseline.calibration, distances)
    what = (
        f"a captured image is more unusual than a baseline image with probability {_fmt(ood.statistic)} (0.5: alike); "
        f"{flagged} of {window.size} beyond the baseline's {100 * (1 - settings.ood_level):g}th OOD percentile"
    )
    checks.append(_tested(*specs[3], ood, level, what, settings.min_effect))
    for spec, name in zip(specs[4:], imagestats.NUMERIC, strict=True):
        result = stats.ks_test(baseline.image_column(name), window.column(name))
        captured, reference = np.median(window.column(name)), np.median(baseline.image_column(name))
        what = f"image {name.replace('_', ' ')} KS {_fmt(result.statistic)}, median {_fmt(captured)} (baseline {_fmt(reference)})"
        checks.append(_tested(*spec, result, level, what, settings.min_effect))
    return checks


def operational_checks(window: Window, counts: WindowCounts, settings: MonitorSettings) -> list[Check]:
    attempted = window.size + window.failure_count
    rate = window.failure_count / attempted if attempted else 0.0
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(window.failures.items())) or "none"
    decode = Check(
        "decode_failures",
        "decode_failure_rate",
        "data_quality_check",
        rate > settings.max_decode_failure_rate,
        f"{window.failure_count} of {attempted} captured images failed to decode ({_fmt(rate)}, maximum "
        f"{_fmt(settings.max_decode_failure_rate)}; {kinds})",
        statistic=rate,
    )
    volume = Check(
        "volume",
        "record_count",
        "volume_check",
        counts.records < settings.min_records,
        f"{counts.records} captured records in the window (minimum {settings.min_records}), {window.size} images decoded",
        statistic=float(counts.records),
    )
    if window.compared:
        share = window.agreed / window.compared
        agreement = Check(
            "model_agreement",
            "captured_predicted_label",
            "model_mismatch_check",
            share < settings.min_agreement,
            f"the monitor's model gives the captured answer's label for {window.agreed} of {window.compared} images "
            f"({_fmt(share)}, minimum {_fmt(settings.min_agreement)})",
            statistic=share,
        )
    else:
        agreement = _skipped(
            "model_agreement", "captured_predicted_label", "model_mismatch_check", "no captured JSON answers with a predicted_label"
        )
    return [decode, volume, agreement]


def bucket_width(start: datetime, end: datetime) -> timedelta:
    span = (end - start) / TIME_BUCKETS
    return next((step for step in BUCKET_STEPS if step >= span), BUCKET_STEPS[-1])


def drift_over_time(
    window: Window, counts: WindowCounts, baseline: Baseline, start: datetime | None, end: datetime | None, bandwidth: float
) -> list[dict]:
    """Per time bucket: records, decoded images, decode failures, mean confidence, the
    OOD share and MMD^2 against the reference (same kernel as the window's test)."""
    times = counts.record_times
    if not times:
        return []
    first, last = start or min(times), end or (max(times) + timedelta(seconds=1))
    width = bucket_width(first, last)
    origin = datetime.fromtimestamp(math.floor(first.timestamp() / width.total_seconds()) * width.total_seconds(), first.tzinfo)

    def index(moment: datetime) -> int:
        return int((moment - origin) / width)

    buckets = max(1, index(last - timedelta(microseconds=1)) + 1)
    records = np.bincount([index(t) for t in times], minlength=buckets)[:buckets]
    failures = (
        np.bincount([index(t) for t in window.failure_times], minlength=buckets)[:buckets]
        if window.failure_times
        else np.zeros(buckets, int)
    )
    image_bucket = np.array([index(t) for t in window.times], dtype=np.int64)
    projected = window.projected_array(baseline.reference.shape[1])
    max_probability = np.array(window.max_probability)
    flagged = baseline.ood_percentile(distances=np.array(window.ood_distance)) if window.size else np.zeros(0)
    reference_kernel = stats.gaussian_kernel(baseline.reference, baseline.reference, bandwidth)
    rows = []
    for b in range(buckets):
        members = np.flatnonzero(image_bucket == b)
        row = {
            "start": (origin + b * width).isoformat().replace("+00:00", "Z"),
            "records": int(records[b]),
            "images": int(members.size),
            "decode_failures": int(failures[b]),
        }
        if members.size:
            row["mean_max_probability"] = float(max_probability[members].mean())
            row["mean_ood_percentile"] = float(flagged[members].mean())
        if members.size >= MIN_BUCKET_IMAGES:
            y = projected[members]
            kernel = np.block(
                [
                    [reference_kernel, stats.gaussian_kernel(baseline.reference, y, bandwidth)],
                    [stats.gaussian_kernel(y, baseline.reference, bandwidth), stats.gaussian_kernel(y, y, bandwidth)],
                ]
            )
            row["mmd2"] = stats.mmd2_unbiased(kernel, len(baseline.reference))
        rows.append(row)
    return rows

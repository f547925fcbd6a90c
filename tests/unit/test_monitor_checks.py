"""The checks on synthetic features (no model): the family of tests keeps its false-alarm
rate, each shift trips its own check, and the operational checks and time buckets count
right."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from container.monitoring import MonitorSettings
from monitor import checks, stats
from monitor.captures import WindowCounts
from monitor.window import Window
from vision import imagestats
from vision.baseline import fit_baseline

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)
CLASSES = ("a", "b", "c")


def draw(rng, n, foreign=False, prior=(1 / 3, 1 / 3, 1 / 3), brightness=0.5):
    """Like a ReLU network's outputs: non-negative features clustered by class (three classes
    on the first three axes; foreign images on a fourth)."""
    labels = rng.choice(3, size=n, p=prior)
    features = np.abs(rng.normal(size=(n, 16))) + 4.0 * np.eye(16)[7 if foreign else labels]
    logits = np.eye(3)[labels] * 3 + rng.normal(size=(n, 3))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    stats = [
        imagestats.ImageStats(64, 64, 1.0, float(b), 0.2, float(s), "PNG")
        for b, s in zip(rng.normal(brightness, 0.05, n), rng.normal(0.02, 0.004, n), strict=True)
    ]
    return features, probabilities, stats


def window_of(baseline, features, probabilities, stats):
    window = Window(CLASSES)
    window.times = [T0 + timedelta(seconds=i) for i in range(len(features))]
    window.labels = [int(i) for i in probabilities.argmax(1)]
    window.max_probability = [float(p) for p in probabilities.max(1)]
    window.projected = [baseline.embed(features)]
    window.ood_distance = [float(d) for d in baseline.ood_distance(features)]
    window.image_numeric = [s.numeric() for s in stats]
    return window


@pytest.fixture(scope="module")
def baseline():
    rng = np.random.default_rng(0)
    features, probabilities, stats = draw(rng, 400)
    return fit_baseline(features, probabilities, stats, CLASSES, components=8, reference_size=200)


SETTINGS = MonitorSettings(permutations=199)  # the fewest that reach alpha/10 = 0.005: fast enough to run 100 windows


def violated(baseline, window, seed=0):
    return {c.name for c in checks.statistical_checks(window, baseline, SETTINGS, np.random.default_rng(seed)) if c.violated}


def test_windows_like_the_baseline_raise_few_false_alarms(baseline):
    rng = np.random.default_rng(1)
    alarms = sum(bool(violated(baseline, window_of(baseline, *draw(rng, 100)), seed)) for seed in range(100))
    assert alarms <= 10  # at most alpha = 5% expected; 10 of 100 is far in the tail (binomial sd 2.2)


@pytest.mark.parametrize(
    ("shift", "expected"),
    [
        ({"foreign": True}, {"embedding_drift", "ood_rate"}),
        ({"prior": (0.8, 0.1, 0.1)}, {"label_drift"}),
        ({"brightness": 0.3}, {"image_brightness"}),
    ],
)
def test_each_shift_trips_its_own_check(baseline, shift, expected):
    window = window_of(baseline, *draw(np.random.default_rng(2), 150, **shift))
    found = violated(baseline, window)
    assert expected <= found, found
    assert not (found & {"image_width", "image_height", "image_aspect_ratio"}), found  # nothing shifted sizes


def test_small_windows_are_reported_not_tested(baseline):
    window = window_of(baseline, *draw(np.random.default_rng(3), 5, foreign=True))
    results = checks.statistical_checks(window, baseline, SETTINGS, np.random.default_rng(0))
    assert len(results) == checks.STATISTICAL_TESTS
    assert all(c.skipped and not c.violated for c in results)
    assert "5 decoded images, fewer than min_images=30" in results[0].description


def test_levels_are_bonferroni_corrected(baseline):
    window = window_of(baseline, *draw(np.random.default_rng(4), 60))
    results = checks.statistical_checks(window, baseline, SETTINGS, np.random.default_rng(0))
    assert [c.level for c in results] == [pytest.approx(0.05 / checks.STATISTICAL_TESTS)] * checks.STATISTICAL_TESTS
    assert [c.check_type for c in results[:4]] == ["embedding_drift_check", "prediction_drift_check", "prediction_drift_check", "ood_check"]


def test_a_significant_test_also_needs_a_large_enough_effect():
    tiny = checks._tested(
        "image_brightness", "image_brightness", "data_quality_check", stats.StatResult(0.04, 1e-9, 0.04), 0.005, "KS", 0.1
    )
    large = checks._tested("image_brightness", "image_brightness", "data_quality_check", stats.StatResult(0.3, 1e-9, 0.3), 0.005, "KS", 0.1)
    weak = checks._tested("image_brightness", "image_brightness", "data_quality_check", stats.StatResult(0.3, 0.01, 0.3), 0.005, "KS", 0.1)
    assert (tiny.violated, large.violated, weak.violated) == (False, True, False)
    assert large.description.startswith("drift: KS: p = 1e-09 (level 0.005), effect 0.3 (minimum 0.1)")
    assert tiny.description.startswith("no drift")


def test_operational_checks_count_failures_volume_and_agreement(baseline):
    window = window_of(baseline, *draw(np.random.default_rng(6), 40))
    for _ in range(2):
        window.fail("unreadable", "data is not an image Pillow can read", T0)
    window.compared, window.agreed = 40, 30
    counts = WindowCounts(records=42)
    decode, volume, agreement = checks.operational_checks(window, counts, MonitorSettings())
    assert decode.violated and decode.statistic == pytest.approx(2 / 42) and "unreadable 2" in decode.description
    assert not volume.violated and volume.statistic == 42
    assert agreement.violated and agreement.statistic == pytest.approx(0.75)
    empty = checks.operational_checks(Window(CLASSES), WindowCounts(), MonitorSettings())
    assert [c.violated for c in empty] == [False, True, False] and empty[2].skipped


def test_drift_over_time_buckets(baseline):
    features, probabilities, stats = draw(np.random.default_rng(7), 60)
    window = window_of(baseline, features, probabilities, stats)
    window.times = [T0 + timedelta(minutes=i) for i in range(60)]  # one image a minute for an hour
    counts = WindowCounts(records=60, record_times=list(window.times))
    rows = checks.drift_over_time(window, counts, baseline, T0, T0 + timedelta(hours=1), 1.0)
    assert checks.bucket_width(T0, T0 + timedelta(hours=1)) == timedelta(minutes=5)
    assert len(rows) == 12 and [r["records"] for r in rows] == [5] * 12
    assert rows[0]["start"] == "2026-12-01T15:00:00Z" and rows[1]["start"] == "2026-12-01T15:05:00Z"
    assert all("mmd2" in r and 0 <= r["mean_ood_percentile"] <= 100 for r in rows)

"""The monitoring baseline (vision.baseline), its OOD score, its files, and the image
statistics (vision.imagestats), against hand-computed values."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from container import ConfigError
from container.monitoring import MonitorSettings
from vision import imagestats
from vision.artifact import BASELINE_CONSTRAINTS_FILE, BASELINE_FILE, BASELINE_STATISTICS_FILE, REFERENCE_FILE
from vision.baseline import MIN_IMAGES, Baseline, fit_baseline, fit_pca, kth_neighbour_distance, unit_length


def test_pca_embedding_by_hand():
    # Four points on the axes: variance 2/3 along x and 1/6 along y (n - 1 = 3).
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [0.0, -0.5]])
    pca = fit_pca(x, max_components=1)
    assert pca.k == 1 and abs(pca.components[0] @ [1.0, 0.0]) == pytest.approx(1.0)
    assert pca.variances[0] == pytest.approx(2 / 3)
    # (2, 1): 2 along the component, 1 away from it
    embedded = pca.embed(np.array([[2.0, 1.0]]))[0]
    assert embedded == pytest.approx([2.0 * np.sign(pca.components[0, 0]), 1.0])


def test_kth_neighbour_distance_by_hand():
    points = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    query = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert kth_neighbour_distance(query, points, 1) == pytest.approx([0.0, 3.0])  # (3,4) is 3 from (0,4)
    assert kth_neighbour_distance(query, points, 2) == pytest.approx([3.0, 4.0])
    assert kth_neighbour_distance(query, points, 3) == pytest.approx([4.0, 5.0])
    assert kth_neighbour_distance(query, points, 9) == pytest.approx([4.0, 5.0])  # k is capped at the points there are
    assert unit_length(np.array([[3.0, 4.0], [0.0, 0.0]])) == pytest.approx(np.array([[0.6, 0.8], [0.0, 0.0]]))


def test_pca_keeps_no_more_components_than_the_sample_has():
    rng = np.random.default_rng(0)
    pca = fit_pca(rng.normal(size=(5, 50)), max_components=32)
    assert pca.k == 4  # 5 points span 4 directions
    with pytest.raises(ConfigError, match="constant"):
        fit_pca(np.ones((10, 3)))


def stats_rows(n, rng):
    return [imagestats.ImageStats(64, 48, 64 / 48, float(b), 0.2, 0.01, "PNG") for b in rng.uniform(0.3, 0.7, n)]


def penultimate(rng, n, dim=16, prototype=None):
    """Like a ReLU network's penultimate features: non-negative, clustered by class (three
    classes on the first three axes; `prototype` puts every row on that axis instead)."""
    labels = rng.integers(0, 3, n) if prototype is None else np.full(n, prototype)
    return np.abs(rng.normal(size=(n, dim))) + 4.0 * np.eye(dim)[labels]


def make_baseline(n=200, dim=16, seed=0, classes=("a", "b", "c")):
    rng = np.random.default_rng(seed)
    features = penultimate(rng, n, dim)
    logits = rng.normal(size=(n, len(classes)))
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return fit_baseline(
        features, probabilities, stats_rows(n, rng), classes, {"source": "test"}, components=8, reference_size=60, seed=seed
    ), features


def test_baseline_splits_fit_and_held_out_halves():
    baseline, features = make_baseline()
    assert baseline.size == 200
    assert baseline.info["fit_images"] == 100
    assert len(baseline.calibration) == 100  # the held-out half
    assert baseline.neighbours.shape == (100, 9)  # the fit half, embedded: 8 components + the distance from them
    assert baseline.reference.shape == (60, 9)  # a sample of the held-out half, embedded
    assert np.all(np.diff(baseline.calibration) >= 0)
    assert baseline.label_counts.sum() == 200


def test_ood_percentile_and_p_value_by_hand():
    baseline, _ = make_baseline()
    calibration = baseline.calibration
    below_all, above_all, middle = calibration[0] - 1, calibration[-1] + 1, calibration[49]
    distances = np.array([below_all, above_all, middle])
    assert baseline.ood_percentile(distances=distances) == pytest.approx([0.0, 100.0, 49.0])
    # (1 + #{c >= d}) / (n + 1) with n = 100
    assert baseline.ood_p_value(distances=distances) == pytest.approx([101 / 101, 1 / 101, 52 / 101])


def test_ood_p_values_are_uniform_for_new_images_of_the_same_distribution():
    baseline, _ = make_baseline(n=2000, seed=1)
    rng = np.random.default_rng(5)
    fresh = penultimate(rng, 4000)
    shifted = penultimate(rng, 4000, prototype=7)  # a class the baseline never saw
    for level in (0.05, 0.1, 0.5):
        # The realised rate varies with the 1000 calibration scores and the 4000 new images: 3 sd.
        sd = np.sqrt(level * (1 - level) * (1 / 1000 + 1 / 4000))
        assert np.mean(baseline.ood_p_value(fresh) <= level) == pytest.approx(level, abs=3 * sd)
    assert np.mean(baseline.ood_p_value(shifted) <= 0.05) > 0.9
    assert np.median(baseline.ood_percentile(shifted)) > 99


def test_fit_baseline_refuses_too_few_images():
    with pytest.raises(ConfigError, match=f"at least {MIN_IMAGES} images"):
        make_baseline(n=MIN_IMAGES - 1)


def test_baseline_files_round_trip(tmp_path):
    baseline, features = make_baseline()
    thresholds = MonitorSettings().thresholds()
    baseline_id = baseline.save(tmp_path, thresholds)
    loaded, loaded_id = Baseline.load(tmp_path)
    assert loaded_id == baseline_id
    assert loaded.classes == baseline.classes
    np.testing.assert_allclose(
        loaded.ood_distance(features[:5]), baseline.ood_distance(features[:5]), rtol=1e-5, atol=1e-6
    )  # float32 on disk
    np.testing.assert_array_equal(loaded.labels, baseline.labels)
    summary = json.loads((tmp_path / BASELINE_FILE).read_text())
    assert summary["baseline_id"] == baseline_id and summary["images"] == 200 and summary["source"] == "test"
    assert summary["pca"]["components"] == 8 and summary["reference_images"] == 60
    assert sum(summary["predicted_labels"].values()) == 200
    assert summary["image_formats"] == {"PNG": 200}
    assert sorted(p.name for p in (tmp_path / "monitoring").iterdir()) == [
        "baseline.json",
        "constraints.json",
        "reference.npz",
        "statistics.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["monitoring"]  # no staging folder left behind


def test_model_monitor_shaped_statistics_and_constraints(tmp_path):
    baseline, _ = make_baseline()
    baseline_id = baseline.save(tmp_path, {"alpha": 0.01})
    statistics = json.loads((tmp_path / BASELINE_STATISTICS_FILE).read_text())
    assert statistics["dataset"]["item_count"] == 200
    assert statistics["sagemaker_vision"]["baseline_id"] == baseline_id
    features = {f["name"]: f for f in statistics["features"]}
    brightness = features["image_brightness"]["numerical_statistics"]
    assert brightness["common"] == {"num_present": 200, "num_missing": 0}
    assert brightness["mean"] == pytest.approx(baseline.image_column("brightness").mean())
    buckets = brightness["distribution"]["kll"]["buckets"]
    assert len(buckets) == 10 and sum(b["count"] for b in buckets) == 200
    assert len(brightness["distribution"]["kll"]["sketch"]["data"][0]) == 200  # exact: every value in its one level
    assert features["image_width"]["inferred_type"] == "Integral"
    labels = features["predicted_label"]["string_statistics"]
    assert sum(b["count"] for b in labels["distribution"]["categorical"]["buckets"]) == 200
    constraints = json.loads((tmp_path / BASELINE_CONSTRAINTS_FILE).read_text())
    assert constraints["monitoring_config"]["sagemaker_vision"] == {"alpha": 0.01}
    domains = {f["name"]: f["string_constraints"]["domains"] for f in constraints["features"] if "string_constraints" in f}
    assert domains == {"predicted_label": ["a", "b", "c"], "image_format": ["PNG"]}


def test_loading_refuses_missing_tampered_or_foreign_files(tmp_path):
    with pytest.raises(ConfigError, match="monitor baseline --model"):
        Baseline.load(tmp_path)
    baseline, _ = make_baseline()
    baseline.save(tmp_path)
    other, _ = make_baseline(seed=3)
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    other.save(elsewhere)
    (tmp_path / REFERENCE_FILE).write_bytes((elsewhere / REFERENCE_FILE).read_bytes())
    with pytest.raises(ConfigError, match="does not belong"):
        Baseline.load(tmp_path)


# --- image statistics ---


def test_image_statistics_of_flat_and_split_images():
    grey = imagestats.measure(Image.new("RGB", (40, 20), (128, 128, 128)), "PNG")
    assert (grey.width, grey.height, grey.aspect_ratio) == (40, 20, 2.0)
    assert grey.brightness == pytest.approx(128 / 255)
    assert grey.contrast == 0.0 and grey.sharpness == 0.0 and grey.format == "PNG"
    split = Image.new("RGB", (10, 10), (0, 0, 0))
    split.paste((255, 255, 255), (0, 0, 5, 10))
    halves = imagestats.measure(split, "JPEG")
    assert halves.brightness == pytest.approx(0.5)
    assert halves.contrast == pytest.approx(0.5)  # half 0, half 1: standard deviation 1/2


def test_laplacian_variance_by_hand():
    luma = np.zeros((5, 5))
    luma[2, 2] = 1.0
    # Interior 3x3 Laplacian: -4 at the centre, 1 at its four neighbours, 0 at the corners:
    # mean 0, variance (16 + 4) / 9
    assert imagestats.laplacian_variance(luma) == pytest.approx(20 / 9)
    assert imagestats.laplacian_variance(np.ones((2, 9))) == 0.0


def test_blur_lowers_sharpness_and_large_images_are_measured_downscaled():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8))
    from PIL import ImageFilter

    sharp = imagestats.measure(noise, "PNG")
    blurred = imagestats.measure(noise.filter(ImageFilter.GaussianBlur(3)), "PNG")
    assert blurred.sharpness < sharp.sharpness / 10
    assert (sharp.width, sharp.height) == (800, 600)  # sizes are the image's own


def test_container_format_reads_the_header():
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "JPEG")
    assert imagestats.container_format(buffer.getvalue()) == "JPEG"
    assert imagestats.container_format(b"not an image") == "UNKNOWN"

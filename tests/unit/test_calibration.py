"""Temperature scaling and expected calibration error (train.calibration), the
reliability diagram (train.plots) and the temperature in the artifact (vision.artifact)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from container import ConfigError
from train import calibration, plots
from vision.artifact import SPEC_FILE, ModelSpec


def test_ece_by_hand():
    # Top-1 confidences 0.95 (right), 0.85 (wrong), 0.65 (right), 0.75 (right): mid-bin
    # values, so float32 rounding cannot move one across an edge.
    probabilities = torch.tensor([[0.95, 0.05], [0.85, 0.15], [0.65, 0.35], [0.25, 0.75]])
    targets = torch.tensor([0, 1, 0, 1])
    # 10 bins: one answer per bin, ECE = mean |correct - confidence|.
    stats = calibration.reliability(probabilities, targets, bins=10)
    assert stats.counts == (0, 0, 0, 0, 0, 0, 1, 1, 1, 1)
    assert stats.ece == pytest.approx((0.05 + 0.85 + 0.35 + 0.25) / 4)
    # 2 bins: all four in (0.5, 1]: accuracy 3/4 against mean confidence 0.8.
    stats = calibration.reliability(probabilities, targets, bins=2)
    assert stats.counts == (0, 4)
    assert stats.accuracy[1] == pytest.approx(0.75) and stats.confidence[1] == pytest.approx(0.8)
    assert stats.ece == pytest.approx(0.05)


def test_bins_are_closed_on_the_right():
    # 4 bins: edges 0, 0.25, 0.5, 0.75, 1 (exact in binary). 0.5 belongs to (0.25, 0.5],
    # 0.75 to (0.5, 0.75], 1.0 to the last bin.
    probabilities = torch.tensor([[0.5, 0.5, 0.0], [0.75, 0.25, 0.0], [1.0, 0.0, 0.0], [0.26, 0.25, 0.49]])
    stats = calibration.reliability(probabilities, torch.zeros(4, dtype=torch.long), bins=4)
    assert stats.edges == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert stats.counts == (0, 2, 1, 1)
    assert stats.total == 4


def test_ece_of_logits_uses_the_temperature():
    logits = torch.tensor([[4.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    targets = torch.tensor([0, 0, 0])
    for temperature in (1.0, 2.5):
        expected = calibration.reliability(torch.softmax(logits / temperature, dim=1), targets).ece
        assert calibration.expected_calibration_error(logits, targets, temperature) == pytest.approx(expected)


def test_fit_recovers_a_known_temperature():
    # Labels drawn from softmax(z / 2): the NLL-optimal temperature for logits z is 2.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 5, generator=generator, dtype=torch.float64) * 4
    targets = torch.multinomial(torch.softmax(logits / 2.0, dim=1), 1, generator=generator)[:, 0]
    assert calibration.fit_temperature(logits, targets) == pytest.approx(2.0, rel=0.05)
    # Scaled the other way: logits z labelled by softmax(2z) want T = 0.5.
    targets = torch.multinomial(torch.softmax(logits * 2.0, dim=1), 1, generator=generator)[:, 0]
    assert calibration.fit_temperature(logits, targets) == pytest.approx(0.5, rel=0.05)


def test_fit_works_inside_inference_mode():
    # The trainer's evaluation runs under inference_mode; fitting must not depend on the caller.
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 3.0]])
    targets = torch.tensor([0, 1, 1, 1])
    with torch.inference_mode():
        temperature = calibration.fit_temperature(logits, targets)
    assert temperature > 1  # one confident wrong answer in four: soften


def test_no_errors_or_no_rows_leave_the_logits_alone():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    assert calibration.fit_temperature(logits, torch.tensor([0, 1])) == 1.0
    assert calibration.fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0


def test_fit_stays_within_bounds():
    # Wrong answers at any confidence: NLL keeps falling as T grows, the bound stops it.
    logits = torch.tensor([[10.0, 0.0]] * 50 + [[0.0, 10.0]] * 50)
    targets = torch.tensor([1] * 50 + [0] * 50)
    temperature = calibration.fit_temperature(logits, targets)
    assert temperature == pytest.approx(calibration.MAX_TEMPERATURE)


def test_fit_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="N x classes"):
        calibration.fit_temperature(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


@pytest.fixture(scope="module")
def overconfident_digits():
    """An MLP trained on 300 of scikit-learn's digits for 200 epochs with no weight
    decay, dropout or early stopping: training loss near 0, its test errors made with
    near-certain confidence. Returns (validation logits, labels), (test logits, labels)."""
    digits = load_digits()
    pixels = torch.tensor(digits.images / 16.0, dtype=torch.float32)
    labels = torch.tensor(digits.target)
    index = np.arange(len(labels))
    train, rest = train_test_split(index, train_size=300, stratify=digits.target, random_state=0)
    valid, test = train_test_split(rest, test_size=0.5, stratify=digits.target[rest], random_state=0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0)
    for _ in range(200):
        order = train[torch.randperm(len(train)).numpy()]
        for start in range(0, len(order), 64):
            rows = order[start : start + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(pixels[rows]), labels[rows])
            loss.backward()
            optimizer.step()
    assert loss.item() < 0.01, "the model should fit its training set almost exactly"
    with torch.no_grad():
        return (model(pixels[valid]), labels[valid]), (model(pixels[test]), labels[test])


def test_temperature_scaling_calibrates_held_out_digits(overconfident_digits):
    (valid_logits, valid_labels), (test_logits, test_labels) = overconfident_digits
    result = calibration.calibrate(valid_logits, valid_labels)
    assert result.temperature > 1, "an overconfident model is softened"
    assert result.ece_after < result.ece_before and result.nll_after < result.nll_before

    # On the test split, which the fit never saw: ECE and NLL drop, accuracy is unchanged.
    before = calibration.expected_calibration_error(test_logits, test_labels)
    after = calibration.expected_calibration_error(test_logits, test_labels, result.temperature)
    assert after < before, (before, after)
    assert calibration.nll(test_logits, test_labels, result.temperature) < calibration.nll(test_logits, test_labels)
    predicted = test_logits.argmax(1)
    assert torch.equal(calibration.scaled_probabilities(test_logits, result.temperature).argmax(1), predicted)
    assert 0.85 < float((predicted == test_labels).float().mean()) < 1.0  # learned, and has errors to be honest about

    assert result.metrics() == {
        "temperature": result.temperature,
        "ece_bins": 15,
        "ece_before": result.ece_before,
        "ece_after": result.ece_after,
        "nll_before": result.nll_before,
        "nll_after": result.nll_after,
    }


def test_the_trainers_report_fits_on_validation_and_measures_on_test(overconfident_digits):
    # What train.loop.finish reports: T from the validation split, ECE before and after
    # it on the test split the fit never saw; accuracy is the same at every temperature.
    valid, test = overconfident_digits
    report = calibration.report(test, "test", fit_on=valid)
    assert report.temperature == calibration.calibrate(*valid).temperature > 1
    assert report.after.ece < report.before.ece and report.nll_after < report.nll_before
    assert sum(n * a for n, a in zip(report.after.counts, report.after.accuracy, strict=True)) == pytest.approx(
        sum(n * a for n, a in zip(report.before.counts, report.before.accuracy, strict=True))
    )  # the same answers are right
    numbers = report.metrics()
    assert numbers["fitted_on"] == "valid" and numbers["split"] == "test" and numbers["images"] == len(test[1])
    assert numbers["ece_before"] == report.before.ece and numbers["ece_after"] == report.after.ece
    assert numbers["fit"]["images"] == len(valid[1]) and numbers["fit"]["temperature"] == report.temperature
    json.dumps(numbers, allow_nan=False)  # metrics.json takes it as it is


def test_the_report_with_calibration_off_keeps_the_logits():
    logits, targets = torch.tensor([[3.0, 0.0], [0.0, 1.0], [2.0, 0.0]]), torch.tensor([0, 0, 0])
    report = calibration.report((logits, targets), "valid", fit_on=None)
    assert report.temperature == 1.0 and report.after is None and report.fitted is None
    numbers = report.metrics()
    assert numbers["fitted_on"] is None and "ece_after" not in numbers and "fit" not in numbers
    assert numbers["ece_before"] == pytest.approx(calibration.expected_calibration_error(logits, targets))
    # No validation rows at all: nothing to fit on, the same as off.
    assert calibration.report((logits, targets), "test", fit_on=(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))).fitted is None


def test_reliability_diagram_png(tmp_path, overconfident_digits):
    (valid_logits, valid_labels), _ = overconfident_digits
    result = calibration.calibrate(valid_logits, valid_labels)
    path = tmp_path / "reliability.png"
    plots.plot_reliability(result.before, result.after, path, "reliability (valid)")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1000, 600)
    plots.plot_reliability(result.before, None, path, "before only")
    with Image.open(path) as image:
        assert image.size == (500, 600)


def spec(**changes) -> ModelSpec:
    fields = {"arch": "resnet18", "classes": ("a", "b"), "image_size": 32, "resize_size": 36, "mean": (0.5,) * 3, "std": (0.25,) * 3}
    return ModelSpec(**{**fields, **changes})


def test_temperature_travels_in_the_spec(tmp_path):
    spec(temperature=1.7).save(tmp_path)
    assert json.loads((tmp_path / SPEC_FILE).read_text())["temperature"] == 1.7
    assert ModelSpec.load(tmp_path).temperature == 1.7


def test_specs_without_a_temperature_still_load(tmp_path):
    spec().save(tmp_path)
    data = json.loads((tmp_path / SPEC_FILE).read_text())
    del data["temperature"]  # as every spec written before the field existed
    (tmp_path / SPEC_FILE).write_text(json.dumps(data))
    assert ModelSpec.load(tmp_path).temperature == 1.0


@pytest.mark.parametrize("value", [0, -1.5, "abc", None, math.inf])
def test_a_bad_temperature_is_refused(tmp_path, value):
    spec().save(tmp_path)
    data = json.loads((tmp_path / SPEC_FILE).read_text())
    data["temperature"] = value
    (tmp_path / SPEC_FILE).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"{SPEC_FILE}: temperature .* must be a finite number above 0"):
        ModelSpec.load(tmp_path)

"""Multi-label training's metrics against scikit-learn (per-class precision/recall/F1 at
each class's threshold, average precision, exact-match accuracy), the thresholds chosen
on validation scores, the loss, and the training sums."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, precision_recall_fscore_support

from train import build, metrics
from train.state import EpochSums

CLASSES = ["cat", "dog", "outdoor", "night"]


@pytest.fixture
def scored():
    """60 images, 4 classes: scores that track the truth with noise (no ties), and one
    class (night) with no positive image."""
    rng = np.random.default_rng(3)
    truth = rng.random((60, 4)) < [0.5, 0.3, 0.6, 0.0]
    scores = np.clip(truth * 0.35 + rng.random((60, 4)) * 0.65, 0, 1)
    return torch.tensor(scores, dtype=torch.float32), torch.tensor(truth, dtype=torch.float32)


def test_summary_matches_scikit_learn(scored):
    scores, targets = scored
    thresholds = [0.4, 0.5, 0.6, 0.5]
    summary = metrics.summarize_multilabel(scores, targets, CLASSES, thresholds)
    called = scores.numpy() >= np.array(thresholds, dtype=np.float32)
    truth = targets.numpy().astype(bool)
    precision, recall, f1, support = precision_recall_fscore_support(truth, called, zero_division=0)
    for i, name in enumerate(CLASSES):
        row = summary["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx((precision[i], recall[i], f1[i], support[i]))
        assert row["threshold"] == thresholds[i]
        if support[i]:
            assert row["ap"] == pytest.approx(average_precision_score(truth[:, i], scores[:, i].numpy()))
    assert summary["acc"] == pytest.approx(accuracy_score(truth, called))  # exact match
    positive = [i for i in range(4) if support[i]]
    assert summary["map"] == pytest.approx(np.mean([average_precision_score(truth[:, i], scores[:, i].numpy()) for i in positive]))
    present = [i for i in range(4) if support[i] or called[:, i].any()]
    assert summary["macro_f1"] == pytest.approx(np.mean(f1[present]))


def test_thresholds_maximise_each_classs_f1(scored):
    scores, targets = scored
    tuned = metrics.tune_thresholds(scores, targets)
    assert tuned[3] == 0.5  # no positives: the default
    truth = targets.numpy().astype(bool)
    for i in range(3):
        column = scores[:, i].numpy()
        best = max(precision_recall_fscore_support(truth[:, i], column >= t, average="binary", zero_division=0)[2] for t in column)
        found = precision_recall_fscore_support(truth[:, i], column >= tuned[i], average="binary", zero_division=0)[2]
        assert found == pytest.approx(best)
        assert 0 < tuned[i] < 1 and tuned[i] not in column  # halfway between two scores, not on one


def test_evaluation_summary_is_multi_label_without_a_confusion_matrix(scored):
    scores, targets = scored
    evaluation = metrics.Evaluation(0.3, scores=scores, targets=targets)
    assert evaluation.summary(CLASSES)["per_class"]["dog"]["threshold"] == 0.5
    assert "map" in evaluation.summary(CLASSES) and "map" not in metrics.Evaluation(0.3, confusion=torch.eye(2)).summary(["a", "b"])
    assert "mAP" in metrics.per_class_report(evaluation.summary(CLASSES))


def test_loss_is_binary_cross_entropy_with_smoothing_and_positive_weights():
    logits, targets = torch.tensor([[2.0, -1.0], [0.5, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    plain = build.MultiLabelLoss()(logits, targets)
    assert plain == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets))
    smoothed = build.MultiLabelLoss(label_smoothing=0.2)(logits, targets)
    assert smoothed == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets * 0.8 + 0.1))
    weight = torch.tensor([3.0, 1.0])
    weighted = build.MultiLabelLoss(weight)(logits, targets)
    assert weighted == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight))


def test_training_accuracy_counts_images_whose_every_class_is_right():
    process = type("P", (), {"device": torch.device("cpu"), "is_main": True, "distributed": False})()
    sums = EpochSums(process)
    logits = torch.tensor([[2.0, -1.0], [2.0, 1.0], [-1.0, -3.0]])
    sums.add(torch.tensor(0.5), logits, torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
    assert sums.reduced(process) == (1.5, 2.0, 3.0)

"""Classification metrics from a confusion matrix.

Each rank accumulates a confusion matrix over its shard; summing the matrices across
ranks (one all_reduce) gives exactly the global matrix, so accuracy and macro-F1 are
the whole validation set's, not rank 0's shard. Multi-label metrics need every image's
scores (for AP and tuned thresholds): the ranks gather them (train.loop.evaluate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def update_confusion(confusion: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
    """confusion[true, predicted] += 1 for each sample."""
    num_classes = confusion.shape[0]
    predicted = logits.argmax(dim=1)
    flat = targets.to(torch.int64) * num_classes + predicted.to(torch.int64)
    confusion += torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).to(confusion)


def summarize(confusion: torch.Tensor, classes: list[str]) -> dict:
    """accuracy, macro precision/recall/F1 and per-class values (classes with no
    support and no predictions are left out of the macro average, as scikit-learn's
    zero_division would otherwise pull it to 0 for classes absent from a split)."""
    confusion = confusion.to(torch.float64).cpu()
    true_positive = confusion.diag()
    support = confusion.sum(dim=1)
    predicted = confusion.sum(dim=0)
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), torch.zeros_like(predicted))
    recall = torch.where(support > 0, true_positive / support.clamp(min=1), torch.zeros_like(support))
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), torch.zeros_like(denominator))
    present = (support > 0) | (predicted > 0)
    total = confusion.sum()
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "acc": float(true_positive.sum() / total) if total > 0 else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": per_class,
    }


def per_class_report(summary: dict) -> str:
    """A fixed-width text table, like scikit-learn's classification_report."""
    names = list(summary["per_class"])
    width = max([len(n) for n in names] + [12])
    lines = [f"{'class':<{width}}  precision  recall  f1-score  support"]
    for name in names:
        row = summary["per_class"][name]
        lines.append(f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:8.4f}  {row['support']:7d}")
    total = sum(row["support"] for row in summary["per_class"].values())
    lines.append("")
    lines.append(f"{'accuracy':<{width}}  {'':9}  {'':6}  {summary['acc']:8.4f}  {total:7d}")
    lines.append(
        f"{'macro avg':<{width}}  {summary['macro_precision']:9.4f}  {summary['macro_recall']:6.4f}  {summary['macro_f1']:8.4f}  {total:7d}"
    )
    if "map" in summary:  # multi-label: accuracy above is exact match; thresholds per class in metrics.json
        lines.append(f"{'mAP':<{width}}  {'':9}  {'':6}  {summary['map']:8.4f}")
    return "\n".join(lines) + "\n"


# --- multi-label ---------------------------------------------------------------------
# Each class is its own yes/no question: a sigmoid score per class, a decision threshold per
# class (0.5 until tuned on the validation split), and per-class precision/recall/F1 of
# those decisions. Accuracy is exact match (every class of the image right), as
# scikit-learn's accuracy_score on label sets; mAP is the mean over classes with positives
# of their average precision (the area under the step precision-recall curve, as
# scikit-learn's average_precision_score computes it when no two scores tie).


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """AP of one class: the mean, over its positive images, of the precision among the
    images scored at least as high."""
    order = torch.argsort(scores, descending=True, stable=True)
    hits = positives[order].to(torch.float64)
    if not hits.sum():
        return 0.0
    precision_at = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    return float((precision_at * hits).sum() / hits.sum())


def tune_thresholds(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per class, the threshold that maximises F1 on these scores: halfway between the
    lowest score called positive and the next one down. Classes without positives keep 0.5."""
    thresholds = []
    for column in range(scores.shape[1]):
        ranked, order = torch.sort(scores[:, column].to(torch.float64), descending=True, stable=True)
        hits = targets[order, column].to(torch.float64)
        positives = hits.sum()
        if not positives:
            thresholds.append(0.5)
            continue
        called = torch.arange(1, len(hits) + 1, dtype=torch.float64)
        best = int(torch.argmax(2 * hits.cumsum(0) / (called + positives)))  # F1 = 2 TP / (predicted + positives)
        below = float(ranked[best + 1]) if best + 1 < len(ranked) else 0.0
        thresholds.append((float(ranked[best]) + below) / 2)
    return thresholds


def summarize_multilabel(scores: torch.Tensor, targets: torch.Tensor, classes: list[str], thresholds=None) -> dict:
    """The summarize() fields for multi-label scores (N x C probabilities) and 0/1
    targets, plus mAP and each class's AP and threshold."""
    scores, truth = scores.to(torch.float64).cpu(), targets.cpu() > 0.5
    cut = torch.tensor(thresholds if thresholds is not None else [0.5] * len(classes), dtype=torch.float64)
    called = scores >= cut
    true_positive = (called & truth).sum(0).to(torch.float64)
    support, predicted = truth.sum(0).to(torch.float64), called.sum(0).to(torch.float64)
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), torch.zeros_like(predicted))
    recall = torch.where(support > 0, true_positive / support.clamp(min=1), torch.zeros_like(support))
    denominator = precision + recall
    f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), torch.zeros_like(denominator))
    ap = [average_precision(scores[:, i], truth[:, i]) for i in range(len(classes))]
    present, positive = (support > 0) | (predicted > 0), support > 0
    per_class = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
        | {"ap": ap[i], "threshold": float(cut[i])}
        for i, name in enumerate(classes)
    }
    return {
        "acc": float((called == truth).all(1).to(torch.float64).mean()) if len(scores) else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "map": float(torch.tensor(ap, dtype=torch.float64)[positive].mean()) if positive.any() else 0.0,
        "per_class": per_class,
    }


@dataclass
class Evaluation:
    """One pass over a split, gathered from every rank: the mean loss, and the confusion
    matrix (single-label) or every image's scores and targets (multi-label)."""

    loss: float
    confusion: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    logits: tuple[torch.Tensor, torch.Tensor] | None = None  # single-label, when kept: every image's logits and target

    def summary(self, classes: list[str], thresholds=None) -> dict:
        if self.confusion is not None:
            return summarize(self.confusion, classes)
        return summarize_multilabel(self.scores, self.targets, classes, thresholds)

"""Classification metrics from a confusion matrix.

Each rank accumulates a confusion matrix over its shard; summing the matrices across
ranks (one all_reduce) gives exactly the global matrix, so accuracy and macro-F1 are
the whole validation set's, not rank 0's shard.
"""

from __future__ import annotations

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
    return "\n".join(lines) + "\n"

"""PNG plots for /opt/ml/output/data: confusion matrix and learning curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display in a container; select before pyplot loads
import matplotlib.pyplot as plt  # noqa: E402


def plot_confusion(confusion, classes: list[str], path: Path, title: str) -> None:
    n = len(classes)
    side = min(40.0, max(5.0, 0.3 * n + 3))  # 133 dog breeds stay legible
    fig, ax = plt.subplots(figsize=(side, side))
    matrix = confusion.cpu().numpy()
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels=classes, rotation=90, fontsize=max(4, 10 - n // 20))
    ax.set_yticks(range(n), labels=classes, fontsize=max(4, 10 - n // 20))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                value = int(matrix[i, j])
                ax.text(j, i, value, ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_learning_curves(history: list[dict], path: Path) -> None:
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], marker="o", label="validation")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")
    losses = [r[k] for r in history for k in ("train_loss", "val_loss")]
    if min(losses) > 0 and max(losses) / min(losses) > 50:
        loss_ax.set_yscale("log")  # an early spike would otherwise flatten the rest
    loss_ax.legend()
    score_ax.plot(epochs, [r["train_acc"] for r in history], marker="o", label="train accuracy")
    score_ax.plot(epochs, [r["val_acc"] for r in history], marker="o", label="validation accuracy")
    score_ax.plot(epochs, [r["val_macro_f1"] for r in history], marker="o", label="validation macro-F1")
    score_ax.set_xlabel("epoch")
    score_ax.set_ylim(0, 1.02)
    score_ax.set_title("accuracy / macro-F1")
    score_ax.legend()
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(before, after, path: Path, title: str) -> None:
    """Reliability diagram (train.calibration.Reliability): each confidence bin's accuracy
    (bars) and mean confidence (black ticks) against the diagonal a calibrated model
    follows, before and after temperature scaling side by side with each one's ECE, and
    below each how many answers fall in each bin."""
    panels = [("before", before)] + ([("after", after)] if after is not None else [])
    fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 6), height_ratios=(3, 1), squeeze=False)
    for column, (name, stats) in enumerate(panels):
        curve_ax, count_ax = axes[0][column], axes[1][column]
        left = stats.edges[:-1]
        width = stats.edges[1] - stats.edges[0]
        filled = [i for i, n in enumerate(stats.counts) if n]
        curve_ax.bar(left, stats.accuracy, width=width, align="edge", edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
        curve_ax.hlines(
            [stats.confidence[i] for i in filled],
            [left[i] for i in filled],
            [left[i] + width for i in filled],
            colors="black",
            linewidth=2.5,
            label="mean confidence",
        )
        curve_ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
        curve_ax.set_xlim(0, 1)
        curve_ax.set_ylim(0, 1)
        curve_ax.set_ylabel("accuracy")
        curve_ax.set_title(f"{name}: ECE {stats.ece:.4f}")
        curve_ax.legend(loc="upper left")
        count_ax.bar(left, stats.counts, width=width, align="edge", edgecolor="black", color="grey")
        count_ax.set_xlim(0, 1)
        count_ax.set_yscale("log" if max(stats.counts, default=0) > 100 else "linear")
        count_ax.set_xlabel("confidence (top-1 probability)")
        count_ax.set_ylabel("answers")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

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

"""The report a person reads: {output_path}/report.md and its PNG plots in plots/.

drift_over_time.png    records and images per time bucket, MMD² per bucket, mean confidence and OOD percentile
predicted_labels.png   share of each predicted class, baseline vs window
confidence.png         max-probability histograms, baseline vs window; the window's OOD percentiles
image_statistics.png   width, height, aspect ratio, brightness, contrast, sharpness: baseline vs window
ood_images.png         the most out-of-distribution captured images (SM_VISION_MONITOR_REPORT_IMAGES)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from monitor.checks import Check
from monitor.window import THUMBNAIL, Window
from vision import imagestats
from vision.baseline import Baseline

REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
MAX_CLASSES_PLOTTED = 40
BASELINE_COLOUR, WINDOW_COLOUR = "#4c72b0", "#dd8452"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display in a container; chosen before pyplot loads
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def plot_drift_over_time(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    x = np.arange(len(rows))
    labels = [row["start"][5:16].replace("T", " ") for row in rows]
    axes[0].bar(x - 0.2, [row["records"] for row in rows], width=0.4, label="records", color=BASELINE_COLOUR)
    axes[0].bar(x + 0.2, [row["images"] for row in rows], width=0.4, label="decoded images", color=WINDOW_COLOUR)
    axes[0].bar(
        x + 0.2,
        [row["decode_failures"] for row in rows],
        width=0.4,
        bottom=[row["images"] for row in rows],
        label="decode failures",
        color="#c44e52",
    )
    axes[0].set_ylabel("count")
    axes[0].legend(fontsize=8)
    axes[1].plot(x, [row.get("mmd2", np.nan) for row in rows], marker="o", color=WINDOW_COLOUR)
    axes[1].axhline(0.0, color="grey", linewidth=0.8)
    axes[1].set_ylabel("MMD² vs reference")
    axes[2].plot(
        x, [row.get("mean_max_probability", np.nan) for row in rows], marker="o", label="mean max probability", color=BASELINE_COLOUR
    )
    twin = axes[2].twinx()
    twin.plot(x, [row.get("mean_ood_percentile", np.nan) for row in rows], marker="s", label="mean OOD percentile", color="#c44e52")
    twin.axhline(50.0, color="#c44e52", linewidth=0.8, linestyle=":")
    axes[2].set_ylabel("mean max probability")
    twin.set_ylabel("mean OOD percentile (50 = like baseline)")
    axes[2].set_xticks(x, labels=labels, rotation=45, ha="right", fontsize=8)
    axes[0].set_title("drift over time (bucket start, UTC)")
    _save(fig, path)


def plot_labels(classes: Sequence[str], baseline_counts: np.ndarray, window_counts: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    base = baseline_counts / max(1, baseline_counts.sum())
    now = window_counts / max(1, window_counts.sum())
    order = np.argsort(-np.abs(now - base))[:MAX_CLASSES_PLOTTED]
    order = np.sort(order)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(order) + 2), 4.5))
    x = np.arange(len(order))
    ax.bar(x - 0.2, base[order], width=0.4, label="baseline", color=BASELINE_COLOUR)
    ax.bar(x + 0.2, now[order], width=0.4, label="window", color=WINDOW_COLOUR)
    ax.set_xticks(x, labels=[classes[i] for i in order], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("share of predictions")
    title = "predicted classes"
    if len(classes) > len(order):
        title += f" (the {len(order)} that moved most of {len(classes)})"
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def plot_confidence(baseline_max: np.ndarray, window_max: np.ndarray, window_percentiles: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bins = np.linspace(0.0, 1.0, 21)
    axes[0].hist(baseline_max, bins=bins, density=True, alpha=0.6, label="baseline", color=BASELINE_COLOUR)
    if len(window_max):
        axes[0].hist(window_max, bins=bins, density=True, alpha=0.6, label="window", color=WINDOW_COLOUR)
    axes[0].set_xlabel("max probability")
    axes[0].set_ylabel("density")
    axes[0].legend()
    axes[0].set_title("confidence")
    if len(window_percentiles):
        axes[1].hist(window_percentiles, bins=np.linspace(0, 100, 21), density=True, color=WINDOW_COLOUR)
    axes[1].axhline(0.01, color=BASELINE_COLOUR, linestyle="--", label="like the baseline (uniform)")
    axes[1].set_xlabel("OOD percentile")
    axes[1].legend()
    axes[1].set_title("how unusual the window's images are")
    _save(fig, path)


def plot_image_statistics(baseline: Baseline, window: Window, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, name in zip(axes.flat, imagestats.NUMERIC, strict=True):
        reference, captured = baseline.image_column(name), window.column(name)
        low = min(reference.min(), captured.min()) if captured.size else reference.min()
        high = max(reference.max(), captured.max()) if captured.size else reference.max()
        bins = np.linspace(low, high, 26) if high > low else np.linspace(low - 0.5, low + 0.5, 3)
        ax.hist(reference, bins=bins, density=True, alpha=0.6, label="baseline", color=BASELINE_COLOUR)
        if captured.size:
            ax.hist(captured, bins=bins, density=True, alpha=0.6, label="window", color=WINDOW_COLOUR)
        ax.set_title(name.replace("_", " "))
    axes.flat[0].legend()
    _save(fig, path)


def plot_outliers(window: Window, path: Path) -> bool:
    """A grid of the thumbnails with their OOD percentile, predicted label and time
    (drawn with Pillow: a matplotlib figure of 16 images costs seconds)."""
    outliers = window.top_outliers()
    if not outliers:
        return False
    columns = min(4, len(outliers))
    rows = -(-len(outliers) // columns)
    cell_w, cell_h, caption = THUMBNAIL + 80, THUMBNAIL + 44, 40
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h + 20), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), "most out-of-distribution captured images: OOD percentile, predicted label, time (UTC)", fill="black")
    for i, outlier in enumerate(outliers):
        x, y = (i % columns) * cell_w, (i // columns) * cell_h + 20
        thumb = outlier.thumbnail
        canvas.paste(thumb, (x + (cell_w - thumb.width) // 2, y + (THUMBNAIL - thumb.height) // 2))
        text = f"{outlier.percentile:.1f} pct  {outlier.label[:22]}\n{outlier.time:%Y-%m-%d %H:%M:%S}"
        draw.multiline_text((x + 4, y + cell_h - caption), text, fill="black", spacing=2)
    canvas.save(path)
    return True


def _value(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def write(
    out: Path,
    header: dict[str, str],
    checks: Sequence[Check],
    window: Window,
    baseline: Baseline,
    over_time: list[dict],
    volume: dict[str, str],
    with_images: bool,
) -> Path:
    plots = out / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    percentiles = baseline.ood_percentile(distances=np.array(window.ood_distance)) if window.size else np.zeros(0)
    figures = []
    if over_time:
        plot_drift_over_time(over_time, plots / "drift_over_time.png")
        figures.append(("Drift over time", "drift_over_time.png"))
    plot_labels(baseline.classes, baseline.label_counts, window.label_counts(), plots / "predicted_labels.png")
    figures.append(("Predicted classes, baseline vs window", "predicted_labels.png"))
    plot_confidence(baseline.max_probability, np.array(window.max_probability), percentiles, plots / "confidence.png")
    figures.append(("Confidence and out-of-distribution percentiles", "confidence.png"))
    plot_image_statistics(baseline, window, plots / "image_statistics.png")
    figures.append(("Image statistics, baseline vs window", "image_statistics.png"))
    if with_images and plot_outliers(window, plots / "ood_images.png"):
        figures.append(("The most out-of-distribution captured images", "ood_images.png"))

    violated = [check for check in checks if check.violated]
    lines = ["# Model monitoring report", ""]
    lines += [f"- **{key}**: {value}" for key, value in header.items()]
    lines += ["", "## Verdict", ""]
    if violated:
        lines.append(f"**{len(violated)} violation{'s' if len(violated) > 1 else ''}:**")
        lines += [f"- `{check.name}` ({check.check_type}): {check.description}" for check in violated]
    else:
        lines.append("No violations: this window looks like the baseline.")
    lines += ["", "## Checks", "", "| check | type | statistic | p-value | level | result |", "| --- | --- | --- | --- | --- | --- |"]
    for check in checks:
        result = "**VIOLATION**" if check.violated else ("skipped" if check.skipped else "ok")
        lines.append(
            f"| `{check.name}` | {check.check_type} | {_value(check.statistic)} | {_value(check.p_value)} | {_value(check.level)} | {result} |"
        )
    lines += ["", "Details:", ""]
    lines += [f"- `{check.name}`: {check.description}" for check in checks]
    lines += ["", "## Volume", ""]
    lines += [f"- {key}: {value}" for key, value in volume.items()]
    for title, name in figures:
        lines += ["", f"## {title}", "", f"![{title}]({PLOTS_DIR}/{name})"]
    lines += [
        "",
        "## How to read this",
        "",
        "Each statistical check compares this window with the model's baseline and is tested at the level shown "
        "(alpha divided by the number of tests), so a window like the baseline raises a false alarm with probability at "
        "most alpha. An OOD percentile says what share of the baseline's held-out images is less unusual than an image: "
        "images like the baseline's spread evenly over 0..100. See docs/monitoring.md in the image's repository.",
        "",
    ]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines))
    return path

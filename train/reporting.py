"""Log lines with a stable, regex-friendly format, and the SageMaker metric_definitions
that parse them. No torch here: aws/ imports METRIC_DEFINITIONS when launching jobs.

Every metric is `name=value`, names are unique, and no name is the tail of another
(hence `step_loss`, never a bare `loss`), so each regex matches one metric only.
"""

from __future__ import annotations

from collections.abc import Mapping

EPOCH_METRICS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_macro_f1",
    "val_map",  # multi-label runs only
)
TEST_METRICS = ("test_loss", "test_acc", "test_macro_f1", "test_map")
CALIBRATION_METRICS = ("temperature", "ece_before", "ece_after")  # on the final split (train.calibration)
PROGRESS_METRICS = ("step_loss", "images_per_s")

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": name, "Regex": f"{name}={_NUMBER}"} for name in EPOCH_METRICS + TEST_METRICS + CALIBRATION_METRICS + PROGRESS_METRICS
]


def format_metrics(prefix: Mapping[str, object], metrics: Mapping[str, float]) -> str:
    """'epoch=3 train_loss=0.1234 ...': integers as-is, floats with 6 significant digits."""
    parts = [f"{key}={value}" for key, value in prefix.items()]
    parts += [f"{key}={value:.6g}" for key, value in metrics.items()]
    return " ".join(parts)

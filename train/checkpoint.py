"""Checkpoints in /opt/ml/checkpoints (synced to S3 by SageMaker for spot jobs).

Files are written to a temporary name and renamed, so a job killed mid-write never
leaves a half file under a real name; a file that still fails to load (truncated by
a sync, say) is skipped with a warning and the next older one is used.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-e(\d+)-s(\d+)\.pt$")
BEST_WEIGHTS = "best_model.pt"


def _name(epoch: int, step: int) -> str:
    # epoch = epochs completed; step = steps done in the epoch after that (0 at ends).
    return f"checkpoint-e{epoch:04d}-s{step:08d}.pt"


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def list_checkpoints(directory: Path) -> list[Path]:
    """Newest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append(((int(match.group(1)), int(match.group(2))), path))
    return [path for _, path in sorted(found, reverse=True)]


def save_checkpoint(state: dict, directory: Path, epoch: int, step: int, keep: int) -> Path:
    path = directory / _name(epoch, step)
    atomic_save(state, path)
    for old in list_checkpoints(directory)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: Path) -> dict | None:
    for path in list_checkpoints(directory):
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - truncated/corrupt: any failure means "skip"
            log.warning("skipping unreadable checkpoint %s: %s", path, err)
            continue
        if not isinstance(state, dict) or "model" not in state:
            log.warning("skipping %s: not a checkpoint of this trainer", path)
            continue
        log.info("resuming from %s", path)
        state["path"] = str(path)
        return state
    return None

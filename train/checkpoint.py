"""Checkpoints in /opt/ml/checkpoints (synced to S3 by SageMaker for spot jobs): the
run's one `save_checkpoint` and one `resume`, and the files beneath them.

A checkpoint is plain data: one dict of tensors, numbers, strings, lists and dicts,
loaded with `torch.load(weights_only=True)`. The folder is shared with S3 and read as
root on every restart, so nothing in it may run code when loaded; a file that would
(a pickled object) is refused like a truncated one. Each checkpoint names the
architecture and class list it was trained for, and resume takes the newest one that
loads as plain data, belongs to this run *and* loads into its model, optimizer,
scheduler and scaler, skipping (with a warning) those that do not.

Files are written to a temporary name and renamed, so a job killed mid-write never
leaves a half file under a real name.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from train import distributed
from train.state import Progress, TrainState

log = logging.getLogger(__name__)

FORMAT = "sagemaker-vision-checkpoint"
FORMAT_VERSION = 2  # 1: the pickled-objects format before plain data; never resumed
_NAME = re.compile(r"^checkpoint-e(\d+)-s(\d+)\.pt$")


def _name(epoch: int, step: int) -> str:
    # epoch = epochs completed; step = steps done in the epoch after that (0 at ends).
    return f"checkpoint-e{epoch:04d}-s{step:08d}.pt"


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _position(path: Path) -> tuple[int, int] | None:
    match = _NAME.match(path.name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def list_checkpoints(directory: Path) -> list[Path]:
    """Newest first."""
    if not directory.is_dir():
        return []
    found = [(_position(path), path) for path in directory.iterdir() if _position(path)]
    return [path for _, path in sorted(found, reverse=True)]


def save_checkpoint(state: TrainState, epoch: int, step: int, partial: tuple[float, float, float] | None = None) -> str | None:
    """Rank 0 writes everything a restart needs, as plain data, after `epoch` epochs and
    `step` more steps; `partial` is the epoch's sums so far when stopping mid-epoch.
    Returns the file written (None on the other ranks)."""
    if not state.process.is_main:
        return None
    progress = dataclasses.replace(state.progress, epoch=epoch, step=step, partial=partial)
    snapshot = {
        "arch": state.config.arch,
        "classes": list(state.classes),
        "model": state.model_without_ddp.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "progress": progress.to_dict(),
        "config": state.config.to_dict(),
    }
    return str(write_snapshot(snapshot, state.checkpoint_dir, epoch, step, state.config.keep_checkpoints))


def resume(state: TrainState) -> None:
    """Continue from the newest checkpoint of this run that loads into it, if any: rank
    0 reads the folder (only the master host has it) and tries each candidate into the
    model, optimizer, scheduler and scaler, newest first; every rank gets the one that
    loaded. A checkpoint whose state does not fit (a changed head, other parameters)
    loses to an older one that does, instead of failing every restart."""
    process = state.process
    found = None
    if process.is_main:
        blank = copy.deepcopy(_states(state))  # what a candidate that fails half-way is undone to

        def fits(snapshot: dict) -> None:
            try:
                _restore(state, snapshot)
            except Exception:
                _restore(state, blank)
                raise

        found = load_latest(state.checkpoint_dir, state.config.arch, state.classes, fits)
    found = distributed.broadcast_from_main(found, process)
    if found is None:
        return
    if not process.is_main:
        _restore(state, found)
    state.progress = Progress.from_dict(found["progress"])
    if process.is_main:
        log.info("resumed at epoch %d step %d from %s", state.progress.epoch + 1, state.progress.step, found["path"])


def _states(state: TrainState) -> dict:
    return {
        "model": state.model_without_ddp.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
    }


def _restore(state: TrainState, snapshot: dict) -> None:
    state.model_without_ddp.load_state_dict(snapshot["model"])  # strict: every key, every shape
    state.optimizer.load_state_dict(snapshot["optimizer"])
    state.scheduler.load_state_dict(snapshot["scheduler"])
    state.scaler.load_state_dict(snapshot["scaler"])


def write_snapshot(snapshot: dict, directory: Path, epoch: int, step: int, keep: int) -> Path:
    """Write `snapshot` (plain data, with `arch` and `classes`) and keep the newest `keep`
    checkpoints up to this one. Newer files are another run's (skipped on resume, see
    `load_latest`); counting them would delete this run's own checkpoints."""
    path = directory / _name(epoch, step)
    atomic_save({"format": FORMAT, "format_version": FORMAT_VERSION, **snapshot}, path)
    ours = [p for p in list_checkpoints(directory) if _position(p) <= (epoch, step)]
    for old in ours[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: Path, arch: str, classes: list[str], fits: Callable[[dict], None] | None = None) -> dict | None:
    """The newest checkpoint that loads as plain data, was written for `arch` and
    `classes` and, when `fits` is given, loads into the run (`fits(snapshot)` raises
    when it does not), with its `path` added; None when there is none."""
    for path in list_checkpoints(directory):
        try:
            snapshot = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - truncated, corrupt or not plain data: all mean "skip"
            # weights_only refuses pickled objects: such a file is skipped, never executed.
            log.warning("skipping unreadable checkpoint %s: %s", path, _first_line(err))
            continue
        mismatch = _mismatch(snapshot, arch, classes)
        if mismatch:
            log.warning("skipping checkpoint %s: %s", path, mismatch)
            continue
        if fits is not None:
            try:
                fits(snapshot)
            except Exception as err:  # noqa: BLE001 - missing keys, wrong shapes, another optimizer: all mean "skip"
                log.warning("skipping checkpoint %s: it does not load into this run: %s", path, _first_line(err))
                continue
        snapshot["path"] = str(path)
        return snapshot
    return None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _mismatch(snapshot, arch: str, classes: list[str]) -> str | None:
    if not isinstance(snapshot, dict) or snapshot.get("format") != FORMAT:
        return "not a checkpoint of this trainer"
    if snapshot.get("format_version") != FORMAT_VERSION:
        return f"checkpoint format {snapshot.get('format_version')!r}, this trainer reads {FORMAT_VERSION}"
    if snapshot.get("arch") != arch:
        return f"written for arch={snapshot.get('arch')!r}, this run trains {arch!r}"
    if list(snapshot.get("classes") or []) != list(classes):
        theirs = list(snapshot.get("classes") or [])
        return f"written for {len(theirs)} classes {theirs[:5]}, this run's data has {len(classes)} {list(classes)[:5]}"
    return None

"""The datasets and samplers of File mode, and the DataLoader they make.

Which files make each split, in which format, is train.formats' (plan, readers) and
train.datasets' (the check, classes, targets); here a split is a list of (source, target)
pairs: decoded by `ImageSamples`, dealt to the ranks by `ShardSampler` (or
`BalancedSampler`), and held out of training by `holdout_split` when the data has no
validation split.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from container import cpu_count
from train.formats.recordio import image_source
from vision import images

log = logging.getLogger(__name__)


def holdout_split(samples, fraction: float, seed: int):
    """Deterministic stratified split: `fraction` of each class becomes validation."""
    rng = random.Random(seed)
    by_class: dict[int, list] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    train, valid = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        rng.shuffle(items)
        n_valid = max(1, round(len(items) * fraction)) if len(items) > 1 else 0
        valid += items[:n_valid]
        train += items[n_valid:]
    return train, valid


class ImageSamples(Dataset):
    """(source, label) pairs -> (tensor, target), decoded by vision.images as serving does
    (EXIF orientation, 16-bit and float scaling, size limits). A source is an image path,
    or a train.formats RecordRef (a record in a .rec file). A file that fails to decode
    (truncated pixel data) is replaced by the next readable one and logged, so one bad
    JPEG does not kill a long job; the scan already removed non-images. With `bad` (a
    train.formats.BadImages shared by every loader worker) each one is also counted, for
    the metrics and the threshold the job fails at. `target_transform` maps a label to the
    target (e.g. train.formats.MultiHot for multi-label tuples of class indices)."""

    def __init__(self, samples, transform, limits: images.ImageLimits | None = None, target_transform=None, bad=None):
        self.samples = samples
        self.transform = transform
        self.limits = limits or images.ImageLimits()  # the decoder serving uses too: same orientation, bit depth, size limits
        self.target_transform = target_transform
        self.bad = bad

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        for attempt in range(len(self.samples)):
            source, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                image = self.transform(images.load_rgb(image_source(source), self.limits))
            except (OSError, ValueError) as err:  # images.ImageRejected is a ValueError
                log.warning("skipping unreadable image %s: %s", source, err)
                if self.bad is not None:
                    self.bad.record_bad(str(source), err)
                continue
            if self.bad is not None:
                self.bad.record_ok()
            return image, label if self.target_transform is None else self.target_transform(label)
        raise RuntimeError("no readable image left in the dataset")


class ShardSampler(Sampler):
    """Sharded, per-epoch shuffled and resumable mid-epoch.

    Like DistributedSampler (every rank gets len/world indices, padded so all ranks
    take the same number of steps), plus `skip` so a job resumed from a mid-epoch
    checkpoint continues where it stopped. For evaluation (pad=False) each sample is
    seen exactly once across ranks, so reduced metrics equal a global computation.
    """

    def __init__(self, size: int, rank: int, world_size: int, seed: int, shuffle: bool, pad: bool):
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.shuffle, self.pad = seed, shuffle, pad
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _order(self) -> list[int]:
        """Every index of the epoch, in the order the ranks deal them."""
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def _indices(self) -> list[int]:
        order = self._order()
        if self.pad and self.size % self.world_size:
            order += order[: self.world_size - self.size % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self._indices()[self.skip :])

    def __len__(self):
        return len(self._indices()) - self.skip


class BalancedSampler(ShardSampler):
    """sampler=balanced: each epoch draws as many images as the split holds, with
    replacement, image i with probability proportional to `weights[i]` (1 / the images of
    its class: every class equally often). The draw is the same on every rank for a given
    (seed, epoch), and each rank deals its share of it, so it shards and resumes
    mid-epoch exactly like ShardSampler."""

    def __init__(self, weights: list[float], rank: int, world_size: int, seed: int):
        super().__init__(len(weights), rank, world_size, seed, shuffle=True, pad=True)
        self.weights = torch.tensor(weights, dtype=torch.float64)

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()


def balance_weights(samples) -> list[float]:
    """1 / (images of the sample's class) for each (source, target); a multi-label image
    counts for each of its classes and takes its rarest class's weight (an image with no
    label: 1 / the images with none)."""
    counts = Counter()
    for _, target in samples:
        counts.update(target if isinstance(target, tuple) and target else [target])
    weights = []
    for _, target in samples:
        labels = target if isinstance(target, tuple) and target else [target]
        weights.append(max(1.0 / counts[label] for label in labels))
    return weights


def default_num_workers(local_world_size: int) -> int:
    # Leave a core for the training process itself; cap where returns vanish.
    return max(0, min(8, cpu_count() // max(1, local_world_size) - 1))


def _leave_process_group(_worker_id: int) -> None:
    # The launcher (torchelastic) stops a worker by signalling its whole process group,
    # and a terminal sends Ctrl-C to the foreground group. Loader processes must not die
    # of that signal while their trainer finishes the step and saves its checkpoint;
    # they still exit with the trainer (the loader watches its parent).
    os.setpgid(0, 0)


def make_loader(dataset, sampler, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        drop_last=False,
        worker_init_fn=_leave_process_group,
    )

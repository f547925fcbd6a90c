"""Test-time augmentation: the mean of the probabilities of an image and its mirror.

A horizontal flip is the one augmentation the trainer applies (vision.presets) that
keeps the evaluation crop's geometry, so the model has seen mirrored images of every
class. Averaging the two answers smooths out a model's left/right quirks. It costs one
forward of twice the rows: for a single image on a CPU about 1.6-1.8x a plain
forward (ResNet-18/50 at 224 px, benchmarks/trust/cost.py), as a batch of two costs
less than two batches of one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def with_mirrors(batch):
    """The 2N rows [batch, batch mirrored left to right] (N x C x H x W in, 2N out): a
    numpy batch (what serving forwards, on every engine) or a torch tensor."""
    if isinstance(batch, np.ndarray):
        return np.concatenate([batch, batch[..., ::-1]])
    import torch  # a tensor's caller has torch loaded

    return torch.cat([batch, batch.flip(-1)])


def mean_of_mirrors(probabilities):
    """The N averaged rows from the 2N rows of probabilities of `with_mirrors(batch)`."""
    rows = probabilities.shape[0] // 2
    return (probabilities[:rows] + probabilities[rows:]) / 2


def flip_averaged(probabilities: Callable, batch):
    """probabilities(batch) averaged with probabilities(batch mirrored left to right),
    from one call on the 2N rows. `probabilities` is the plain path's (softmax of the
    model's logits, in its precision), so TTA changes nothing else. A server whose
    forwards go through a micro-batcher submits with_mirrors(batch) as one request and
    applies mean_of_mirrors to its answer instead."""
    return mean_of_mirrors(probabilities(with_mirrors(batch)))

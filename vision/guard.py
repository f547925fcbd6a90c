"""The accuracy guard: a reduced-precision engine is served only if its answers agree
with fp32 on real images. No torch.

Serving runs the model in fp32 and in the chosen precision on the same batch, the
artifact's calibration crops when it carries them (real training images, the sample
vision/engines/calibration.py describes), else a few synthetic warm-up images, and keeps
the chosen precision only if `compare` passes; otherwise it serves fp32 and says so.

A top-1 flip counts only when it is *decisive*: fp32's top two probabilities are more
than TIE_MARGIN apart (between two classes that close, fp32 itself is arbitrary).
The rules per precision:

- bf16, fp16 (torch autocast): no decisive flip, and no probability moves by more than
  0.05. bf16 keeps 8 significant bits: a trained model's logits of magnitude ~10 move by
  ~0.05, which shifts a probability near 0.5 by ~0.01-0.02; an overflow or lost
  resolution moves them far more.
- int8 (ONNX Runtime): no decisive flip; the largest probability difference is logged,
  not bounded. Healthy int8 models moved probabilities by up to 0.17 on their own
  calibration crops (a ResNet-50 on the digits) while every saturating one was caught by
  a decisive flip, so a probability bound separates nothing there (benchmarks/engines).
  The calibration crops also set int8's activation ranges: the guard catches broken
  kernels and exports on this CPU, not generalisation. For that the trainer checks int8
  against labels on the validation split (vision/engines/accuracy.py) and leaves out an
  int8 model that loses more than INT8_MAX_DROP_POINTS.

Both sides are compared as plain softmax (temperature 1), whatever the served head is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vision.scores import softmax

TIE_MARGIN = 0.05
PROBABILITY_BOUNDS = {"bf16": 0.05, "fp16": 0.05, "int8": None}
# The most accuracy int8 may lose against fp32 on the validation split, in percentage
# points: the trainer's check with labels (vision/engines/accuracy.py), which catches what
# this label-free guard cannot (an int8 model that generalises worse).
INT8_MAX_DROP_POINTS = 0.5


@dataclass(frozen=True)
class GuardResult:
    precision: str  # the precision that was checked
    images: int
    max_probability_diff: float
    top1_flips: int  # any top-1 change
    decisive_flips: int  # top-1 changes where fp32's top two are more than TIE_MARGIN apart
    bound: float | None  # the probability bound of this precision (None: not bounded)

    @property
    def passed(self) -> bool:
        within = self.bound is None or self.max_probability_diff <= self.bound
        return self.decisive_flips == 0 and within

    def summary(self) -> str:
        bound = f" (bound {self.bound:g})" if self.bound is not None else " (not bounded)"
        return (
            f"{self.precision} vs fp32 on {self.images} images: {self.decisive_flips} decisive top-1 flips "
            f"({self.top1_flips} in all), largest probability difference {self.max_probability_diff:.4f}{bound}, "
            f"top-1 agreement {self.images - self.top1_flips}/{self.images}"
        )


def compare(precision: str, reference_logits: np.ndarray, candidate_logits: np.ndarray) -> GuardResult:
    """`candidate_logits` (the model in `precision`) against `reference_logits` (fp32) on the same images."""
    reference, candidate = softmax(reference_logits), softmax(candidate_logits)
    if reference.shape != candidate.shape:
        raise ValueError(f"the guard compares outputs of one shape, got {reference.shape} and {candidate.shape}")
    flipped = reference.argmax(1) != candidate.argmax(1)
    if reference.shape[1] > 1:
        top2 = np.sort(reference, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) > TIE_MARGIN
    else:
        decisive = np.ones(len(reference), dtype=bool)
    return GuardResult(
        precision=precision,
        images=len(reference),
        max_probability_diff=float(np.abs(reference - candidate).max()) if reference.size else 0.0,
        top1_flips=int(flipped.sum()),
        decisive_flips=int((flipped & decisive).sum()),
        bound=PROBABILITY_BOUNDS.get(precision),
    )

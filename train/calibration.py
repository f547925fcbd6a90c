"""Calibrated confidence: temperature scaling and expected calibration error.

A network trained to a low loss is usually overconfident: among answers given with
95% confidence, fewer than 95% are right. Temperature scaling (Guo et al., "On
Calibration of Modern Neural Networks", 2017) fixes most of that with one number T
fitted on held-out logits: the served probabilities become softmax(logits / T). T is
fitted by minimising the negative log-likelihood with L-BFGS, as in the paper; dividing
every logit by the same positive T never changes which class is on top, so accuracy
and every top-k list stay exactly as they were.

Expected calibration error (ECE) measures what T fixes: answers are put in equal-width
bins of confidence (15 by default, as in the paper), and ECE is the
answer-weighted mean of |accuracy - confidence| over the bins. `Reliability` holds the
per-bin numbers for the reliability diagram (train.plots.plot_reliability).

Everything here takes logits and integer targets of the whole split on one process
(rank 0 after gathering); nothing touches the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_BINS = 15
# T is searched as log T (always positive), within these bounds: beyond them the fit is
# chasing a few samples (T -> 0 makes every answer certain, T -> inf makes all equal).
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


@dataclass(frozen=True)
class Reliability:
    """Per-bin statistics of the top-1 answers: bin b holds confidences in (edges[b], edges[b + 1]]
    (the first bin also holds 0). Empty bins have count 0 and accuracy = confidence = 0."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    accuracy: tuple[float, ...]
    confidence: tuple[float, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def ece(self) -> float:
        if not self.total:
            return 0.0
        return sum(n * abs(a - c) for n, a, c in zip(self.counts, self.accuracy, self.confidence, strict=True)) / self.total


def reliability(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = DEFAULT_BINS) -> Reliability:
    """Bin the top-1 confidence of each row of `probabilities` (N x classes) into `bins`
    equal-width bins over [0, 1] and compare it with how often that answer is right."""
    if bins < 1:
        raise ValueError(f"bins={bins}: need at least one bin")
    probabilities = probabilities.detach().to(torch.float64).cpu()
    targets = targets.detach().cpu()
    confidence, predicted = probabilities.max(dim=1)
    correct = (predicted == targets).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64)
    # right=False with edges[1:-1] puts c in bin b when edges[b] < c <= edges[b + 1].
    index = torch.bucketize(confidence, edges[1:-1], right=False)
    counts = torch.bincount(index, minlength=bins)
    sums_conf = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    sums_correct = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    safe = counts.clamp(min=1).to(torch.float64)
    return Reliability(
        edges=tuple(edges.tolist()),
        counts=tuple(int(n) for n in counts),
        accuracy=tuple((sums_correct / safe).tolist()),
        confidence=tuple((sums_conf / safe).tolist()),
    )


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, bins: int = DEFAULT_BINS) -> float:
    """ECE of softmax(logits / temperature) against `targets`, in [0, 1]."""
    return reliability(scaled_probabilities(logits, temperature), targets, bins).ece


def scaled_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(logits / T) in float64: the probabilities a model with temperature T serves."""
    return torch.softmax(logits.detach().to(torch.float64) / temperature, dim=1)


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(logits / T)."""
    return float(F.cross_entropy(logits.detach().to(torch.float64) / temperature, targets.long()))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on these (validation) rows.

    1.0 (no change) when the rows cannot determine T: none, or no wrong answer at all
    (then NLL keeps falling as T -> 0, i.e. the fit would make every answer certain)."""
    if logits.ndim != 2 or len(logits) != len(targets):
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)}: expected N x classes and N")
    if not len(logits) or bool((logits.argmax(1) == targets).all()):
        return 1.0
    # The caller may be evaluation code under inference_mode or no_grad: fit outside
    # both, on copies (an inference-mode tensor cannot take part in autograd).
    with torch.inference_mode(False), torch.enable_grad():
        logits = logits.detach().to(torch.float64, copy=True).cpu()
        targets = targets.detach().to(torch.int64, copy=True).cpu()
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
        bounds = (math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE))

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_t.clamp(*bounds).exp(), targets)
            loss.backward()
            return loss

        optimizer.step(closure)
        temperature = float(log_t.detach().clamp(*bounds).exp())
    return temperature if math.isfinite(temperature) else 1.0


@dataclass(frozen=True)
class Calibration:
    """What temperature scaling did on the split it was fitted on."""

    temperature: float
    bins: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    before: Reliability
    after: Reliability

    def metrics(self) -> dict:
        """Flat numbers for metrics.json and MLflow."""
        return {
            "temperature": self.temperature,
            "ece_bins": self.bins,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "nll_before": self.nll_before,
            "nll_after": self.nll_after,
        }


def calibrate(logits: torch.Tensor, targets: torch.Tensor, bins: int = DEFAULT_BINS) -> Calibration:
    """Fit T on (validation) logits and report ECE and NLL before and after on the same rows."""
    temperature = fit_temperature(logits, targets)
    before = reliability(scaled_probabilities(logits, 1.0), targets, bins)
    after = reliability(scaled_probabilities(logits, temperature), targets, bins)
    return Calibration(
        temperature=temperature,
        bins=bins,
        ece_before=before.ece,
        ece_after=after.ece,
        nll_before=nll(logits, targets),
        nll_after=nll(logits, targets, temperature),
        before=before,
        after=after,
    )


@dataclass(frozen=True)
class Report:
    """What a finished run reports about calibration: T (fitted on the validation split,
    or 1.0 when calibration is off) and ECE / NLL before and after it on the final split
    (the test split when there is one: T was not fitted on it, so that is the honest number)."""

    temperature: float
    split: str  # the final split
    images: int
    before: Reliability  # the final split at T = 1
    after: Reliability | None  # the final split at T (None: calibration off)
    nll_before: float
    nll_after: float | None
    fitted: Calibration | None  # the fit on the validation split (None: calibration off)
    fitted_images: int = 0

    def metrics(self) -> dict:
        """metrics.json's "calibration" object; its top-level numbers are the final split's."""
        out = {
            "temperature": self.temperature,
            "fitted_on": "valid" if self.fitted is not None else None,
            "split": self.split,
            "images": self.images,
            "ece_bins": len(self.before.counts),
            "ece_before": self.before.ece,
            "nll_before": self.nll_before,
        }
        if self.after is not None:
            out.update(ece_after=self.after.ece, nll_after=self.nll_after)
        if self.fitted is not None:
            out["fit"] = {**self.fitted.metrics(), "split": "valid", "images": self.fitted_images}
        return out


def report(
    final: tuple[torch.Tensor, torch.Tensor], split: str, fit_on: tuple[torch.Tensor, torch.Tensor] | None, bins: int = DEFAULT_BINS
) -> Report:
    """Fit T on `fit_on` (validation logits and targets; None leaves T = 1) and measure it
    on `final` (the final split's logits and targets)."""
    if fit_on is not None and not len(fit_on[1]):
        fit_on = None  # no validation rows: nothing to fit on
    fitted = calibrate(*fit_on, bins=bins) if fit_on is not None else None
    temperature = fitted.temperature if fitted is not None else 1.0
    logits, targets = final
    return Report(
        temperature=temperature,
        split=split,
        images=len(targets),
        before=reliability(scaled_probabilities(logits, 1.0), targets, bins),
        after=reliability(scaled_probabilities(logits, temperature), targets, bins) if fitted is not None else None,
        nll_before=nll(logits, targets) if len(targets) else 0.0,
        nll_after=nll(logits, targets, temperature) if fitted is not None and len(targets) else None,
        fitted=fitted,
        fitted_images=len(fit_on[1]) if fit_on is not None else 0,
    )

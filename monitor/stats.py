"""The two-sample statistics of the monitor, in numpy and scipy.

- mmd_test: squared maximum mean discrepancy (Gretton et al. 2012) with a Gaussian
  kernel whose bandwidth is the median pairwise distance of the pooled sample, and a
  permutation test (all permutations at once: one kernel matrix, one matrix product);
- label_test: Pearson's chi-square test of homogeneity on predicted-label counts,
  with the total-variation distance as the effect size;
- ks_test: two-sample Kolmogorov-Smirnov (scipy), the statistic is the effect size;
- rank_test: one-sided Mann-Whitney U test that the window's OOD distances are larger
  than the baseline's calibration distances (both are scored against the same fit
  half, so they are exchangeable when nothing changed), with the probability that a
  captured image is more unusual than a baseline image as the effect size.

Black-box shift detection on predictions (chi-square on labels, KS on confidence) and
MMD on reduced penultimate features are the detectors "Failing Loudly" (Rabanser,
Günnemann & Lipton, 2019) found most effective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class StatResult:
    statistic: float
    p_value: float
    effect: float | None = None  # an interpretable size of the difference, when the test has one


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(d, 0.0)


def median_bandwidth(pooled: np.ndarray) -> float:
    """The median of the non-zero pairwise distances (1.0 when all points coincide)."""
    d = squared_distances(pooled, pooled)
    upper = d[np.triu_indices(len(pooled), k=1)]
    upper = upper[upper > 0]
    return float(math.sqrt(np.median(upper))) if upper.size else 1.0


def gaussian_kernel(x: np.ndarray, y: np.ndarray, bandwidth: float) -> np.ndarray:
    return np.exp(-squared_distances(x, y) / (2.0 * bandwidth**2))


def mmd2_unbiased(kernel: np.ndarray, n: int) -> float:
    """Unbiased MMD^2 of the first n rows/columns of a pooled kernel matrix against the rest."""
    m = kernel.shape[0] - n
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2.0 * kxy.sum() / (n * m))


def _mmd2_of_splits(kernel: np.ndarray, in_x: np.ndarray, n: int) -> np.ndarray:
    """Unbiased MMD^2 for each column of in_x (N x B, 1 where a point is in the first sample)."""
    m = kernel.shape[0] - n
    diagonal = np.diag(kernel)
    total = kernel.sum()
    k_in_x = kernel @ in_x  # N x B
    sum_xx = (in_x * k_in_x).sum(axis=0)
    row_sums = kernel.sum(axis=1)
    sum_xy = (in_x * row_sums[:, None]).sum(axis=0) - sum_xx
    sum_yy = total - 2.0 * sum_xy - sum_xx
    trace_x = diagonal @ in_x
    trace_y = diagonal.sum() - trace_x
    return (sum_xx - trace_x) / (n * (n - 1)) + (sum_yy - trace_y) / (m * (m - 1)) - 2.0 * sum_xy / (n * m)


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator, bandwidth: float | None = None) -> StatResult:
    """MMD^2 of samples x (n x d) and y (m x d), and its permutation p-value
    (1 + #{permuted >= observed}) / (1 + permutations). `effect` is the bandwidth used."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 points per sample, got {n} and {m}")
    pooled = np.concatenate([x, y])
    bandwidth = bandwidth or median_bandwidth(pooled)
    kernel = gaussian_kernel(pooled, pooled, bandwidth)
    observed = mmd2_unbiased(kernel, n)
    exceed = 0
    chunk = 200  # permutations per matrix product: bounds memory at N x 200
    done = 0
    while done < permutations:
        count = min(chunk, permutations - done)
        in_x = np.zeros((n + m, count))
        for column in range(count):
            in_x[rng.permutation(n + m)[:n], column] = 1.0
        exceed += int((_mmd2_of_splits(kernel, in_x, n) >= observed - 1e-12).sum())
        done += count
    return StatResult(observed, (1.0 + exceed) / (1.0 + permutations), bandwidth)


def label_test(reference_counts, window_counts) -> StatResult:
    """Chi-square test of homogeneity of two label-count vectors (classes seen in neither
    are dropped; Pearson's statistic, no continuity correction). effect: total-variation
    distance between the two label distributions."""
    table = np.array([reference_counts, window_counts], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return StatResult(0.0, 1.0, 0.0)
    result = scipy_stats.chi2_contingency(table, correction=False)
    shares = table / table.sum(axis=1, keepdims=True)
    return StatResult(float(result.statistic), float(result.pvalue), float(0.5 * np.abs(shares[0] - shares[1]).sum()))


def ks_test(reference, window) -> StatResult:
    """Two-sample Kolmogorov-Smirnov; effect: the statistic (the largest CDF gap)."""
    reference, window = np.asarray(reference, np.float64), np.asarray(window, np.float64)
    if reference.size == 0 or window.size == 0:
        return StatResult(0.0, 1.0, 0.0)
    result = scipy_stats.ks_2samp(reference, window)
    return StatResult(float(result.statistic), float(result.pvalue), float(result.statistic))


def rank_test(reference, window) -> StatResult:
    """One-sided Mann-Whitney U test that `window` values are larger than `reference`
    values. statistic: U / (n m), the probability that a window value exceeds a reference
    value (ties count half; 0.5 when alike); effect: that probability minus 0.5."""
    reference, window = np.asarray(reference, np.float64), np.asarray(window, np.float64)
    if reference.size == 0 or window.size == 0:
        return StatResult(0.5, 1.0, 0.0)
    result = scipy_stats.mannwhitneyu(window, reference, alternative="greater")
    auc = float(result.statistic) / (reference.size * window.size)
    return StatResult(auc, float(result.pvalue), auc - 0.5)

"""The monitor's statistics against values computed by hand (or by enumerating every case)."""

import itertools
import math

import numpy as np
import pytest

from monitor import stats


def test_median_bandwidth_is_the_median_pairwise_distance():
    # points 0, 1, 3 on a line: distances 1, 3, 2 -> median 2
    assert stats.median_bandwidth(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)
    assert stats.median_bandwidth(np.zeros((4, 2))) == 1.0  # all points coincide


def test_unbiased_mmd2_by_hand():
    # x = {0, 1}, y = {0, 3}, Gaussian kernel with bandwidth 1: k(a, b) = exp(-(a - b)^2 / 2)
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [3.0]])
    k = lambda a, b: math.exp(-((a - b) ** 2) / 2)  # noqa: E731
    xx = 2 * k(0, 1) / 2  # off-diagonal pairs of x over n(n-1)
    yy = 2 * k(0, 3) / 2
    xy = (k(0, 0) + k(0, 3) + k(1, 0) + k(1, 3)) / 4
    expected = xx + yy - 2 * xy
    pooled = np.concatenate([x, y])
    assert stats.mmd2_unbiased(stats.gaussian_kernel(pooled, pooled, 1.0), 2) == pytest.approx(expected)


def test_permutation_statistics_equal_the_direct_formula():
    rng = np.random.default_rng(0)
    pooled = rng.normal(size=(9, 3))
    kernel = stats.gaussian_kernel(pooled, pooled, 1.3)
    splits, in_x = [], np.zeros((9, 5))
    for column in range(5):
        order = rng.permutation(9)
        in_x[order[:4], column] = 1.0
        permuted = kernel[np.ix_(order, order)]
        splits.append(stats.mmd2_unbiased(permuted, 4))
    assert stats._mmd2_of_splits(kernel, in_x, 4) == pytest.approx(splits)


def test_mmd_test_tells_same_from_shifted():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(60, 4))
    same = stats.mmd_test(reference, rng.normal(size=(60, 4)), 199, rng)
    shifted = stats.mmd_test(reference, rng.normal(size=(60, 4)) + [1.0, 0, 0, 0], 199, rng)
    assert same.p_value > 0.05
    assert shifted.p_value == pytest.approx(1 / 200)  # no permutation reaches it: the smallest p-value
    assert shifted.statistic > same.statistic


def test_mmd_permutation_p_value_is_uniform_under_the_null():
    rng = np.random.default_rng(2)
    p_values = [stats.mmd_test(rng.normal(size=(15, 2)), rng.normal(size=(15, 2)), 99, rng).p_value for _ in range(200)]
    assert 0.01 <= np.mean(np.array(p_values) <= 0.1) <= 0.2  # ~0.1 expected (sd 0.02)


def test_label_test_by_hand():
    # [[10, 20], [20, 10]]: every expected count is 15, chi2 = 4 * 5^2 / 15 = 6.667 with 1 dof
    result = stats.label_test([10, 20], [20, 10])
    assert result.statistic == pytest.approx(20 / 3)
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(20 / 3 / 2)))  # chi2(1) survival = erfc(sqrt(x/2))
    assert result.effect == pytest.approx(1 / 3)  # |1/3 - 2/3| + |2/3 - 1/3| halved


def test_label_test_drops_classes_neither_sample_predicts():
    assert stats.label_test([10, 0, 20], [20, 0, 10]).statistic == pytest.approx(20 / 3)
    only_one = stats.label_test([5, 0], [7, 0])
    assert (only_one.p_value, only_one.effect) == (1.0, 0.0)
    assert stats.label_test([5, 3], [0, 0]).p_value == 1.0  # an empty window tests nothing


def test_ks_test_matches_enumerating_every_split():
    reference, window = [1.0, 2.0, 3.0, 4.0], [2.5, 3.5, 5.0, 6.0]

    def distance(a, b):
        grid = sorted(a + b)
        return max(abs(sum(v <= t for v in a) / len(a) - sum(v <= t for v in b) / len(b)) for t in grid)

    observed = distance(reference, window)
    assert observed == pytest.approx(0.5)  # at t = 4: F_ref = 1, F_window = 0.5
    pooled = reference + window
    splits = list(itertools.combinations(range(8), 4))
    at_least = sum(
        distance([pooled[i] for i in chosen], [pooled[i] for i in range(8) if i not in chosen]) >= observed - 1e-12 for chosen in splits
    )
    result = stats.ks_test(reference, window)
    assert result.statistic == pytest.approx(0.5) and result.effect == pytest.approx(0.5)
    assert result.p_value == pytest.approx(at_least / len(splits))


def test_rank_test_by_hand():
    # window {3, 4} against reference {1, 2, 5}: 4 of the 6 pairs have the window value larger
    result = stats.rank_test([1.0, 2.0, 5.0], [3.0, 4.0])
    assert result.statistic == pytest.approx(4 / 6) and result.effect == pytest.approx(4 / 6 - 0.5)
    # Exact one-sided p-value: of the C(5, 2) = 10 equally likely places for the window's two
    # values among the five, those whose pair count U reaches 4.
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    at_least = 0
    for chosen in itertools.combinations(range(5), 2):
        window = [values[i] for i in chosen]
        reference = [values[i] for i in range(5) if i not in chosen]
        at_least += sum(w > r for w in window for r in reference) >= 4
    assert result.p_value == pytest.approx(at_least / 10)
    assert stats.rank_test([1.0], []).p_value == 1.0


def test_rank_test_is_one_sided():
    rng = np.random.default_rng(3)
    reference = rng.normal(size=200)
    assert stats.rank_test(reference, rng.normal(size=200) + 0.5).p_value < 1e-5
    lower = stats.rank_test(reference, rng.normal(size=200) - 0.5)
    assert lower.p_value > 0.99 and lower.effect < 0  # more typical than the baseline is no alarm

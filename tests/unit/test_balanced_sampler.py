"""sampler=balanced: every class drawn about equally often, the same draw on every rank
for a (seed, epoch), dealt in shares like ShardSampler, resumable mid-epoch."""

from collections import Counter

import pytest

from train.data import BalancedSampler, balance_weights

# 90 images of class 0, 9 of class 1, 1 of class 2.
SAMPLES = [(f"a{i}", 0) for i in range(90)] + [(f"b{i}", 1) for i in range(9)] + [("c0", 2)]


def test_weights_are_inverse_class_counts():
    weights = balance_weights(SAMPLES)
    assert weights[0] == pytest.approx(1 / 90) and weights[90] == pytest.approx(1 / 9) and weights[99] == 1.0


def test_multi_label_images_take_their_rarest_classs_weight():
    samples = [("x", (0,)), ("y", (0, 1)), ("z", (0,)), ("e", ())]
    assert balance_weights(samples) == pytest.approx([1 / 3, 1.0, 1 / 3, 1.0])


def test_classes_come_out_balanced_and_the_draw_is_reproducible():
    weights = balance_weights(SAMPLES)
    drawn = Counter()
    for epoch in range(30):
        sampler = BalancedSampler(weights, 0, 1, seed=5)
        sampler.set_epoch(epoch)
        drawn.update(SAMPLES[i][1] for i in sampler)
    shares = [drawn[c] / sum(drawn.values()) for c in range(3)]
    assert shares == pytest.approx([1 / 3] * 3, abs=0.05)
    again = BalancedSampler(weights, 0, 1, seed=5)
    again.set_epoch(29)
    assert list(again) == list(sampler)
    again.set_epoch(28)
    assert list(again) != list(sampler)


def test_ranks_deal_one_draw_and_resume_mid_epoch():
    weights = balance_weights(SAMPLES)
    whole = BalancedSampler(weights, 0, 1, seed=1)
    whole.set_epoch(3)
    shares = []
    for rank in range(3):
        sampler = BalancedSampler(weights, rank, 3, seed=1)
        sampler.set_epoch(3)
        shares.append(list(sampler))
    assert [len(s) for s in shares] == [34, 34, 34]  # 100 padded to 102: equal steps
    assert [i for group in zip(*shares, strict=True) for i in group][:100] == list(whole)
    resumed = BalancedSampler(weights, 1, 3, seed=1)
    resumed.set_epoch(3, skip=10)
    assert list(resumed) == shares[1][10:] and len(resumed) == 24

import pytest
import torch

from train.metrics import per_class_report, summarize, update_confusion


def test_confusion_and_macro_f1_by_hand():
    confusion = torch.zeros((3, 3), dtype=torch.int64)
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    update_confusion(confusion, torch.nn.functional.one_hot(predicted, 3).float(), targets)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    summary = summarize(confusion, ["a", "b", "c"])
    assert summary["acc"] == pytest.approx(4 / 6)
    # a: p=1/2 r=1/2 f=1/2; b: p=2/3 r=1 f=0.8; c: p=1 r=1/2 f=2/3
    assert summary["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert summary["per_class"]["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}


def test_sharded_confusions_sum_to_the_global_one():
    torch.manual_seed(0)
    logits, targets = torch.randn(50, 4), torch.randint(0, 4, (50,))
    whole = torch.zeros((4, 4), dtype=torch.int64)
    update_confusion(whole, logits, targets)
    shards = torch.zeros((4, 4), dtype=torch.int64)
    for rank in range(3):
        part = torch.zeros((4, 4), dtype=torch.int64)
        update_confusion(part, logits[rank::3], targets[rank::3])
        shards += part
    assert torch.equal(whole, shards)


def test_absent_classes_do_not_drag_macro_average():
    confusion = torch.tensor([[3, 0, 0], [0, 2, 0], [0, 0, 0]])
    assert summarize(confusion, ["a", "b", "c"])["macro_f1"] == 1.0


def test_report_lists_every_class():
    text = per_class_report(summarize(torch.tensor([[2, 0], [1, 1]]), ["cat", "dog"]))
    assert "cat" in text and "dog" in text and "macro avg" in text

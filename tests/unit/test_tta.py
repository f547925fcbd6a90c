"""Flip test-time augmentation (vision.tta)."""

import torch

from vision.tta import flip_averaged, mean_of_mirrors, with_mirrors


def softmax_of(model):
    calls: list[int] = []

    def probabilities(batch):
        calls.append(batch.shape[0])
        with torch.inference_mode():
            return torch.softmax(model(batch), dim=1)

    return probabilities, calls


def conv_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5)
    ).eval()


def test_mean_of_the_image_and_its_mirror_in_one_forward():
    model = conv_model()
    probabilities, calls = softmax_of(model)
    batch = torch.randn(3, 3, 8, 8)
    averaged = flip_averaged(probabilities, batch)
    assert calls == [6], "one forward of the image rows and their mirrors"
    with torch.inference_mode():
        expected = (torch.softmax(model(batch), dim=1) + torch.softmax(model(torch.flip(batch, dims=[3])), dim=1)) / 2
    assert torch.allclose(averaged, expected, atol=1e-6)
    assert torch.allclose(averaged.sum(dim=1), torch.ones(3))
    assert not torch.allclose(averaged, probabilities(batch), atol=1e-4), "this model is not mirror-symmetric"


def test_a_mirror_symmetric_image_keeps_its_answer():
    model = conv_model()
    probabilities, _ = softmax_of(model)
    half = torch.randn(1, 3, 8, 4)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)
    assert torch.allclose(flip_averaged(probabilities, symmetric), probabilities(symmetric), atol=1e-6)


def test_the_two_halves_for_a_micro_batcher():
    batch = torch.randn(2, 3, 4, 4)
    rows = with_mirrors(batch)
    assert rows.shape == (4, 3, 4, 4)
    assert torch.equal(rows[:2], batch) and torch.equal(rows[2:], batch.flip(-1))
    assert torch.allclose(
        mean_of_mirrors(torch.tensor([[1.0, 0.0], [0.2, 0.8], [0.0, 1.0], [0.4, 0.6]])), torch.tensor([[0.5, 0.5], [0.3, 0.7]])
    )

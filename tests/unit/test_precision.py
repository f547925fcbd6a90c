"""Precision choice from the device's own capabilities, and the accuracy guard on the
torch engine (the guard's rules themselves: tests/unit/test_engines_serving.py)."""

import logging

import numpy as np
import pytest
import torch

from vision import cpu, guard, precision

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
COOPER_LAKE = frozenset({"avx2", "avx512f", "avx512_bf16"})
SKYLAKE = frozenset({"avx2", "avx512f", "avx512bw"})


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(SAPPHIRE_RAPIDS, "bf16"), (COOPER_LAKE, "bf16"), (SKYLAKE, "fp32"), (frozenset(), "fp32")],
)
def test_auto_on_cpu_picks_bf16_only_with_native_support(flags, expected):
    assert precision.choose("auto", CPU, flags=flags).name == expected


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), "bf16"), ((8, 6), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp32")],
)
def test_auto_on_cuda_follows_compute_capability(capability, expected):
    assert precision.choose("auto", torch.device("cuda"), capability=capability).name == expected


def test_explicit_choice_is_honoured_and_emulation_is_warned(caplog):
    with caplog.at_level(logging.WARNING):
        chosen = precision.choose("bf16", CPU, flags=SKYLAKE)
    assert chosen.name == "bf16" and chosen.dtype is torch.bfloat16
    assert "no native bf16" in caplog.text
    assert precision.choose("fp32", CPU, flags=SAPPHIRE_RAPIDS).dtype is None


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        precision.choose("int8", CPU, flags=SAPPHIRE_RAPIDS)


def logits_of(module, batch):
    with torch.no_grad():
        return module(batch).float().numpy()


def test_guard_keeps_bf16_for_an_ordinary_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 5)).eval()
    batch = torch.rand(4, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = logits_of(net, batch)
    result = guard.compare("bf16", logits_of(net, batch), reduced)
    assert result.passed
    assert 0 < result.max_probability_diff < result.bound


def test_guard_fails_bf16_on_a_model_bf16_cannot_represent():
    # Logits 256.0 and 256.5: bf16 has 8 significant bits, so both become 256 and the
    # fp32 answer (class 1 at 62%) turns into a 50/50 tie.
    net = torch.nn.Linear(1, 2, bias=False).eval()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[256.0], [256.5]]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = logits_of(net, torch.ones(3, 1))
    result = guard.compare("bf16", logits_of(net, torch.ones(3, 1)), reduced)
    assert not result.passed
    assert result.max_probability_diff > 0.1


def classifier_with(module, chosen, calibration=None):
    from serve.torch_model import TorchClassifier
    from vision.artifact import ModelSpec

    spec = ModelSpec("resnet18", ("a", "b"), 32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return TorchClassifier(module.eval(), spec, CPU, chosen, "AVX-512 BF16", calibration)


def test_served_classifier_keeps_bf16_when_the_guard_agrees(caplog):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    classifier = classifier_with(net, precision.Precision("bf16", "cpu"))
    with caplog.at_level(logging.INFO):
        classifier.warm_up()
    assert classifier.precision == "bf16"
    assert classifier.guard is not None and classifier.guard.passed and classifier.guard.images == 4  # the warm-up images
    assert "accuracy guard: bf16 kept" in caplog.text


def test_served_classifier_falls_back_to_fp32_on_a_model_made_to_disagree(caplog):
    head = torch.nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([256.0, 256.5]))  # equal in bf16: the answer becomes a tie
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), head)
    calibration = np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    classifier = classifier_with(net, precision.Precision("bf16", "cpu"), calibration)
    with caplog.at_level(logging.WARNING):
        classifier.warm_up()
    assert not classifier.guard.passed and classifier.guard.images == 10  # the calibration crops
    assert classifier.precision == "fp32"
    assert "serving fp32 instead" in caplog.text
    expected = torch.softmax(torch.tensor([[256.0, 256.5]]), 1).numpy()
    assert np.allclose(classifier.probabilities(np.zeros((1, 3, 32, 32), np.float32)), expected, atol=1e-6)
    # A hook passing a torch tensor gets a torch tensor back.
    assert torch.allclose(classifier.probabilities(torch.zeros(1, 3, 32, 32)), torch.from_numpy(expected), atol=1e-6)


# --- training: amp=auto on a CPU ---------------------------------------------------------


@pytest.mark.parametrize(
    "flags, amp, expected",
    [
        ({"avx512f", "avx512_bf16"}, "auto", torch.bfloat16),
        ({"amx_bf16", "amx_tile"}, "auto", torch.bfloat16),
        ({"avx512f", "avx2"}, "auto", None),  # emulated bf16 is slower than fp32
        ({"avx512_bf16"}, "off", None),
        ({"avx2"}, "bf16", torch.bfloat16),  # asked for: honoured
    ],
)
def test_training_amp_on_cpu_follows_the_cpu_flags(monkeypatch, flags, amp, expected):
    from train.build import amp_dtype
    from train.config import TrainConfig

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    assert amp_dtype(TrainConfig(amp=amp), torch.device("cpu")) is expected

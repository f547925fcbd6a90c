"""Precision choice from the device's own capabilities, and the accuracy guard."""

import logging

import pytest
import torch

from vision import precision

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
COOPER_LAKE = frozenset({"avx2", "avx512f", "avx512_bf16"})
SKYLAKE = frozenset({"avx2", "avx512f", "avx512bw"})


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx512_bf16 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512_bf16", "amx_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


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


def softmax_of(module):
    return lambda batch: torch.softmax(module(batch).float(), dim=1)


def test_guard_keeps_bf16_for_an_ordinary_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 5)).eval()
    batch = torch.rand(4, 3, 16, 16)
    result = precision.guard(softmax_of(net), batch, precision.Precision("bf16", "cpu"))
    assert not result.fell_back
    assert result.precision.name == "bf16"
    assert 0 < result.max_probability_diff < result.bound


def test_guard_falls_back_to_fp32_on_a_model_bf16_cannot_represent(caplog):
    # Logits 256.0 and 256.5: bf16 has 8 significant bits, so both become 256 and the
    # fp32 answer (class 1 at 62%) turns into a 50/50 tie.
    net = torch.nn.Linear(1, 2, bias=False).eval()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[256.0], [256.5]]))
    with caplog.at_level(logging.WARNING):
        result = precision.guard(softmax_of(net), torch.ones(3, 1), precision.Precision("bf16", "cpu"))
    assert result.fell_back
    assert result.precision.name == "fp32"
    assert result.max_probability_diff > 0.1
    assert "serving fp32" in caplog.text


def test_guard_ignores_top1_flips_between_tied_classes():
    # fp32 itself is arbitrary between two classes 0.001 apart; that is not a disagreement.
    net = torch.nn.Linear(1, 2, bias=False).eval()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0], [1.002]]))
    result = precision.guard(softmax_of(net), torch.ones(2, 1), precision.Precision("bf16", "cpu"), bound=0.01)
    assert result.top1_disagreements == 0
    assert not result.fell_back


def test_fp32_needs_no_guard():
    result = precision.guard(lambda b: b, torch.ones(1, 2), precision.Precision("fp32", "cpu"))
    assert result.precision.name == "fp32" and not result.fell_back


def classifier_with(module, chosen):
    from serve.model import Classifier
    from vision.artifact import ModelSpec

    spec = ModelSpec("resnet18", ("a", "b"), 32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return Classifier(module.eval(), spec, CPU, chosen)


def test_served_classifier_keeps_bf16_when_the_guard_agrees():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    classifier = classifier_with(net, precision.Precision("bf16", "cpu"))
    classifier.warm_up()
    assert classifier.precision.name == "bf16"
    assert classifier.guard is not None and not classifier.guard.fell_back


def test_served_classifier_falls_back_to_fp32_on_a_model_made_to_disagree():
    head = torch.nn.Linear(3, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([256.0, 256.5]))  # equal in bf16: the answer becomes a tie
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), head)
    classifier = classifier_with(net, precision.Precision("bf16", "cpu"))
    classifier.warm_up()
    assert classifier.guard.fell_back
    assert classifier.precision.name == "fp32"
    batch = torch.zeros(1, 3, 32, 32)
    assert torch.allclose(classifier.probabilities(batch), torch.softmax(torch.tensor([[256.0, 256.5]]), 1), atol=1e-6)


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

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    assert amp_dtype(TrainConfig(amp=amp), torch.device("cpu")) is expected

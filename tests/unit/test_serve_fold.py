"""Serving folds BatchNorm into convs and uses channels-last: same answers as the
eager model the trainer saved, for traceable and untraceable architectures."""

import logging

import pytest
import torch

from serve.torch_model import fold_for_inference
from vision.models import build_model


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "mobilenet_v3_small", "densenet121"])
def test_folded_model_gives_the_same_logits(arch):
    torch.manual_seed(0)
    eager = build_model(arch, 5).eval()
    # Non-trivial BatchNorm statistics, as a trained model has.
    for module in eager.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = eager(x)
        folded = fold_for_inference(eager, arch)
        got = folded(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    if arch == "resnet18":
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_untraceable_module_is_served_unfolded(caplog):
    caplog.set_level(logging.INFO, logger="serve.torch_model")

    class DataDependent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # FX cannot trace control flow on values
                return self.bn(self.conv(x))
            return self.conv(x)

    module = DataDependent().eval()
    x = torch.ones(1, 3, 8, 8)
    with torch.inference_mode():
        expected = module(x)
        folded = fold_for_inference(module, "custom")
        assert torch.allclose(folded(x), expected)
    assert "without BatchNorm folding" in caplog.text

import pytest
import torch

from container import ConfigError
from vision.models import build_model, freeze_backbone, head_name


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_0", "convnext_tiny", "densenet121"])
def test_head_is_resized(arch):
    model = build_model(arch, 5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_vit_head_is_resized():
    model = build_model("vit_b_16", 7).eval()
    assert model.get_submodule(head_name(model)).out_features == 7


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ConfigError, match="resnet50.*|.*resnet50"):
        build_model("resnet5O", 3)


def test_pretrained_weights_load_before_the_head_changes(tmp_path):
    source = build_model("resnet18", 1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet18", 3, path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.out_features == 3


def test_missing_or_wrong_pretrained_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("resnet18", 3, tmp_path / "nope.pth")
    path = tmp_path / "other.pth"
    torch.save(build_model("mobilenet_v3_small", 10).state_dict(), path)
    with pytest.raises(ConfigError, match="do not fit this architecture"):
        build_model("resnet18", 3, path)


def test_freeze_backbone_trains_only_the_head():
    model = build_model("resnet18", 4)
    freeze_backbone(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]


def test_gpu_present_but_unusable_is_explained(monkeypatch, tmp_path):
    from vision import devices

    version_file = tmp_path / "version"
    version_file.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.182.03  Fri Feb 24 16:35:10 UTC 2023\n")
    monkeypatch.setattr(devices, "DRIVER_VERSION_FILE", version_file)
    monkeypatch.setattr(devices, "nvidia_devices_present", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = devices.gpu_unusable_reason()
    assert "found driver 470.182.03" in reason and ">= 525" in reason and "InferenceAmiVersion" in reason
    assert devices.select_device("auto").type == "cpu"


def test_no_gpu_no_warning(monkeypatch):
    from vision import devices

    monkeypatch.setattr(devices, "nvidia_devices_present", lambda: False)
    assert devices.gpu_unusable_reason() is None

"""timm models: arch=timm/<name> with random init or a local .safetensors/.pth file
(never a download), their heads, their pretrained config in the ModelSpec, and serving's
eval transform equal to timm's own."""

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_sample_image
from timm.data import create_transform, resolve_model_data_config

from container import ConfigError
from vision import presets
from vision.artifact import ModelSpec
from vision.engines.preprocess import EvalPreprocess
from vision.models import build_model, find_pretrained_file, freeze_backbone, head_name, head_names, replace_head


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to download weights: {args}")

    import timm.models._builder as builder

    for name in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file", "load_custom_from_hf"):
        monkeypatch.setattr(builder, name, refuse, raising=False)


@pytest.mark.parametrize(("arch", "head"), [("test_vit", "head"), ("test_convnext", "head.fc"), ("test_efficientnet", "classifier")])
def test_random_init_timm_models_with_resized_heads(arch, head):
    model = build_model(f"timm/{arch}", 5).eval()
    size = resolve_model_data_config(model)["input_size"][-1]
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert head_name(model) == head
    replace_head(model, 3)
    assert model.get_classifier().out_features == 3 and model.num_classes == 3
    freeze_backbone(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{head}.weight", f"{head}.bias"}


def test_distilled_models_keep_both_heads_trainable():
    model = build_model("timm/deit_tiny_distilled_patch16_224", 4)
    assert head_names(model) == ["head", "head_dist"]
    freeze_backbone(model)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        "head.weight",
        "head.bias",
        "head_dist.weight",
        "head_dist.bias",
    }


def pretrained_dir(tmp_path, arch="test_convnext", suffix=".safetensors", config=None):
    source = timm.create_model(arch, pretrained=False)  # timm's own head: 1000 classes
    directory = tmp_path / "pretrained"
    directory.mkdir()
    path = directory / f"model{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save(source.state_dict(), path)
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config))
    return source, directory


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_file_loads_before_the_head_is_resized(tmp_path, suffix):
    source, directory = pretrained_dir(tmp_path, suffix=suffix)
    path = find_pretrained_file(directory)
    assert path.name == f"model{suffix}"
    model = build_model("timm/test_convnext", 4, path)
    own, theirs = model.state_dict(), source.state_dict()
    backbone = [k for k in own if not k.startswith("head.fc.")]
    assert backbone and all(torch.equal(own[k], theirs[k]) for k in backbone)
    assert model.get_classifier().out_features == 4


def test_hub_snapshot_config_sets_the_preprocessing(tmp_path):
    snapshot = {
        "architecture": "test_convnext",
        "num_classes": 1000,
        "pretrained_cfg": {
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "crop_pct": 0.95,
            "interpolation": "bilinear",
            "hf_hub_id": "x/y",
        },
    }
    _, directory = pretrained_dir(tmp_path, config=snapshot)
    model = build_model("timm/test_convnext", 4, find_pretrained_file(directory))
    prep = presets.preprocessing_for("timm/test_convnext", model)
    assert (prep.mean, prep.std, prep.crop_pct, prep.interpolation) == ((0.5,) * 3, (0.25,) * 3, 0.95, "bilinear")
    (directory / "config.json").write_text(json.dumps({**snapshot, "architecture": "test_vit"}))
    with pytest.raises(ConfigError, match="is for timm model 'test_vit', but arch=timm/test_convnext"):
        build_model("timm/test_convnext", 4, find_pretrained_file(directory))


def test_weights_of_another_model_are_refused(tmp_path):
    _, directory = pretrained_dir(tmp_path, arch="test_vit")
    with pytest.raises(ConfigError, match=r"pretrained weights .*model.safetensors do not fit timm/test_convnext"):
        build_model("timm/test_convnext", 4, find_pretrained_file(directory))
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("timm/test_convnext", 4, tmp_path / "missing.safetensors")


def test_pretrained_channel_with_several_weights_files(tmp_path):
    (tmp_path / "a.pth").write_bytes(b"")
    (tmp_path / "b.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"holds 2 .pth files"):
        find_pretrained_file(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert find_pretrained_file(tmp_path).name == "model.safetensors"
    assert find_pretrained_file(tmp_path / "absent") is None


def test_torchvision_weights_from_safetensors(tmp_path):
    source = build_model("resnet18", 1000)
    path = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(path))
    model = build_model("resnet18", 3, path)
    assert torch.equal(model.conv1.weight, source.conv1.weight) and model.fc.out_features == 3


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("timm/convnxt_tiny", r"timm .* has no model 'convnxt_tiny'; did you mean convnext_tiny"),
        ("timm/convnext_tiny.fb_in2k", r"'convnext_tiny' has no pretrained tag 'fb_in2k'; did you mean convnext_tiny.fb_in22k"),
        ("timm/zzzzzz", r"has no model 'zzzzzz'; no timm model is close to it"),
        ("timm/hf-hub:timm/convnext_tiny.fb_in1k", "pretrained weights come from the 'pretrained' channel"),
        ("resnet5O", r"not a torchvision classification model; did you mean resnet50"),
        ("convnext_atto", r"timm has it: arch=timm/convnext_atto"),
    ],
)
def test_invalid_names_suggest_close_matches(arch, message):
    with pytest.raises(ConfigError, match=message):
        build_model(arch, 3)


def photo() -> Image.Image:
    return Image.fromarray(load_sample_image("china.jpg")).convert("RGB")


def test_spec_carries_timm_preprocessing_and_serving_transforms_as_timm_does(tmp_path):
    model = build_model("timm/test_vit", 3)
    config = resolve_model_data_config(model)
    prep = presets.preprocessing_for("timm/test_vit", model)
    assert prep.preprocess == "timm" and prep.image_size == config["input_size"][-1]
    assert (prep.mean, prep.std, prep.interpolation, prep.crop_pct) == (
        config["mean"],
        config["std"],
        config["interpolation"],
        config["crop_pct"],
    )
    ModelSpec(arch="timm/test_vit", classes=("a", "b", "c"), **prep.spec_fields()).save(tmp_path)
    spec = ModelSpec.load(tmp_path)
    assert (spec.preprocess, spec.crop_pct, spec.crop_mode) == ("timm", config["crop_pct"], config["crop_mode"])
    served = presets.eval_transform_for(spec)(photo())
    expected = create_transform(**config, is_training=False)(photo())
    assert served.shape == (3, prep.image_size, prep.image_size) and torch.equal(served, expected)
    assert torch.equal(presets.eval_transform_for(prep)(photo()), expected)  # the trainer's evaluation, before any spec exists


@pytest.mark.parametrize(("arch", "image_size"), [("test_vit", None), ("test_convnext", 64)])
def test_the_torch_free_preprocessing_is_timms_center_crop(arch, image_size):
    """ONNX Runtime serves a timm model in center crop mode through vision.engines.preprocess
    (Pillow and numpy): the same pixels as timm's eval transform, to float rounding."""
    model = build_model(f"timm/{arch}", 3)
    prep = presets.preprocessing_for(f"timm/{arch}", model, image_size=image_size)
    spec = ModelSpec(arch=f"timm/{arch}", classes=("a", "b", "c"), **prep.spec_fields())
    assert spec.crop_mode == "center"
    for picture in (photo(), photo().resize((301, 517))):
        expected = presets.eval_transform_for(spec)(picture).numpy()
        got = EvalPreprocess.from_spec(spec)(picture)
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-5


def test_image_size_overrides_timm_input_size():
    model = build_model("timm/test_vit", 3)
    prep = presets.preprocessing_for("timm/test_vit", model, image_size=96)
    assert prep.image_size == 96 and prep.resize_size == int(96 / prep.crop_pct)


def test_specs_written_before_these_fields_still_load(tmp_path):
    old = {
        "arch": "resnet18",
        "classes": ["cat", "dog"],
        "image_size": 224,
        "resize_size": 256,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
        "weights_file": "model.pt",
        "format_version": 1,
        "versions": {"torch": "2.10.0"},
        "num_classes": 2,
    }
    (tmp_path / "model_spec.json").write_text(json.dumps(old))
    spec = ModelSpec.load(tmp_path)
    assert (spec.preprocess, spec.crop_pct, spec.multi_label, spec.thresholds, spec.dataset) == ("torchvision", None, False, (), {})
    expected = presets.eval_transform(224, 256, spec.mean, spec.std, "bilinear")(photo())
    assert torch.equal(presets.eval_transform_for(spec)(photo()), expected)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("preprocess", "keras", "preprocess='keras' is not supported"),
        ("thresholds", [0.5], "1 thresholds for 2 classes"),
        ("multi_label", "yes", "malformed"),
    ],
)
def test_malformed_new_fields_are_named(tmp_path, field, value, message):
    ModelSpec("resnet18", ("a", "b"), 224, 256, (0.5,) * 3, (0.5,) * 3).save(tmp_path)
    data = json.loads((tmp_path / "model_spec.json").read_text())
    data[field] = value
    (tmp_path / "model_spec.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        ModelSpec.load(tmp_path)

"""Penultimate features from a forward pre-hook on the head (vision.features), for
torchvision classifiers of each head kind and a timm-shaped model."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from container import ConfigError
from vision import presets
from vision.artifact import ModelSpec
from vision.features import Embedder, PenultimateTap, compute_baseline, load_module, logits_and_features
from vision.models import build_model


def batch(size=32, n=2, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_resnet_features_are_the_pooled_backbone_output():
    model = build_model("resnet18", 5).eval()
    x = batch()
    logits, features = logits_and_features(model, x)
    body = nn.Sequential(*list(model.children())[:-1])  # everything before fc
    expected = torch.flatten(body(x), 1)
    assert features.shape == (2, 512)
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(logits, model.fc(features))


@torch.inference_mode()
def test_a_multi_layer_classifier_gives_the_last_hidden_layer():
    model = build_model("mobilenet_v3_small", 4).eval()
    x = batch()
    _, features = logits_and_features(model, x)
    hidden = model.classifier[:3](torch.flatten(model.avgpool(model.features(x)), 1))  # Linear, Hardswish, Dropout
    assert features.shape == (2, 1024)
    torch.testing.assert_close(features, hidden)


@torch.inference_mode()
def test_a_convolutional_head_is_global_average_pooled():
    model = build_model("squeezenet1_0", 3).eval()
    x = batch(size=64)
    _, features = logits_and_features(model, x)
    assert features.shape == (2, 512)
    torch.testing.assert_close(features, model.features(x).mean(dim=(2, 3)))


class TimmShapedHead(nn.Module):
    """timm's ClassifierHead: global_pool -> drop -> fc -> flatten."""

    def __init__(self, channels, classes):
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(channels, classes)
        self.flatten = nn.Flatten(1)

    def forward(self, x):
        return self.flatten(self.fc(self.drop(self.global_pool(x).flatten(1))))


class TimmShapedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = TimmShapedHead(16, 3)

    def forward_features(self, x):
        return self.blocks(self.stem(x))

    def forward_head(self, x, pre_logits=False):
        x = self.head.drop(self.head.global_pool(x).flatten(1))
        return x if pre_logits else self.head.fc(x)

    def forward(self, x):
        return self.head(self.forward_features(x))


@torch.inference_mode()
def test_a_timm_shaped_model_gives_its_pre_logits():
    model = TimmShapedModel().eval()
    x = batch()
    tap = PenultimateTap(model)
    assert tap.head_name == "head.fc"
    logits, features = tap.forward(x)
    torch.testing.assert_close(features, model.forward_head(model.forward_features(x), pre_logits=True))
    torch.testing.assert_close(logits, model(x))
    tap.close()
    assert not model.head.fc._forward_pre_hooks  # closing removes the hook


@torch.inference_mode()
def test_concurrent_forwards_keep_their_own_features():
    model = build_model("resnet18", 3).eval()
    tap = PenultimateTap(model)
    inputs = [batch(seed=s) for s in range(4)]
    expected = [tap.forward(x)[1] for x in inputs]
    results = {}
    barrier = threading.Barrier(4)

    def work(i):
        barrier.wait()
        with torch.inference_mode():  # thread-local, like the server's inference pool sets it per thread
            for _ in range(5):
                results[i] = tap.forward(inputs[i])[1]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        torch.testing.assert_close(results[i], expected[i])


def save_model(model_dir, arch="resnet18", classes=("a", "b", "c"), size=32):
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model(arch, len(classes))
    torch.save(model.state_dict(), model_dir / "model.pt")
    ModelSpec(arch, tuple(classes), size, presets.eval_resize_size(size), presets.IMAGENET_MEAN, presets.IMAGENET_STD).save(model_dir)
    return model


def test_load_module_refuses_compiled_programs(tmp_path):
    model = save_model(tmp_path)
    torch.jit.save(torch.jit.script(model.eval()), tmp_path / "model.pt")
    with pytest.raises(ConfigError, match="TorchScript"):
        load_module(tmp_path, torch.device("cpu"))


def test_embedder_and_baseline_from_images(tmp_path):
    save_model(tmp_path)
    embedder = Embedder.load(tmp_path, torch.device("cpu"), batch_size=8)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(30)]
    probabilities, features = embedder.embed(images)
    assert probabilities.shape == (30, 3) and features.shape == (30, 512)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    samples = [(image, "PNG", i % 3 if i < 20 else None) for i, image in enumerate(images)]
    baseline = compute_baseline(embedder, iter(samples), {"source": "unit"}, components=4, reference_size=10)
    assert baseline.size == 30 and len(baseline.reference) == 10
    assert baseline.pca.k == 1  # 15 fit images: one component per 10 of them, whatever was asked
    expected = float((probabilities[:20].argmax(1) == np.arange(20) % 3).mean())
    assert baseline.info["accuracy"] == {"images": 20, "top1": pytest.approx(expected)}
    assert baseline.image_column("width")[0] == 48 and baseline.format_counts == {"PNG": 30}

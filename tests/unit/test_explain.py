"""Grad-CAM (vision.explain): it points at the object, finds the last map on torchvision's
CNNs as built and as served (BatchNorm folded), refuses what it cannot explain, and
leaves the served model and its plain forward exactly as they were."""

import base64
import io
import random
import threading

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from serve.torch_model import fold_for_inference
from tests.support.quadrants import CLASSES, quadrant_image
from vision import explain
from vision.models import build_model
from vision.presets import IMAGENET_MEAN, IMAGENET_STD, eval_transform

SIZE = 64


def quadrant_set(rng: random.Random, count: int):
    transform = eval_transform(SIZE, SIZE)
    labels = [i % len(CLASSES) for i in range(count)]
    quadrants = [rng.randrange(4) for _ in range(count)]
    images = torch.stack([transform(quadrant_image(rng, label, q, SIZE)) for label, q in zip(labels, quadrants, strict=True)])
    return images, torch.tensor(labels), torch.tensor(quadrants)


def small_cnn() -> nn.Module:
    """Three stride-2 conv blocks (an 8x8 map at 64 px, each cell seeing 15 px), global
    pooling and a linear head: the shape of a torchvision CNN, small enough to train in seconds."""
    layers: list[nn.Module] = []
    for width_in, width_out in ((3, 16), (16, 32), (32, 64)):
        layers += [nn.Conv2d(width_in, width_out, 3, stride=2, padding=1), nn.BatchNorm2d(width_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, len(CLASSES)))


@pytest.fixture(scope="module")
def quadrant_model():
    """small_cnn trained to tell the three shapes apart wherever they are; the held-out
    images, labels and quadrants."""
    rng = random.Random(0)
    images, labels, _ = quadrant_set(rng, 240)
    torch.manual_seed(0)
    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(6):
        order = torch.randperm(len(images))
        for start in range(0, len(order), 32):
            rows = order[start : start + 32]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[rows]), labels[rows]).backward()
            optimizer.step()
    return model.eval(), quadrant_set(rng, 48)


def mass_in_quadrant(saliency: torch.Tensor, quadrant: int) -> float:
    heat = explain.upsample(saliency, (SIZE, SIZE))
    half = SIZE // 2
    row, column = (quadrant // 2) * half, (quadrant % 2) * half
    return float(heat[row : row + half, column : column + half].sum() / heat.sum())


@pytest.mark.parametrize("served", [False, True], ids=["eager", "folded"])
def test_most_of_the_heat_is_on_the_object(quadrant_model, served):
    model, (images, labels, quadrants) = quadrant_model
    module = fold_for_inference(model, "small_cnn") if served else model
    cam = explain.GradCAM(module, images[:1])
    assert cam.grid == (8, 8)
    result = cam(images)
    assert float((result.class_index == labels).float().mean()) >= 0.9, "the model should have learned the shapes"
    assert result.saliency.shape == (len(images), 8, 8)
    assert float(result.saliency.min()) >= 0 and float(result.saliency.max()) == 1
    masses = torch.tensor([mass_in_quadrant(result.saliency[i], int(quadrants[i])) for i in range(len(images))])
    # A map blind to the object would put about a quarter of its mass in each quadrant.
    # Nearly every image has most of it on the object; a small shape at a quadrant's
    # border may spill over, as a cell of the 8x8 map covers 8x8 pixels.
    assert float(masses.mean()) > 0.6, masses
    assert float((masses > 0.5).float().mean()) >= 0.9, sorted(masses.tolist())[:8]


def test_explaining_another_class_changes_the_map(quadrant_model):
    model, (images, _, _) = quadrant_model
    cam = explain.GradCAM(model, images[:1])
    top = cam(images[:4])
    other = cam(images[:4], class_index=(top.class_index + 1) % len(CLASSES))
    assert torch.equal(other.logits, top.logits)
    assert not torch.allclose(other.saliency, top.saliency)


def hooks(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules())


def test_the_served_model_is_left_as_it_was(quadrant_model):
    model, (images, _, _) = quadrant_model
    served = fold_for_inference(model, "small_cnn")
    with torch.inference_mode():
        plain = served(images)
    code, state = served.code, {k: v.clone() for k, v in served.state_dict().items()}

    cam = explain.GradCAM(served, images[:1])
    result = cam(images)

    assert torch.equal(result.logits, plain), "an explained forward answers exactly as the plain one"
    assert hooks(served) == 0 and served.code == code and not served.training
    assert all(p.grad is None for p in served.parameters())
    assert all(torch.equal(v, state[k]) for k, v in served.state_dict().items())
    # The split graphs hold the model's own parameter tensors, not copies.
    shared = {p.data_ptr() for p in served.parameters()}
    assert {p.data_ptr() for p in (*cam.backbone.parameters(), *cam.head.parameters())} <= shared
    with torch.inference_mode():
        assert torch.equal(served(images), plain)


def test_plain_forwards_on_other_threads_are_unaffected(quadrant_model):
    model, (images, _, _) = quadrant_model
    served = fold_for_inference(model, "small_cnn")
    with torch.inference_mode():
        reference = served(images[:8])
    cam = explain.GradCAM(served, images[:1])
    expected = cam(images[8:16]).saliency
    failures: list[str] = []

    def explain_repeatedly():
        for _ in range(20):
            if not torch.equal(cam(images[8:16]).saliency, expected):
                failures.append("explanation changed")

    thread = threading.Thread(target=explain_repeatedly)
    thread.start()
    try:
        for _ in range(20):
            with torch.inference_mode():
                if not torch.equal(served(images[:8]), reference):
                    failures.append("plain forward changed")
    finally:
        thread.join()
    assert not failures


def test_inference_mode_is_refused(quadrant_model):
    model, (images, _, _) = quadrant_model
    cam = explain.GradCAM(model, images[:1])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        cam(images[:1])


def test_reduced_precision_keeps_the_plain_answer(quadrant_model):
    model, (images, _, _) = quadrant_model
    served = fold_for_inference(model, "small_cnn")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = served(images).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = explain.GradCAM(served, images[:1])(images)
    assert torch.equal(result.logits, plain)
    assert result.saliency.dtype == torch.float32 and float(result.saliency.max()) == 1


# At 64 px every one of these still has a 2x2 map after its last block. Each family
# puts it somewhere else: a module, a functional relu (DenseNet), a residual add
# behind channels-last blocks (ConvNeXt, whose head norm is channels-last too), the
# class-score conv (SqueezeNet).
ARCHITECTURES = {
    "resnet18": (2, 2),
    "mobilenet_v3_small": (2, 2),
    "efficientnet_b0": (2, 2),
    "densenet121": (2, 2),
    "convnext_tiny": (2, 2),
    "regnet_y_400mf": (2, 2),
    "squeezenet1_1": (3, 3),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_torchvision_cnns_as_built_and_as_served(arch):
    torch.manual_seed(0)
    model = build_model(arch, 5).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    for module, batch in ((model, images), (fold_for_inference(model, arch), images.contiguous(memory_format=torch.channels_last))):
        cam = explain.GradCAM(module, batch[:1])
        assert cam.grid == ARCHITECTURES[arch]
        result = cam(batch)
        with torch.inference_mode():
            assert torch.equal(result.logits, module(batch))
        assert result.saliency.shape == (2, *ARCHITECTURES[arch])
        assert hooks(module) == 0


def test_the_resnet_map_is_the_last_block_output():
    model = build_model("resnet18", 5).eval()
    images = torch.randn(1, 3, SIZE, SIZE)
    assert explain.GradCAM(model, images).layer == "layer4.1.relu"  # the block's second relu, after the residual add
    assert explain.GradCAM(fold_for_inference(model, "resnet18"), images).layer == "layer4.1.relu"


def test_a_vision_transformer_is_refused():
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    ).eval()
    with pytest.raises(explain.ExplainUnsupported, match=r"the last map \(conv_proj, 4x4\) is followed by"):
        explain.GradCAM(model, torch.randn(1, 3, 32, 32))


def test_an_input_too_small_for_the_architecture_is_refused():
    # At 32 px a ResNet's last block works on a 1x1 map: the last map with extent is
    # layer3's, and layer4's convolutions follow it.
    with pytest.raises(explain.ExplainUnsupported, match=r"followed by layer4\.0\.conv1"):
        explain.GradCAM(build_model("resnet18", 5).eval(), torch.randn(1, 3, 32, 32))


def test_torchscript_is_refused():
    scripted = torch.jit.script(small_cnn().eval())
    with pytest.raises(explain.ExplainUnsupported, match="TorchScript"):
        explain.GradCAM(scripted, torch.randn(1, 3, SIZE, SIZE))


def test_overlay_and_json(quadrant_model):
    model, (images, _, quadrants) = quadrant_model
    result = explain.GradCAM(model, images[:1])(images[:1])
    png = explain.overlay_png(images[0], result.saliency[0], IMAGENET_MEAN, IMAGENET_STD)
    with Image.open(io.BytesIO(png)) as overlay:
        assert overlay.format == "PNG" and overlay.mode == "RGB" and overlay.size == (SIZE, SIZE)
        pixels = torch.tensor(np.asarray(overlay), dtype=torch.float32)
    # 'jet' runs from blue (cold) to red (hot): the object's quadrant is the reddest.
    half = SIZE // 2
    redness = [
        float((pixels[r : r + half, c : c + half, 0] - pixels[r : r + half, c : c + half, 2]).mean()) for r in (0, half) for c in (0, half)
    ]
    assert max(range(4), key=redness.__getitem__) == int(quadrants[0])

    answer = explain.describe(result, 0, CLASSES, png)
    assert set(answer) == {"method", "layer", "class", "grid", "overlay_png"}
    assert answer["method"] == "gradcam" and answer["class"] == CLASSES[int(result.class_index[0])]
    assert len(answer["grid"]) == 8 and all(len(line) == 8 for line in answer["grid"])
    assert all(0 <= v <= 1 for line in answer["grid"] for v in line) and max(max(line) for line in answer["grid"]) == 1
    assert base64.b64decode(answer["overlay_png"]) == png
    assert "overlay_png" not in explain.describe(result, 0, CLASSES)

"""Grad-CAM: where in the image the evidence for the model's answer lies.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a convolutional feature map
by the mean gradient of a class's logit with respect to that channel; the ReLU of the
weighted sum, scaled to [0, 1], is a coarse map of where the evidence for the class is
(7x7 for a ResNet at 224 pixels: one cell per 32x32 patch of the input).

The feature map is the last one with spatial extent that only pooling and the
classifier follow, i.e. the last convolutional block's output. `GradCAM` finds it once
per model, in the model's FX graph (the served model after BatchNorm folding already is
one, serve.model.fold_for_inference; an eager model is traced, sharing its parameters),
by running an example through the graph and taking the last node whose output is an
N x C x H x W map with H and W above 1; everything after that node must be pooling, reshaping
and the classifier, else the model is refused with ExplainUnsupported (ViT, whose last
map is the patch embedding, or an input so small the map shrinks to 1x1 before the
last block). It then splits the graph there into a backbone and a head: two
GraphModules that hold the same parameter tensors as the model, no copies.

Cost: the backbone runs without autograd, exactly as a plain forward does; only the
head (pooling and classifier) records a graph and is differentiated, so an explanation
costs about one plain forward. The logits of that forward are returned too (equal to
the plain forward's): an explained request needs no second forward.

Isolation: the served module is only read, never changed: no hooks, no flags, nothing
written to its graph. torch.autograd.grad differentiates with respect to the map only,
so no parameter's .grad is written. Explanations on several threads at once, and plain
forwards meanwhile, do not interfere.
"""

from __future__ import annotations

import base64
import builtins
import io
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import fx, nn

METHOD = "gradcam"

# What may run after the target map: global pooling, reshaping and the classifier head.
# Anything else (attention, concatenating a class token, more convolutions on a map that
# has shrunk to 1x1) means the map is not the last convolutional block's output.
HEAD_MODULES = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
    nn.MaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Dropout2d,
    nn.Linear,
    nn.LayerNorm,
    nn.BatchNorm1d,
    nn.Identity,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Tanh,
    nn.Sigmoid,
)
HEAD_FUNCTIONS = {
    torch.flatten,
    torch.mean,
    torch.permute,
    torch.reshape,
    torch.squeeze,
    torch.relu,
    torch.tanh,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.avg_pool2d,
    F.max_pool2d,
    F.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.hardswish,
    F.dropout,
    F.layer_norm,
    F.linear,
    builtins.getattr,  # x.shape
    operator.getitem,  # x.shape[0]
}
HEAD_METHODS = {"flatten", "mean", "permute", "reshape", "view", "squeeze", "contiguous", "size", "relu", "relu_", "tanh", "sigmoid"}


class ExplainUnsupported(ValueError):
    """This model (or this input size) has no feature map Grad-CAM can use; the message says why."""


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM for each row of a batch, and the logits of the forward that made it."""

    logits: torch.Tensor  # N x classes, float32, equal to a plain forward's
    class_index: torch.Tensor  # N: the class each map explains (top-1 unless asked otherwise)
    saliency: torch.Tensor  # N x h x w on the CPU, in [0, 1]; each row's largest cell is 1 unless all are 0
    layer: str  # the feature map's node: a module name (layer4.1.relu) or an operation (add_17)


def _shapes(graph_module: fx.GraphModule, example: torch.Tensor) -> dict[fx.Node, tuple[int, ...] | None]:
    """Each node's output shape for `example` (None when not one tensor), read without
    writing anything onto the graph (fx's ShapeProp would store it in node.meta)."""
    shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            shapes[node] = tuple(result.shape) if isinstance(result, torch.Tensor) else None
            return result

    with torch.no_grad():
        Recorder(graph_module).run(example)
    return shapes


def _is_map(shape: tuple[int, ...] | None) -> bool:
    """N x C x H x W with H and W above 1. Both, not their product: a channels-last
    tensor after global pooling (N x 1 x 1 x C, ConvNeXt's head norm) is no map."""
    return shape is not None and len(shape) == 4 and shape[2] > 1 and shape[3] > 1


def _is_head(node: fx.Node, graph_module: fx.GraphModule) -> bool:
    if node.op in ("output", "get_attr"):
        return True
    if node.op == "call_module":
        return isinstance(graph_module.get_submodule(node.target), HEAD_MODULES)
    if node.op == "call_function":
        return node.target in HEAD_FUNCTIONS
    if node.op == "call_method":
        return node.target in HEAD_METHODS
    return False


def _describe(node: fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _split(graph_module: fx.GraphModule, target: fx.Node) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(backbone: input -> target's map, head: map -> logits), sharing graph_module's parameters."""
    nodes = list(graph_module.graph.nodes)
    position = nodes.index(target)
    backbone, head = fx.Graph(), fx.Graph()
    backbone_env: dict[fx.Node, fx.Node] = {}
    for node in nodes[: position + 1]:
        backbone_env[node] = backbone.node_copy(node, lambda n: backbone_env[n])
    backbone.output(backbone_env[target])
    head_env = {target: head.placeholder("feature_map")}
    for node in nodes[position + 1 :]:
        earlier = [n for n in node.all_input_nodes if n not in head_env]
        if earlier:
            raise ExplainUnsupported(f"the classifier head reads {_describe(earlier[0])} from before the feature map {_describe(target)}")
        head_env[node] = head.node_copy(node, lambda n: head_env[n])
    backbone_module = fx.GraphModule(graph_module, backbone)
    backbone_module.graph.eliminate_dead_code()  # e.g. shape reads only the head used
    backbone_module.recompile()
    return backbone_module, fx.GraphModule(graph_module, head)


class GradCAM:
    """Grad-CAM for one model. Construction finds the map and splits the graph (one
    forward of `example`, a 1 x 3 x S x S input of the served size and memory format:
    the map's size, and whether it still has extent, depends on S); each call explains
    a batch."""

    def __init__(self, module: nn.Module, example: torch.Tensor):
        name = type(module).__name__
        if isinstance(module, torch.jit.ScriptModule):
            raise ExplainUnsupported("Grad-CAM needs the model's Python modules; a TorchScript model has none")
        try:
            graph_module = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
        except Exception as err:  # noqa: BLE001 - any tracing failure means the same here
            raise ExplainUnsupported(f"Grad-CAM needs an FX graph of {name}, and FX cannot trace it: {err}") from None
        shapes = _shapes(graph_module, example)
        nodes = list(graph_module.graph.nodes)
        spatial = [i for i, n in enumerate(nodes) if n.op != "placeholder" and _is_map(shapes.get(n))]
        if not spatial:
            raise ExplainUnsupported(f"{name} has no spatial feature map at {tuple(example.shape[-2:])} pixels")
        target = nodes[spatial[-1]]
        for node in nodes[spatial[-1] + 1 :]:
            if not _is_head(node, graph_module):
                raise ExplainUnsupported(
                    f"Grad-CAM needs a convolutional feature map followed only by pooling and the classifier; in {name} at "
                    f"{tuple(example.shape[-2:])} pixels the last map ({_describe(target)}, {shapes[target][2]}x{shapes[target][3]}) "
                    f"is followed by {_describe(node)}"
                )
        self.backbone, self.head = _split(graph_module, target)
        self.layer = _describe(target)
        self.grid = (shapes[target][2], shapes[target][3])

    def __call__(self, batch: torch.Tensor, class_index: torch.Tensor | None = None) -> Explanation:
        """Grad-CAM of `class_index` (default: each row's top class) for every row of
        `batch`. Run it in the precision context the plain forward uses (vision.precision's
        autocast) so the logits and the top class are the plain answer's; not inside
        torch.inference_mode, whose tensors cannot be differentiated."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError("Grad-CAM cannot run under torch.inference_mode (it differentiates the classifier head)")
        with torch.no_grad():
            feature_map = self.backbone(batch)
        feature_map = feature_map.detach().requires_grad_()
        with torch.enable_grad():
            # A copy, not the leaf itself, enters the head: an in-place op there (DenseNet's
            # relu(inplace=True)) may not modify a leaf that requires grad.
            logits = self.head(feature_map.clone()).float()
            if class_index is None:
                class_index = logits.detach().argmax(dim=1)
            score = logits.gather(1, class_index.to(logits.device)[:, None]).sum()  # rows are independent in eval mode
        (gradient,) = torch.autograd.grad(score, feature_map)
        weights = gradient.float().mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * feature_map.detach().float()).sum(dim=1))
        peak = cam.amax(dim=(1, 2), keepdim=True)
        saliency = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
        return Explanation(logits.detach(), class_index.detach(), saliency.cpu(), self.layer)


def upsample(saliency: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An h x w map stretched bilinearly to `size` (height, width), as the overlay shows it."""
    return F.interpolate(saliency[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)


def overlay_png(image: torch.Tensor, saliency: torch.Tensor, mean, std, alpha: float = 0.45, compress_level: int = 1) -> bytes:
    """The model's input (a normalised 3 x H x W tensor: the crop the model saw) with the
    map laid over it in matplotlib's 'jet' colours, as PNG bytes. compress_level 1:
    encoding costs a few milliseconds instead of tens, for a file about 1.3x larger."""
    from matplotlib import colormaps  # the colour map only (no pyplot): loaded on first use

    mean = torch.as_tensor(mean, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(std, dtype=torch.float32)[:, None, None]
    pixels = (image.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    heat = upsample(saliency.cpu(), tuple(image.shape[-2:])).numpy()
    colours = colormaps["jet"](heat)[..., :3]
    blended = (1 - alpha) * pixels + alpha * colours
    buffer = io.BytesIO()
    Image.fromarray(np.rint(blended * 255).astype(np.uint8), "RGB").save(buffer, "PNG", compress_level=compress_level)
    return buffer.getvalue()


def describe(explanation: Explanation, row: int, classes, overlay: bytes | None = None, digits: int = 3) -> dict:
    """One row's explanation as JSON-ready data: the method, the layer, the explained
    class, the grid (h lists of w floats in [0, 1], rounded) and the base64 PNG overlay."""
    grid = explanation.saliency[row]
    answer = {
        "method": METHOD,
        "layer": explanation.layer,
        "class": classes[int(explanation.class_index[row])],
        "grid": [[round(float(v), digits) for v in line] for line in grid],
    }
    if overlay is not None:
        answer["overlay_png"] = base64.b64encode(overlay).decode("ascii")
    return answer

"""One interface for every model we serve: decode -> predict -> encode.

A Handler holds the loaded model and, for each step, the user's hook from
inference.py or our default. The defaults follow AWS's PyTorch inference toolkit for a
model that is not ours, and our image codec and top-k answer for our classifier:

    model_fn     the user's; else our classifier (model_spec.json); else TorchScript
    input_fn     images (any model: our preprocessing) and, for a model that is not
                 ours, JSON / CSV / NPY / NPZ tensors (serve.payloads), on its device
    predict_fn   softmax probabilities (ours), model(x) under inference_mode (others)
    output_fn    our JSON answer (ours), else by Accept: JSON, CSV, NPY or JSON Lines
    transform_fn replaces the three above when the script defines it

The server and the MMS backend both call decode, predict and encode, so they behave
the same. Each step may run on a different thread: per-request state travels in Call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serve import codec, payloads
from serve.errors import NotAcceptable
from serve.hooks import UTF8_TYPES, Context, UserHooks, call
from serve.model import Classifier, load_default_model, module_nbytes
from train.presets import IMAGENET_MEAN, IMAGENET_STD, eval_transform


def default_preprocess() -> Callable:
    """ImageNet-style preprocessing for image payloads sent to a model that is not ours."""
    return eval_transform(224, None, IMAGENET_MEAN, IMAGENET_STD)


@dataclass
class Call:
    """One request as it moves through the steps."""

    content_type: str | None
    accept: str | None
    context: Context
    top_k: int | None = None
    out_type: str = codec.JSON  # what the default output_fn will write
    batch: bool = False  # the client sent a list: answer with a list (our classifier)
    lines: bool = False  # JSON Lines in, JSON Lines out (our classifier)


@dataclass
class Handler:
    model: Any
    hooks: dict[str, Callable] = field(default_factory=dict)
    limits: codec.DecodeLimits = codec.DecodeLimits()
    top_k: int = 5
    device: torch.device = torch.device("cpu")

    @classmethod
    def load(cls, model_dir: Path, hooks: UserHooks | None, context: Context, device: torch.device, **options) -> Handler:
        """model_fn (the user's or the default), then the model's warm-up."""
        functions = hooks.functions if hooks else {}
        if "model_fn" in functions:
            model = call(functions["model_fn"], str(model_dir), context=context)
        else:
            model = load_default_model(model_dir, device)
        handler = cls(model, functions, device=device, **options)
        if isinstance(model, Classifier):
            model.warm_up()
        if "model_warmup_fn" in functions:
            call(functions["model_warmup_fn"], str(model_dir), model, context=context)
        return handler

    @property
    def classifier(self) -> Classifier | None:
        return self.model if isinstance(self.model, Classifier) else None

    @property
    def preprocess(self) -> Callable:
        if self.classifier is not None:
            return self.classifier.preprocess
        if not hasattr(self, "_imagenet"):
            self._imagenet = default_preprocess()
        return self._imagenet

    @property
    def plain(self) -> bool:
        """Our classifier with no user hook at all: the micro-batcher may run it."""
        return self.classifier is not None and not self.hooks

    def nbytes(self) -> int:
        return self.classifier.nbytes() if self.classifier is not None else module_nbytes(self.model)

    # --- the three steps ---------------------------------------------------------

    def decode(self, body: bytes, call_: Call):
        if "output_fn" not in self.hooks and "transform_fn" not in self.hooks:
            # Refuse an Accept we cannot produce before any work is done.
            call_.out_type = codec.check_accept(call_.accept) if self.classifier is not None else payloads.negotiate(call_.accept)
        payload = body.decode("utf-8", errors="replace") if codec.media_type(call_.content_type) in UTF8_TYPES and self.hooks else body
        if "transform_fn" in self.hooks:
            return payload
        if "input_fn" in self.hooks:
            return call(self.hooks["input_fn"], payload, call_.content_type, context=call_.context)
        return self.default_input_fn(body, call_)

    def predict(self, data, call_: Call):
        if "transform_fn" in self.hooks:
            accept = call_.accept if call_.accept and call_.accept.strip() not in ("", "*/*") else codec.JSON
            return call(self.hooks["transform_fn"], self.model, data, call_.content_type, accept, context=call_.context)
        if "predict_fn" in self.hooks:
            return call(self.hooks["predict_fn"], data, self.model, context=call_.context)
        return self.default_predict_fn(data)

    def encode(self, prediction, call_: Call) -> tuple[bytes, str]:
        if "transform_fn" in self.hooks:
            return self._normalise(prediction, call_)
        if "output_fn" in self.hooks:
            accept = call_.accept if call_.accept and call_.accept.strip() not in ("", "*/*") else codec.JSON
            return self._normalise(call(self.hooks["output_fn"], prediction, accept, context=call_.context), call_)
        return self.default_output_fn(prediction, call_)

    # --- our defaults ------------------------------------------------------------

    def default_input_fn(self, body: bytes, call_: Call):
        ctype = codec.media_type(call_.content_type)
        if self.classifier is None and ctype in payloads.DECODES and not _image_json(body, ctype):
            return payloads.decode(body, ctype).to(self.device)
        decoded = codec.decode(body, call_.content_type, self.preprocess, self.limits)
        call_.batch, call_.lines = decoded.batch, decoded.lines
        return decoded.inputs if self.classifier is not None else decoded.inputs.to(self.device)

    def default_predict_fn(self, data):
        if self.classifier is not None:
            return self.classifier.probabilities(data)
        with torch.inference_mode():
            return self.model(data)

    def default_output_fn(self, prediction, call_: Call) -> tuple[bytes, str]:
        classes = self.classifier.classes if self.classifier is not None else None
        if classes and isinstance(prediction, torch.Tensor) and prediction.ndim == 2 and prediction.shape[1] == len(classes):
            codec.check_accept(call_.accept)
            batch = call_.batch or prediction.shape[0] > 1  # a user input_fn may batch too
            k = min(call_.top_k or self.top_k, len(classes))
            decoded = codec.Decoded(prediction, batch, call_.lines)
            return codec.encode(prediction, classes, k, decoded), "application/jsonlines" if call_.lines else codec.JSON
        out_type = payloads.negotiate(call_.accept)
        return payloads.encode(prediction, out_type), out_type

    def _normalise(self, result, call_: Call) -> tuple[bytes, str]:
        """A hook's answer: body or (body, content_type); str, bytes, or data for JSON."""
        body, out_type = result if isinstance(result, tuple) else (result, None)
        if out_type is None:
            accept = call_.accept if call_.accept and call_.accept.strip() not in ("", "*/*") else codec.JSON
            out_type = accept
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, (bytes, bytearray)):
            try:
                kind = payloads.negotiate(out_type)
            except NotAcceptable:
                kind = codec.JSON
            body, out_type = payloads.encode(body, kind), kind
        return bytes(body), out_type or codec.JSON


def _image_json(body: bytes, ctype: str) -> bool:
    """A JSON body that is an image request ({"url": ...}, base64) rather than numbers."""
    if ctype != payloads.JSON:
        return False
    return payloads.numeric_array(payloads.parse_json(body)) is None

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

The server, the MMS backend and batch transform all run these steps through
HostedModel.invoke, so they behave the same. Each step may run on a different thread:
per-request state travels in Call. A request is route -> HostedModel.invoke ->
Handler.decode / predict / encode -> the user's hook or model(x): the steps call hooks
directly, with no dispatch in between.

Our classifier's default input is decoded a chunk of items at a time (`decode` gives
the first chunk, `decode_more` the next while `more` says so): a real-time request is
one chunk (at most SM_VISION_MAX_BATCH_ITEMS items); a batch-transform request may hold
as many records as the payload cap lets in, and its memory stays bounded by the chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from container import ConfigError, ServeConfig, parse_int
from container.attributes import RequestOptions
from serve import arrays, codec, payloads
from serve.deadline import Deadline
from serve.decode_pool import DecodePool
from serve.engines import load_default_model
from serve.errors import BadInput, NotAcceptable
from serve.hooks import UTF8_TYPES, Context, UserHooks, call, takes_context
from serve.machine import share_cores
from serve.model import Classifier

DEFAULT_IMAGE_SIZE = 224  # what image payloads become for a model that is not ours
DEFAULT_RESIZE = 256  # vision.presets.eval_resize_size(224): the short side they are resized to first


def requested_top_k(raw: str | None) -> int | None:
    """A request's own top_k (?top_k= or X-Top-K), through the one strict number parser
    (ASCII digits, at most 40 characters); None when it names none."""
    if raw is None:
        return None
    try:
        return parse_int(raw, "top_k", minimum=1)
    except ConfigError as err:
        raise BadInput(str(err)) from None


@dataclass
class Call:
    """One request as it moves through the steps."""

    content_type: str | None
    accept: str | None
    context: Context
    top_k: int | None = None
    out_type: str = codec.JSON  # what the default output_fn will write
    shape: str = "labels"  # our classifier's answer: labels or prediction (container.serving.RESPONSE_SHAPES)
    batch: bool = False  # the client sent a list: answer with a list (our classifier)
    lines: bool = False  # JSON Lines in, JSON Lines out (our classifier)
    items: codec.Parsed | None = None  # our default input: the request's items, decoded a chunk at a time
    decoded: int = 0  # how many of them
    options: RequestOptions = RequestOptions()  # what the custom attributes ask of our classifier (serve.extras)
    fields: list[dict] | None = None  # extra answer fields per image (serve.extras)
    # The request's one deadline (serve.deadline), from when its body was in; the route
    # makes it, a Call made without one (MMS, tests) gets the default timeout from now.
    deadline: Deadline = field(default_factory=lambda: Deadline(ServeConfig.timeout_s))


@dataclass
class Handler:
    model: Any
    hooks: dict[str, Callable]
    limits: codec.DecodeLimits
    top_k: int  # SM_VISION_TOP_K, unless the request names its own
    shape: str  # SM_VISION_RESPONSE_SHAPE, unless the request's Accept names its own
    device: str
    records: bool  # batch transform with our classifier alone: no cap on a request's items, decoded a chunk at a time
    pool: DecodePool | None = None  # where multi-scan JPEGs and TIFFs are decoded (killed at the deadline)
    context_hooks: frozenset[str] = field(init=False)

    def __post_init__(self):
        # Decided once here, so a request calls each hook directly (no dispatch frame).
        self.context_hooks = frozenset(name for name, func in self.hooks.items() if takes_context(name, func))

    @classmethod
    def load(
        cls,
        model_dir: Path,
        hooks: UserHooks | None,
        context: Context,
        config: ServeConfig,
        scratch: Path | None = None,
        pool: DecodePool | None = None,
    ) -> Handler:
        """model_fn (the user's or the default), then the model's warm-up. `config` is
        resolved (a concrete device); `scratch` is the model's own scratch directory;
        `pool` is the server process's decode pool."""
        functions = hooks.functions if hooks else {}
        if "model_fn" in functions:
            share_cores(config.device, config.threads)  # the user's model is a torch model
            model = call(functions["model_fn"], str(model_dir), context=context)
            from serve.user_model import accelerate  # torch: a user's model_fn needs it anyway

            accelerate(model, config.device, config.engine, config.threads, scratch)
        else:
            model = load_default_model(model_dir, config, scratch, hooks=bool(functions))
        ours = isinstance(model, Classifier)
        # Draft decoding keeps at least twice what the preprocessing's resize needs.
        resize = model.spec.resize_size if ours else DEFAULT_RESIZE
        limits = codec.DecodeLimits.from_config(config, draft_min_side=2 * resize)
        handler = cls(
            model,
            functions,
            limits,
            config.top_k,
            config.response_shape,
            config.device,
            records=config.batch and ours and not functions,
            pool=pool,
        )
        if ours:
            model.warm_up()
        if "model_warmup_fn" in functions:
            call(functions["model_warmup_fn"], str(model_dir), model, context=context)
        return handler

    @property
    def classifier(self) -> Classifier | None:
        return self.model if isinstance(self.model, Classifier) else None

    def engine(self) -> tuple[str, str, str] | None:
        """(engine, precision, CPU class) of what runs the forward, for /metrics: our
        classifier's, or a user's module whose forward serve.user_model took over."""
        if self.classifier is not None:
            return self.classifier.engine, self.classifier.precision, self.classifier.cpu_class
        state = getattr(getattr(self.model, "forward", None), "served_by", None)
        return state() if callable(state) else None

    @property
    def preprocess(self) -> Callable:
        if self.classifier is not None:
            return self.classifier.preprocess
        if not hasattr(self, "_imagenet"):
            from serve.torch_model import imagenet_preprocess

            self._imagenet = imagenet_preprocess(DEFAULT_IMAGE_SIZE)
        return self._imagenet

    @property
    def plain(self) -> bool:
        """Our classifier with no user hook at all: the micro-batcher may run it."""
        return self.classifier is not None and not self.hooks

    def nbytes(self) -> int:
        if self.classifier is not None:
            return self.classifier.nbytes()
        from serve.torch_model import module_nbytes

        return module_nbytes(self.model)

    def _context(self, name: str, request: Call) -> tuple:
        return (request.context,) if name in self.context_hooks else ()

    # --- the three steps ---------------------------------------------------------

    def decode(self, body: bytes, request: Call):
        if "output_fn" not in self.hooks and "transform_fn" not in self.hooks:
            # Refuse an Accept we cannot produce before any work is done.
            if self.classifier is not None:
                request.out_type = codec.check_accept(request.accept, (codec.NPY,) if request.options.output == "embedding" else ())
                request.shape = codec.response_shape(request.accept, self.shape)
            else:
                request.out_type = payloads.negotiate(request.accept)
        if not self.hooks.keys() & {"input_fn", "transform_fn"}:
            return self.default_input_fn(body, request)
        # As AWS's toolkit: the hooks get a str for the UTF-8 types, bytes otherwise.
        payload = body.decode("utf-8", errors="replace") if codec.media_type(request.content_type) in UTF8_TYPES else body
        if "transform_fn" in self.hooks:
            return payload
        return self.hooks["input_fn"](payload, request.content_type, *self._context("input_fn", request))

    def predict(self, data, request: Call):
        if "transform_fn" in self.hooks:
            args = (self.model, data, request.content_type, hook_accept(request.accept))
            return self.hooks["transform_fn"](*args, *self._context("transform_fn", request))
        if "predict_fn" in self.hooks:
            return self.hooks["predict_fn"](data, self.model, *self._context("predict_fn", request))
        if self.classifier is not None:
            return self.classifier.probabilities(data)
        import torch  # a model that is not ours is a torch model (the torch-free image refuses one at load)

        with torch.inference_mode():  # AWS's default predict_fn: model(data), no autograd
            return self.model(data)

    def encode(self, prediction, request: Call) -> tuple[bytes, str]:
        if "transform_fn" in self.hooks:
            return self._normalise(prediction, request)
        if "output_fn" in self.hooks:
            result = self.hooks["output_fn"](prediction, hook_accept(request.accept), *self._context("output_fn", request))
            return self._normalise(result, request)
        return self.default_output_fn(prediction, request)

    def more(self, request: Call) -> bool:
        """Whether items of the request are still to be decoded (batch transform)."""
        return request.items is not None and request.decoded < len(request.items)

    def decode_more(self, request: Call):
        """The next chunk of the request's items as model input."""
        start = request.decoded
        request.decoded = min(start + self.limits.max_batch, len(request.items))
        inputs = codec.to_inputs(request.items, self.preprocess, self.limits, start, request.decoded, request.deadline, self.pool)
        if self.plain:
            return inputs
        from serve.torch_model import as_tensor  # hooks and models that are not ours get torch tensors, as ever

        return as_tensor(inputs, None if self.classifier is not None else self.device)

    @staticmethod
    def join(outputs: list):
        """The predictions of a request's chunks as one."""
        if len(outputs) == 1:
            return outputs[0]
        if isinstance(outputs[0], np.ndarray):
            return np.concatenate(outputs)
        from serve.torch_model import concatenate

        return concatenate(outputs)

    # --- our defaults ------------------------------------------------------------

    def default_input_fn(self, body: bytes, request: Call):
        ctype = codec.media_type(request.content_type)
        value = arrays.load_json(body, self.limits.arrays) if ctype == payloads.JSON else None  # parsed once, here
        if self.classifier is None and ctype in payloads.DECODES:
            if ctype != payloads.JSON:
                return payloads.decode(body, ctype, self.limits.arrays).to(self.device)
            numbers = arrays.json_tensor(value, self.limits.arrays)
            if numbers is not None:  # else an image request ({"url": ...}, base64)
                return payloads.to_tensor(numbers).to(self.device)
        request.items = codec.parse(body, request.content_type, self.limits, item_cap=not self.records, value=value)
        request.batch, request.lines = request.items.batch, request.items.lines
        return self.decode_more(request)

    def default_output_fn(self, prediction, request: Call) -> tuple[bytes, str]:
        classes = self.classifier.classes if self.classifier is not None else None
        if classes and getattr(prediction, "ndim", 0) == 2 and prediction.shape[1] == len(classes):  # numpy, or a hook's tensor
            codec.check_accept(request.accept)
            batch = request.batch or prediction.shape[0] > 1  # a user input_fn may batch too
            k = min(request.top_k or self.top_k, len(classes))
            lines = request.lines or codec.wants_json_lines(request.accept)
            decoded = codec.Decoded(prediction, batch, lines)
            thresholds = self.classifier.thresholds
            body = codec.encode(prediction, classes, k, decoded, request.shape, thresholds, request.options.abstain_below, request.fields)
            return body, "application/jsonlines" if lines else codec.JSON
        out_type = payloads.negotiate(request.accept)
        return payloads.encode(prediction, out_type), out_type

    def _normalise(self, result, request: Call) -> tuple[bytes, str]:
        """A hook's answer: body or (body, content_type); str, bytes, or data for JSON."""
        body, out_type = result if isinstance(result, tuple) else (result, None)
        out_type = out_type or hook_accept(request.accept)
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, (bytes, bytearray)):
            try:
                kind = payloads.negotiate(out_type)
            except NotAcceptable:
                kind = codec.JSON
            body, out_type = payloads.encode(body, kind), kind
        return bytes(body), out_type


def hook_accept(accept: str | None) -> str:
    """The Accept a user hook sees: missing or */* is application/json (AWS's default)."""
    return accept if accept and accept.strip() not in ("", "*/*") else codec.JSON

"""The user's inference script, called the way AWS's inference toolkit calls it.

The script is MODEL_DIR/code/$SAGEMAKER_PROGRAM (falling back to code/inference.py);
code/requirements.txt is pip-installed first. Any of model_fn(model_dir),
input_fn(body, content_type), predict_fn(data, model), output_fn(prediction, accept)
or transform_fn(model, body, content_type, accept) overrides the default, and each
may take one more argument, `context`. As in AWS's toolkit the body is a str for
JSON/CSV and bytes otherwise, and output_fn may return body or (body, content_type).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from container import ConfigError
from serve import codec

log = logging.getLogger(__name__)

DEFAULT_PROGRAM = "inference.py"
HOOKS = ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn", "model_warmup_fn")
UTF8_TYPES = {"application/json", "text/csv", "application/jsonlines", "text/plain"}


def find_script(model_dir: Path, program: str | None) -> Path | None:
    code = model_dir / "code"
    names = [program, DEFAULT_PROGRAM] if program else [DEFAULT_PROGRAM]
    for name in names:
        path = code / name if name.endswith(".py") else code / f"{name}.py"
        if path.is_file():
            return path
    if program and code.is_dir():
        log.warning("SAGEMAKER_PROGRAM=%s not found in %s and no %s either; using the defaults", program, code, DEFAULT_PROGRAM)
    return None


def install_requirements(code_dir: Path) -> None:
    requirements = code_dir / "requirements.txt"
    if not requirements.is_file():
        return
    log.info("installing %s", requirements)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-input", "-r", str(requirements)],
        capture_output=True,
        text=True,
        cwd=code_dir,  # relative paths in the file mean code/
    )
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ConfigError(f"pip install -r {requirements} failed: " + " | ".join(tail))


def load_script(path: Path, module_name: str) -> ModuleType:
    code_dir = str(path.parent)
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)  # helper modules beside inference.py import as usual
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Context:
    """The subset of MMS's Context that inference scripts use."""

    model_name: str
    model_dir: str
    gpu_id: int | None
    request_headers: dict[str, str] = field(default_factory=dict)

    @property
    def system_properties(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "gpu_id": self.gpu_id, "model_name": self.model_name}

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_headers.get(key.lower())

    def get_all_request_header(self, idx: int = 0) -> dict[str, str]:
        return dict(self.request_headers)


def call(func: Callable, *args, context: Context | None = None):
    """func(*args), or func(*args, context) when it takes one more parameter (AWS's rule)."""
    count = len(inspect.signature(func).parameters)
    if count == len(args):
        return func(*args)
    if count == len(args) + 1:
        return func(*args, context)
    raise TypeError(f"{func.__name__} takes {count} arguments; expected {len(args)} (or {len(args) + 1} with context)")


@dataclass
class UserHooks:
    script: Path
    functions: dict[str, Callable]

    @classmethod
    def load(cls, script: Path, module_name: str) -> UserHooks:
        install_requirements(script.parent)
        module = load_script(script, module_name)
        functions = {name: getattr(module, name) for name in HOOKS if callable(getattr(module, name, None))}
        if "transform_fn" in functions and {"input_fn", "predict_fn", "output_fn"} & functions.keys():
            raise ConfigError(f"{script}: transform_fn cannot be combined with input_fn/predict_fn/output_fn")
        log.info("user script %s overrides %s", script, ", ".join(sorted(functions)) or "nothing")
        return cls(script, functions)


def predict(data, model):
    """Default predict_fn: probabilities for our Classifier, model(data) (AWS's default) otherwise."""
    if hasattr(model, "probabilities"):
        return model.probabilities(data)
    with torch.inference_mode():
        device = next(model.parameters()).device if hasattr(model, "parameters") else None
        return model(data.to(device) if device is not None and isinstance(data, torch.Tensor) else data)


def to_json(prediction: Any) -> bytes:
    """AWS's default output_fn: tensors/arrays as nested lists."""
    if isinstance(prediction, torch.Tensor):
        prediction = prediction.detach().cpu().numpy()
    if isinstance(prediction, np.ndarray):
        prediction = prediction.tolist()
    return json.dumps(prediction).encode()


class HookPipeline:
    """transform_fn, or input_fn -> predict_fn -> output_fn, each the user's or ours.

    Our defaults: input_fn decodes every codec type into a preprocessed batch;
    predict_fn returns softmax probabilities for our Classifier (model(x) for the
    user's own model); output_fn answers our JSON for our Classifier's output and
    nested lists otherwise (what AWS's default does)."""

    def __init__(
        self, hooks: UserHooks, model: Any, preprocess: Callable, classes: tuple[str, ...] | None, limits: codec.DecodeLimits, top_k: int
    ):
        self.hooks = hooks.functions
        self.model = model
        self.preprocess = preprocess
        self.classes = classes
        self.limits = limits
        self.top_k = top_k
        self._local = threading.local()  # whether this thread's request was a list

    def default_input_fn(self, body, content_type):
        data = body.encode() if isinstance(body, str) else body
        decoded = codec.decode(data, content_type, self.preprocess, self.limits)
        self._local.batch = decoded.batch
        return decoded.inputs

    def default_predict_fn(self, data, model):
        return predict(data, model)

    def default_output_fn(self, prediction, accept):
        codec.check_accept(accept)
        if self.classes and isinstance(prediction, torch.Tensor) and prediction.ndim == 2 and prediction.shape[1] == len(self.classes):
            batch = getattr(self._local, "batch", False) or prediction.shape[0] > 1  # a user input_fn may batch too
            return codec.encode(prediction, self.classes, self.top_k, codec.Decoded(prediction, batch)), codec.JSON
        return to_json(prediction), codec.JSON

    def __call__(self, body: bytes, content_type: str | None, accept: str | None, context: Context) -> tuple[bytes, str]:
        ctype = codec.media_type(content_type)
        accept = accept if accept and accept.strip() not in ("", "*/*") else codec.JSON
        payload = body.decode("utf-8", errors="replace") if ctype in UTF8_TYPES else body
        self._local.batch = False
        if "transform_fn" in self.hooks:
            result = call(self.hooks["transform_fn"], self.model, payload, content_type, accept, context=context)
        else:
            data = call(self.hooks.get("input_fn", self.default_input_fn), payload, content_type, context=context)
            prediction = call(self.hooks.get("predict_fn", self.default_predict_fn), data, self.model, context=context)
            result = call(self.hooks.get("output_fn", self.default_output_fn), prediction, accept, context=context)
        body_out, out_type = result if isinstance(result, tuple) else (result, accept)
        if isinstance(body_out, str):
            body_out = body_out.encode()
        elif not isinstance(body_out, (bytes, bytearray)):
            body_out = to_json(body_out)
        return bytes(body_out), out_type or codec.JSON


def safe_module_name(model_name: str) -> str:
    return "sm_vision_user_" + re.sub(r"\W", "_", model_name)

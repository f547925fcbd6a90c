"""The user's inference script, called the way AWS's inference toolkit calls it.

The script is MODEL_DIR/code/$SAGEMAKER_PROGRAM (falling back to code/inference.py);
code/requirements.txt is pip-installed first. Any of model_fn(model_dir),
input_fn(body, content_type), predict_fn(data, model), output_fn(prediction, accept)
or transform_fn(model, body, content_type, accept) overrides the default, and each
may take one more argument, `context` (AWS's rule: detected from the signature, so
scripts without it run unchanged): the request's custom attributes, ids, target model,
session and types, and the response headers a hook sets. As in AWS's toolkit the body is a str for
JSON/CSV and bytes otherwise, and output_fn may return body or (body, content_type).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from types import ModuleType
from typing import Any

from container import ConfigError
from container.attributes import HEADER as CUSTOM_ATTRIBUTES_HEADER

log = logging.getLogger(__name__)

DEFAULT_PROGRAM = "inference.py"
HOOKS = ("model_fn", "input_fn", "predict_fn", "output_fn", "transform_fn", "model_warmup_fn")
UTF8_TYPES = {"application/json", "text/csv", "application/jsonlines", "text/plain"}  # bodies the hooks get as str


def find_script(model_dir: Path, program: str | None, code_dirs: tuple[Path, ...] = ()) -> Path | None:
    """The user's script: SAGEMAKER_PROGRAM (else inference.py) in model/code, then in
    the SDK's submit directory. SAGEMAKER_PROGRAM may be a path on the machine that ran
    the SDK (SDK 2.x local mode passes the entry point as given, e.g. /home/me/code/
    inference.py, after repacking the file into model/code): only its name counts."""
    dirs = (model_dir / "code", *code_dirs)
    names = []
    if program:
        name = PurePath(program).name
        names.append(name if name.endswith(".py") else f"{name}.py")
    names.append(DEFAULT_PROGRAM)
    for name in names:
        for folder in dirs:
            if (folder / name).is_file():
                return folder / name
        if program and name != DEFAULT_PROGRAM and Path(program).is_absolute() and Path(program).is_file():
            return Path(program)
    if program:
        searched = ", ".join(str(folder) for folder in dirs)
        log.warning("SAGEMAKER_PROGRAM=%s not found in %s and no %s either; using the defaults", program, searched, DEFAULT_PROGRAM)
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


# The code/ directories of the scripts loaded so far in this process (multi-model
# endpoints load one per model).
_user_code_dirs: set[Path] = set()


def _inside(module: ModuleType, directories: set[Path]) -> bool:
    file = getattr(module, "__file__", None)
    return bool(file) and any(Path(file).resolve().is_relative_to(d) for d in directories)


def load_script(path: Path, module_name: str) -> ModuleType:
    """Import the user's script with its own code/ first on sys.path, so helper modules
    beside it import as usual. Each model's helpers come from its own code/: modules an
    earlier model imported from its code/ are dropped from sys.modules (that model keeps
    the module objects it already holds) and its directory leaves sys.path, so model B's
    `import helper` never runs model A's helper.py."""
    code_dir = path.parent.resolve()
    others = _user_code_dirs - {code_dir}
    for name, module in list(sys.modules.items()):
        if _inside(module, others):
            del sys.modules[name]
    for other in others:
        while str(other) in sys.path:
            sys.path.remove(str(other))
    _user_code_dirs.add(code_dir)
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    importlib.invalidate_caches()  # a code/ extracted after the finders listed their directories
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


# Response headers a hook may set (Context.set_response_header): X- headers such as
# X-Amzn-SageMaker-Custom-Attributes, which boto3 returns as the response's
# CustomAttributes. The status, content type, framing and request ids stay the server's.
RESPONSE_HEADER_NAME = re.compile(r"[Xx]-[A-Za-z0-9-]+")
SERVER_HEADERS = frozenset({"x-amzn-requestid", "x-request-id"})
MAX_RESPONSE_HEADER = 1024  # as InvokeEndpoint's CustomAttributes


@dataclass
class Context:
    """What a hook's optional last argument gets: the subset of MMS's Context that
    inference scripts use, and the request it is called for. The request fields are
    None in the context model_fn and model_warmup_fn get (there is no request yet)."""

    model_name: str
    model_dir: str
    gpu_id: int | None
    request_headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    # --- the request ---
    custom_attributes: str | None = None  # X-Amzn-SageMaker-Custom-Attributes, else SM_VISION_CUSTOM_ATTRIBUTES
    attributes: dict[str, str] = field(default_factory=dict)  # its key=value entries (the request's over the job's)
    inference_id: str | None = None  # X-Amzn-SageMaker-Inference-Id
    target_model: str | None = None  # X-Amzn-SageMaker-Target-Model, or the multi-model endpoint's model name
    session_id: str | None = None  # X-Amzn-SageMaker-Session-Id
    request_id: str | None = None  # as in the access log and the X-Amzn-RequestId response header
    content_type: str | None = None
    accept: str | None = None  # as the hooks see it: missing or */* is application/json
    response_headers: dict[str, str] = field(default_factory=dict)  # set by the hooks, sent with the answer

    @property
    def system_properties(self) -> dict[str, Any]:
        return {"model_dir": self.model_dir, "gpu_id": self.gpu_id, "model_name": self.model_name}

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_headers.get(key.lower())

    def get_all_request_header(self, idx: int = 0) -> dict[str, str]:
        return dict(self.request_headers)

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_id

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """Send `key: value` with the answer (MMS's signature). Only X- headers, not the
        request-id ones; the value at most 1024 visible US-ASCII characters."""
        if not isinstance(key, str) or not RESPONSE_HEADER_NAME.fullmatch(key) or key.lower() in SERVER_HEADERS:
            raise ValueError(f"response header {key!r}: a hook may set X- headers such as {CUSTOM_ATTRIBUTES_HEADER}, not the request ids")
        value = str(value)
        if len(value) > MAX_RESPONSE_HEADER or not all(" " <= char <= "~" for char in value):
            raise ValueError(f"response header {key}: the value must be at most {MAX_RESPONSE_HEADER} visible US-ASCII characters")
        self.response_headers[key] = value

    def set_custom_attributes(self, value: str) -> None:
        """The response's custom attributes (boto3: response["CustomAttributes"])."""
        self.set_response_header(0, CUSTOM_ATTRIBUTES_HEADER, value)


def call(func: Callable, *args, context: Context | None = None):
    """func(*args), or func(*args, context) when it takes one more parameter (AWS's rule)."""
    count = len(inspect.signature(func).parameters)
    if count == len(args):
        return func(*args)
    if count == len(args) + 1:
        return func(*args, context)
    raise TypeError(f"{func.__name__} takes {count} arguments; expected {len(args)} (or {len(args) + 1} with context)")


# Positional arguments of each hook without the optional trailing `context`.
ARITY = {"model_fn": 1, "input_fn": 2, "predict_fn": 2, "output_fn": 2, "transform_fn": 4, "model_warmup_fn": 2}


def takes_context(name: str, func: Callable) -> bool:
    """Whether the hook takes `context` last (AWS's rule: one more parameter), checked at load."""
    count = len(inspect.signature(func).parameters)
    if count not in (ARITY[name], ARITY[name] + 1):
        raise ConfigError(f"{name} takes {count} arguments; expected {ARITY[name]} (or {ARITY[name] + 1} with context)")
    return count == ARITY[name] + 1


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


def safe_module_name(model_name: str) -> str:
    return "sm_vision_user_" + re.sub(r"\W", "_", model_name)

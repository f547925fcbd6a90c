"""The opt-in MMS backend: multi-model-server started as AWS's images start it
(sagemaker-inference's model_server), answering through the same Handler as the
default server: the same defaults, the same user hooks, the same limits.

`serve --backend mms` calls start(); MMS imports this module in each worker and calls
handle(data, context): None data once to load, then batches of one request.
sagemaker_inference reads the environment at import, so it is imported only in start().
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from container import SageMakerPaths, ServeConfig
from serve.errors import ServeError, redact_paths

log = logging.getLogger("serve.mms")

_handler = None


def _limits():
    from serve.cli import decode_limits

    # MMS workers inherit the container's environment: the limits come from it exactly
    # as the default server's do, so both backends refuse the same requests.
    return decode_limits(ServeConfig.from_env())


def _load(context):
    import torch

    from serve.hooks import Context
    from serve.hosting import Settings, load_handler
    from serve.model import prepare_model_dir
    from vision.devices import select_device

    config = ServeConfig.from_env()
    torch.set_num_threads(max(1, int(os.environ.get("SM_VISION_TORCH_THREADS", "1"))))
    gpu = context.system_properties.get("gpu_id")
    device = select_device(f"cuda:{gpu}" if gpu is not None and torch.cuda.is_available() else config.device)
    model_dir = prepare_model_dir(Path(context.system_properties["model_dir"]), Path("/tmp/sm-vision-mms") / str(os.getpid()))
    settings = Settings(
        model_dir=model_dir, device=device, precision=config.precision, top_k=config.top_k, limits=_limits(), program=config.program
    )
    handler = load_handler(context.model_name, model_dir, settings)
    handler.context = Context(context.model_name, str(model_dir), gpu)
    return handler


def handle(data, context):
    """MMS entry point: load on the first (None) call, then answer one request."""
    global _handler
    if _handler is None:
        _handler = _load(context)
    if data is None:
        return None
    from serve.handler import Call
    from serve.hooks import Context

    headers = {key.lower(): value for key, value in context.get_all_request_header(0).items()}
    body = data[0].get("body")
    if body is None:
        body = data[0].get("data", b"")
    if not isinstance(body, (bytes, bytearray)):  # MMS decoded it (MMS_DECODE_INPUT_REQUEST unset)
        body = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = Call(
        headers.get("content-type"),
        headers.get("accept"),
        Context(context.model_name, _handler.context.model_dir, _handler.context.gpu_id, headers),
    )
    try:
        out, out_type = _handler.encode(_handler.predict(_handler.decode(bytes(body), request), request), request)
    except ServeError as err:
        context.set_response_status(err.status, err.message[:200])
        context.set_response_content_type(0, "application/json")
        return [json.dumps({"error": err.message})]
    except Exception as err:  # noqa: BLE001 - a user hook's bug: logged, not sent
        log.exception("unhandled error in the model's handler")
        context.set_response_status(500, "internal error")
        context.set_response_content_type(0, "application/json")
        return [json.dumps({"error": f"internal error: {type(err).__name__}: {redact_paths(str(err))}"})]
    context.set_response_content_type(0, out_type)
    return [out]


def start(config: ServeConfig, paths: SageMakerPaths, cpus: int) -> None:
    """Hand the process to sagemaker-inference's model server (blocks until MMS exits)."""
    workers = config.workers or cpus
    os.environ.update(config.to_env())
    os.environ.setdefault("SAGEMAKER_BASE_DIR", str(paths.root))
    os.environ.setdefault("SM_VISION_TORCH_THREADS", str(max(1, cpus // workers)))
    os.environ["MMS_DECODE_INPUT_REQUEST"] = "false"  # the Handler decodes bodies itself
    if config.workers:
        os.environ.setdefault("SAGEMAKER_MODEL_SERVER_WORKERS", str(config.workers))
    from sagemaker_inference import model_server

    model_server.start_model_server(handler_service=__name__ + ":handle")

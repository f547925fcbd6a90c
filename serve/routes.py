"""The HTTP routes of SageMaker's serving contract and the multi-model API, and the
one mapping of errors to responses (mapped_errors, applied to every route)."""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serve import metrics as server_metrics
from serve.errors import BadInput, NotFound, PayloadTooLarge, ServeError, redact_paths
from serve.handler import Call
from serve.hosting import TARGET_MODEL_HEADER, MultiModel, Settings, SingleModel
from serve.runner import Admission, ClientGone, until_done_or_gone

log = logging.getLogger("serve")

DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) over-cap bodies up to this, so clients see the 413


async def read_body(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        if int(declared) <= DRAIN_LIMIT:
            async for _ in request.stream():
                pass
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {cap} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise PayloadTooLarge(f"body exceeds the limit of {cap} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        chunks.append(chunk)
    return b"".join(chunks)


def top_k(request: Request) -> int | None:
    raw = request.query_params.get("top_k") or request.headers.get("x-top-k")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise BadInput(f"top_k={raw!r}: expected a whole number >= 1")
    return int(raw)


def routes(settings: Settings, hosting: SingleModel | MultiModel, metrics) -> list[Route]:
    admission = Admission(settings.max_pending)  # back-pressure: 503 + Retry-After beyond max_pending

    async def invoke(request: Request, name: str | None) -> Response:
        with admission.slot():
            model = hosting.get(name)
            server_metrics.note_model(request.scope, model.name)  # metrics: label the request with its model
            body = await read_body(request, settings.max_payload_bytes)
            headers = {key.lower(): value for key, value in request.headers.items()}
            call = Call(request.headers.get("content-type"), request.headers.get("accept"), model.context(headers), top_k(request))
            try:
                # Work is cancelled when it times out or its client goes away.
                out, out_type = await until_done_or_gone(model.invoke(body, call), request.receive, settings.timeout_s)
            except ClientGone:
                return Response(status_code=499)  # nobody reads it; the access log records the abandon
        return Response(out, media_type=out_type)

    def registry() -> MultiModel:
        if not hosting.multi_model:
            raise NotFound("model management needs a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true)")
        return hosting

    async def ping(request: Request) -> Response:
        status, body = hosting.ping()
        return JSONResponse(body, status_code=status)

    async def invocations(request: Request) -> Response:
        return await invoke(request, request.headers.get(TARGET_MODEL_HEADER))

    async def predictions(request: Request) -> Response:
        return await invoke(request, request.path_params["name"] if hosting.multi_model else None)

    async def execution_parameters(request: Request) -> Response:
        return JSONResponse(
            {
                "MaxConcurrentTransforms": settings.max_concurrent_transforms or settings.workers,
                "BatchStrategy": settings.batch_strategy or "MULTI_RECORD",
                "MaxPayloadInMB": settings.max_payload_bytes // (1024 * 1024),
            }
        )

    async def list_or_load(request: Request) -> Response:
        models = registry()
        if request.method == "GET":
            return JSONResponse({"models": [describe(m) for m in models.loaded()]})
        try:
            payload = json.loads(await read_body(request, settings.max_payload_bytes))
            name, url = payload["model_name"], payload["url"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise BadInput('load a model with {"model_name": NAME, "url": DIR}') from None
        await models.load(str(name), str(url))
        return JSONResponse({"status": f"model {name} loaded"})

    async def one_model(request: Request) -> Response:
        models, name = registry(), request.path_params["name"]
        if request.method == "DELETE":
            models.unload(name)
            return JSONResponse({"status": f"model {name} unloaded"})
        return JSONResponse(describe(models.get(name)))

    async def invoke_named(request: Request) -> Response:
        registry()
        return await invoke(request, request.path_params["name"])

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    table = [
        ("/ping", ping, ["GET"]),
        ("/invocations", invocations, ["POST"]),
        ("/predictions/{name}", predictions, ["POST"]),
        ("/execution-parameters", execution_parameters, ["GET"]),
        ("/models", list_or_load, ["GET", "POST"]),
        ("/models/{name}", one_model, ["GET", "DELETE"]),
        ("/models/{name}/invoke", invoke_named, ["POST"]),
    ]
    if metrics.enabled:
        table.append(("/metrics", metrics_endpoint, ["GET"]))
    return [Route(path, mapped_errors(handler), methods=methods) for path, handler, methods in table]


def mapped_errors(handler):
    """The one error mapping of every route: typed errors -> their status, anything
    else -> 500 with the traceback in the log only."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ServeError as err:
            return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)
        except Exception as err:  # noqa: BLE001 - e.g. a user hook's bug
            # The traceback goes to the log; the body says what failed, without paths.
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return error(500, f"internal error: {type(err).__name__}: {redact_paths(str(err))}")

    return wrapped


def describe(model) -> dict:
    return {"modelName": model.name, "modelUrl": model.url}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def http_error(request: Request, exc: HTTPException) -> Response:
    return error(exc.status_code, exc.detail)


# Starlette's own errors (unknown route 404, wrong method 405) in the same {"error": ...} shape.
EXCEPTION_HANDLERS = {HTTPException: http_error}

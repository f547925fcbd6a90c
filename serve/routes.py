"""The HTTP routes of SageMaker's serving contract and the multi-model API. Errors
raised here are answered by serve.middleware.ErrorReplies (serve.errors.reply)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from container import ConfigError, ServeConfig, parse_int
from serve import metrics as server_metrics
from serve.access_log import REQUEST_ID_SCOPE_KEY
from serve.deadline import Deadline
from serve.errors import BadInput, NotFound, PayloadTooLarge, RequestTimeout
from serve.handler import requested_top_k
from serve.hosting import TARGET_MODEL_HEADER, MultiModel, SingleModel
from serve.middleware import routing_error
from serve.runner import Admission, ClientGone, until_done_or_gone

log = logging.getLogger("serve")

DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) over-cap bodies up to this, so clients see the 413


class BodyClock:
    """How long a request body may take: SM_VISION_BODY_TIMEOUT_S, plus one second per
    SM_VISION_BODY_MIN_RATE_KIB_S KiB received. A client trickling its body slower than
    that is answered 408 and its connection closed, however long it would go on."""

    def __init__(self, config: ServeConfig):
        self.started = time.monotonic()
        self.grace_s, self.rate = config.body_timeout_s, config.body_min_rate_kib_s * 1024

    def left(self, received: int) -> float:
        return self.started + self.grace_s + received / self.rate - time.monotonic()


async def _receive_chunks(request: Request, clock: BodyClock):
    """The body's chunks as they arrive, each awaited no longer than the clock allows."""
    received = 0
    while True:
        try:
            async with asyncio.timeout(clock.left(received)):
                message = await request.receive()
        except TimeoutError:
            raise RequestTimeout(
                f"the request body arrived too slowly ({received:,} bytes in {time.monotonic() - clock.started:.0f} s; "
                "SM_VISION_BODY_TIMEOUT_S, SM_VISION_BODY_MIN_RATE_KIB_S)"
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        received += len(chunk)
        yield chunk
        if not message.get("more_body", False):
            return


async def read_body(request: Request, config: ServeConfig) -> bytes:
    """The whole body, before the request is admitted (so clients still sending hold no
    admission slot), within the body clock and the payload cap."""
    cap, clock = config.max_payload_bytes, BodyClock(config)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = parse_int(declared, "Content-Length", minimum=0)
        except ConfigError as err:
            raise BadInput(str(err)) from None
        if size > cap:
            if size <= DRAIN_LIMIT:
                async for _ in _receive_chunks(request, clock):
                    pass
            raise PayloadTooLarge(f"body is {size} bytes; the limit is {cap} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
    chunks, total = [], 0
    async for chunk in _receive_chunks(request, clock):
        total += len(chunk)
        if total > cap:
            raise PayloadTooLarge(f"body exceeds the limit of {cap} bytes (SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        chunks.append(chunk)
    return b"".join(chunks)


def invocation(config: ServeConfig, hosting: SingleModel | MultiModel, admission: Admission, model_name: Callable[[Request], str | None]):
    """The endpoint of a route that runs a model (/invocations and its aliases, sharing
    one admission); `model_name` says which model a request names. Route ->
    model.invoke -> the forward, nothing in between but the deadline and hang-up watch."""

    async def invoke(request: Request) -> Response:
        try:
            body = await read_body(request, config)
        except ClientGone:
            return Response(status_code=499)
        deadline = Deadline(config.timeout_s)  # the request's one deadline starts once its body is in
        with admission.slot():
            model = hosting.get(model_name(request))
            server_metrics.note_model(request.scope, model.name)  # metrics: label the request with its model
            headers = {key.lower(): value for key, value in request.headers.items()}
            top_k = requested_top_k(request.query_params.get("top_k") or headers.get("x-top-k"))
            call = model.call(headers, top_k, request.scope.get(REQUEST_ID_SCOPE_KEY), deadline)
            try:
                # The work stops when its deadline passes or its client goes away.
                out, out_type = await until_done_or_gone(model.invoke(body, call), request.receive, deadline)
            except ClientGone:
                return Response(status_code=499)  # nobody reads it; the access log records the abandon
        return Response(out, media_type=out_type, headers=call.context.response_headers)  # headers a user hook set

    return invoke


def routes(config: ServeConfig, hosting: SingleModel | MultiModel, metrics) -> list[Route]:
    admission = Admission(config.max_pending)  # back-pressure: 503 + Retry-After beyond max_pending

    def invoking(model_name: Callable[[Request], str | None]):
        return invocation(config, hosting, admission, model_name)

    def named(request: Request) -> str:
        registry(hosting)
        return request.path_params["name"]

    async def ping(request: Request) -> Response:
        status, body = hosting.ping()
        return JSONResponse(body, status_code=status)

    async def execution_parameters(request: Request) -> Response:
        return JSONResponse(
            {
                "MaxConcurrentTransforms": config.max_concurrent_transforms,
                "BatchStrategy": config.batch_strategy,
                "MaxPayloadInMB": config.max_payload_mb,
            }
        )

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    table = [
        ("/ping", ping, ["GET"]),
        ("/invocations", invoking(lambda request: request.headers.get(TARGET_MODEL_HEADER)), ["POST"]),
        ("/predictions/{name}", invoking(lambda request: request.path_params["name"] if hosting.multi_model else None), ["POST"]),
        ("/execution-parameters", execution_parameters, ["GET"]),
        *management(config, hosting),
        ("/models/{name}/invoke", invoking(named), ["POST"]),
    ]
    if metrics.enabled:
        table.append(("/metrics", metrics_endpoint, ["GET"]))
    return [Route(path, endpoint, methods=methods) for path, endpoint, methods in table]


def registry(hosting: SingleModel | MultiModel) -> MultiModel:
    if not hosting.multi_model:
        raise NotFound("model management needs a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true)")
    return hosting


def management(config: ServeConfig, hosting: SingleModel | MultiModel) -> list[tuple]:
    """SageMaker's multi-model API: list, load, describe and unload models by name."""

    async def list_or_load(request: Request) -> Response:
        models = registry(hosting)
        if request.method == "GET":
            return JSONResponse({"models": [describe(m) for m in models.loaded()]})
        try:
            payload = json.loads(await read_body(request, config))
            name, url = payload["model_name"], payload["url"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise BadInput('load a model with {"model_name": NAME, "url": DIR}') from None
        await models.load(str(name), str(url))
        return JSONResponse({"status": f"model {name} loaded"})

    async def one_model(request: Request) -> Response:
        models, name = registry(hosting), request.path_params["name"]
        if request.method == "DELETE":
            await models.unload(name)
            return JSONResponse({"status": f"model {name} unloaded"})
        return JSONResponse(describe(models.get(name)))

    return [("/models", list_or_load, ["GET", "POST"]), ("/models/{name}", one_model, ["GET", "DELETE"])]


def describe(model) -> dict:
    return {"modelName": model.name, "modelUrl": model.url}


# Starlette's own errors (unknown route 404, wrong method 405) in the same {"error": ...} shape.
EXCEPTION_HANDLERS = {HTTPException: routing_error}

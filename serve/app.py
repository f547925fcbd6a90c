"""The ASGI app: route -> decode -> predict -> encode, typed errors mapped in one place.

create_app(settings) builds everything; nothing happens at import. The model loads
(and warms up) in a background thread at start-up so /ping can say "loading" (503),
"ready" (200) or "failed" (500) immediately, whatever the model is doing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from container import ConfigError
from serve import archive, codec
from serve import metrics as server_metrics
from serve.access_log import RequestLog
from serve.archive import ExtractLimits
from serve.errors import BadInput, Conflict, InsufficientMemory, NotFound, NotReady, PayloadTooLarge, ServeError
from serve.hooks import Context, HookPipeline, UserHooks, call, find_script, safe_module_name
from serve.model import Classifier, load_classifier, module_nbytes, prepare_model_dir
from serve.runner import Admission, BatchRunner, ClientGone, until_done_or_gone
from train.presets import IMAGENET_MEAN, IMAGENET_STD, eval_transform

log = logging.getLogger("serve")

TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"
DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) over-cap bodies up to this, so clients see the 413


@dataclass(frozen=True)
class Settings:
    model_dir: Path
    scratch: Path = Path("/tmp/sm-vision-models")
    device: torch.device = torch.device("cpu")
    workers: int = 1  # concurrent forward passes (CPU) / user-hook calls
    decode_threads: int = 4  # concurrent decodes: a few, not one per request, so forwards keep the GIL and cores
    timeout_s: float = 60
    max_payload_bytes: int = 6 * 1024 * 1024
    top_k: int = 5
    limits: codec.DecodeLimits = codec.DecodeLimits()
    batching: bool = False  # dynamic micro-batching (default on for GPU)
    max_batch_size: int = 16
    max_delay_ms: float = 5
    program: str | None = None  # SAGEMAKER_PROGRAM
    multi_model: bool = False
    batch_mode: bool = False  # SAGEMAKER_BATCH: a batch transform job
    max_concurrent_transforms: int | None = None
    batch_strategy: str | None = None
    mme_budget_bytes: int = 4 * 1024**3
    extract_limits: ExtractLimits = ExtractLimits()  # model.tar.gz expansion caps (serve.archive)
    max_pending: int = 64  # requests in progress at once; more get 503 + Retry-After (SM_VISION_MAX_PENDING)
    precision: str = "auto"  # SM_VISION_PRECISION: auto, fp32, bf16 or fp16 (our classifier only)
    metrics: bool = True  # GET /metrics (SM_VISION_METRICS)
    access_log: str = "log"  # log, json or off (SM_VISION_ACCESS_LOG)


def _default_preprocess():
    return eval_transform(224, None, IMAGENET_MEAN, IMAGENET_STD)


def dir_bytes(path: Path) -> int:
    """Size on disk of a model dir (its code/ aside): the estimate MME admission uses."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "code" not in f.relative_to(path).parts[:1])


class Pools:
    """Bounded thread pools: decoding (request side) and inference (model side), and
    the metrics the models report their stages to."""

    def __init__(self, settings: Settings, metrics=None):
        self.metrics = metrics or server_metrics.NoMetrics()
        self.decoders = concurrent.futures.ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self.inference = concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="infer")

    async def decode(self, func: Callable, *args):
        return await asyncio.wrap_future(self.decoders.submit(func, *args))

    async def infer(self, func: Callable, *args):
        return await asyncio.wrap_future(self.inference.submit(func, *args))

    def close(self) -> None:
        self.inference.shutdown(wait=True)
        self.decoders.shutdown(wait=True)


class ServedModel:
    """One loaded model and how to run it: our Classifier, or the user's hooks."""

    def __init__(self, name: str, model_dir: Path, url: str, settings: Settings, pools: Pools):
        started = time.perf_counter()
        self.name, self.url, self.settings = name, url, settings
        self.model_dir = prepare_model_dir(model_dir, settings.scratch / archive.check_model_name(name), settings.extract_limits)
        self.gpu_id = settings.device.index or 0 if settings.device.type == "cuda" else None
        script = find_script(self.model_dir, settings.program)
        hooks = UserHooks.load(script, safe_module_name(name)) if script else None
        context = self.context({})
        if hooks and "model_fn" in hooks.functions:
            self.model = call(hooks.functions["model_fn"], str(self.model_dir), context=context)
        else:
            self.model = load_classifier(self.model_dir, settings.device, settings.precision)
        classifier = self.model if isinstance(self.model, Classifier) else None
        self.classifier = classifier
        self.pipeline = None
        if hooks:
            preprocess = classifier.preprocess if classifier else _default_preprocess()
            self.pipeline = HookPipeline(
                hooks, self.model, preprocess, classifier.classes if classifier else None, settings.limits, settings.top_k
            )
        self.pools = pools
        self.batcher = None
        if classifier and settings.batching and not hooks:
            forward = pools.metrics.counting_batches(name, classifier.probabilities)  # metrics: batch sizes
            self.batcher = BatchRunner(forward, settings.max_batch_size, settings.max_delay_ms)
        if classifier:
            classifier.warm_up()
        if hooks and "model_warmup_fn" in hooks.functions:
            call(hooks.functions["model_warmup_fn"], str(self.model_dir), self.model, context=context)
        self.nbytes = self.model.nbytes() if isinstance(self.model, Classifier) else module_nbytes(self.model)
        self.load_seconds = time.perf_counter() - started  # read by serve.metrics.HostCollector

    def context(self, headers: dict[str, str]) -> Context:
        return Context(self.name, str(self.model_dir), self.gpu_id, headers)

    async def invoke(
        self, body: bytes, content_type: str | None, accept: str | None, top_k: int | None, headers: dict[str, str]
    ) -> tuple[bytes, str]:
        if self.pipeline is not None:
            return await self.pools.infer(self.pipeline, body, content_type, accept, self.context(headers))
        codec.check_accept(accept)
        metrics, started = self.pools.metrics, time.perf_counter()
        limits = self.settings.limits
        # A batch transform request holds as many records as MaxPayloadInMB allows; they
        # are decoded and run max_batch at a time, so memory stays bounded.
        parsed = await self.pools.decode(codec.parse, body, content_type, limits, not self.settings.batch_mode)
        decode_s, forward_s, chunks = time.perf_counter() - started, 0.0, []
        for start in range(0, len(parsed), limits.max_batch):
            chunk_started = time.perf_counter()
            inputs = await self.pools.decode(codec.to_inputs, parsed, self.classifier.preprocess, limits, start, start + limits.max_batch)
            decoded_at = time.perf_counter()
            if self.batcher is not None:
                chunks.append(await self.batcher.run(inputs))
            else:
                chunks.append(await self.pools.infer(self.classifier.probabilities, inputs))
            decode_s += decoded_at - chunk_started
            forward_s += time.perf_counter() - decoded_at
        metrics.stage("decode", self.name, decode_s)
        metrics.stage("forward", self.name, forward_s)
        encode_started = time.perf_counter()
        probs = torch.cat(chunks)
        k = min(top_k or self.settings.top_k, len(self.classifier.classes))
        out_type = "application/jsonlines" if parsed.lines else codec.JSON
        out = codec.encode(probs, self.classifier.classes, k, codec.Decoded(probs, parsed.batch, parsed.lines))
        metrics.stage("encode", self.name, time.perf_counter() - encode_started)
        return out, out_type

    @property
    def healthy(self) -> bool:
        return self.batcher is None or self.batcher.alive

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


class SingleModel:
    """The one model of a plain endpoint, loaded in the background."""

    def __init__(self, settings: Settings, pools: Pools):
        self.settings, self.pools = settings, pools
        self.state, self.reason, self.model = "loading", None, None
        self.started = time.monotonic()

    def load(self) -> None:
        try:
            self.model = ServedModel("model", self.settings.model_dir, str(self.settings.model_dir), self.settings, self.pools)
        except ConfigError as err:
            self.reason = str(err)
            log.error("MODEL LOAD FAILED: %s", self.reason)
        except Exception as err:  # noqa: BLE001 - the user's model_fn can raise anything
            self.reason = f"{type(err).__name__}: {err}"
            log.exception("MODEL LOAD FAILED: %s", self.reason)
        else:
            log.info(
                "model ready in %.1f s (%s, device %s)",
                time.monotonic() - self.started,
                "user hooks" if self.model.pipeline else "default handlers",
                self.settings.device,
            )
        self.state = "ready" if self.model is not None else "failed"

    def get(self, name: str | None = None) -> ServedModel:
        if self.model is None:
            raise NotReady("model is still loading" if self.state == "loading" else f"model failed to load: {self.reason}")
        return self.model


class Registry:
    """Multi-model endpoint: models loaded by name, least recently used unloaded first
    when the memory budget would be exceeded."""

    def __init__(self, settings: Settings, pools: Pools):
        self.settings, self.pools = settings, pools
        self.models: OrderedDict[str, ServedModel] = OrderedDict()
        self.lock = asyncio.Lock()
        self.evictions = 0  # read by serve.metrics.HostCollector

    def get(self, name: str | None) -> ServedModel:
        if not name:
            raise BadInput(f"multi-model endpoint: name the model ({TARGET_MODEL_HEADER} header or /models/<name>/invoke)")
        if name not in self.models:
            raise NotFound(f"model {name!r} is not loaded")
        self.models.move_to_end(name)
        return self.models[name]

    def used(self) -> int:
        return sum(model.nbytes for model in self.models.values())

    async def load(self, name: str, url: str) -> None:
        try:
            archive.check_model_name(name)  # it becomes a directory name
        except ValueError as err:
            raise BadInput(str(err)) from None
        path = Path(url)
        async with self.lock:
            if name in self.models:
                raise Conflict(f"model {name!r} is already loaded")
            if not path.is_dir():
                raise NotFound(f"model url {url!r} is not a directory in the container")
            need = dir_bytes(path)
            budget = self.settings.mme_budget_bytes
            if need > budget:
                raise InsufficientMemory(
                    f"model {name!r} needs ~{need >> 20} MiB; the budget is {budget >> 20} MiB (SM_VISION_MME_MEMORY_MB)"
                )
            while self.models and self.used() + need > budget:
                evicted, model = self.models.popitem(last=False)
                model.close()
                self.evictions += 1
                log.info("unloaded least recently used model %s to fit %s", evicted, name)
            gc.collect()
            try:
                model = await run_in_threadpool(ServedModel, name, path, url, self.settings, self.pools)
            except ConfigError as err:
                raise BadInput(f"cannot load model {name!r}: {err}") from None
            self.models[name] = model
            log.info("loaded model %s from %s (~%d MiB)", name, url, model.nbytes >> 20)

    def unload(self, name: str) -> None:
        model = self.models.pop(name, None)
        if model is None:
            raise NotFound(f"model {name!r} is not loaded")
        model.close()
        gc.collect()

    def describe(self, model: ServedModel) -> dict:
        return {"modelName": model.name, "modelUrl": model.url}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def endpoint(handler):
    """Every route's error mapping: typed errors -> their status, anything else -> 500
    with the traceback in the log only."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ServeError as err:
            return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)
        except Exception as err:  # noqa: BLE001 - e.g. a user hook's bug
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return _error(500, f"internal error: {type(err).__name__}: {err}")

    return wrapped


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


def _top_k(request: Request) -> int | None:
    raw = request.query_params.get("top_k") or request.headers.get("x-top-k")
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise BadInput(f"top_k={raw!r}: expected a whole number >= 1")
    return int(raw)


def create_app(settings: Settings) -> Starlette:
    metrics = server_metrics.ServerMetrics.from_env(settings.metrics)
    pools = Pools(settings, metrics)
    models: SingleModel | Registry = Registry(settings, pools) if settings.multi_model else SingleModel(settings, pools)
    metrics.watch(server_metrics.HostCollector(models, pools, settings.device))

    admission = Admission(settings.max_pending)

    async def invoke(request: Request, name: str | None) -> Response:
        with admission.slot():
            model = models.get(name)
            server_metrics.note_model(request.scope, model.name)  # metrics: label the request with its model
            body = await read_body(request, settings.max_payload_bytes)
            headers = {key.lower(): value for key, value in request.headers.items()}
            work = model.invoke(body, request.headers.get("content-type"), request.headers.get("accept"), _top_k(request), headers)
            try:
                out, out_type = await until_done_or_gone(work, request.receive, settings.timeout_s)
            except ClientGone:
                return Response(status_code=499)  # nobody reads it; the access log records the abandon
        return Response(out, media_type=out_type)

    @endpoint
    async def ping(request: Request) -> Response:
        if isinstance(models, Registry) or (models.state == "ready" and models.model.healthy):
            return JSONResponse({"status": "healthy"})
        if models.state == "ready":
            return JSONResponse({"status": "unhealthy", "error": "the micro-batcher has stopped"}, status_code=500)
        if models.state == "loading":
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "failed", "error": models.reason}, status_code=500)

    @endpoint
    async def invocations(request: Request) -> Response:
        return await invoke(request, request.headers.get(TARGET_MODEL_HEADER))

    @endpoint
    async def predictions(request: Request) -> Response:
        return await invoke(request, request.path_params["name"] if isinstance(models, Registry) else None)

    @endpoint
    async def execution_parameters(request: Request) -> Response:
        return JSONResponse(
            {
                "MaxConcurrentTransforms": settings.max_concurrent_transforms or settings.workers,
                "BatchStrategy": settings.batch_strategy or "MULTI_RECORD",
                "MaxPayloadInMB": settings.max_payload_bytes // (1024 * 1024),
            }
        )

    def registry() -> Registry:
        if not isinstance(models, Registry):
            raise NotFound("model management needs a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true)")
        return models

    @endpoint
    async def list_or_load(request: Request) -> Response:
        reg = registry()
        if request.method == "GET":
            return JSONResponse({"models": [reg.describe(m) for m in reg.models.values()]})
        try:
            payload = json.loads(await read_body(request, settings.max_payload_bytes))
            name, url = payload["model_name"], payload["url"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise BadInput('load a model with {"model_name": NAME, "url": DIR}') from None
        await reg.load(str(name), str(url))
        return JSONResponse({"status": f"model {name} loaded"})

    @endpoint
    async def one_model(request: Request) -> Response:
        reg, name = registry(), request.path_params["name"]
        if request.method == "DELETE":
            reg.unload(name)
            return JSONResponse({"status": f"model {name} unloaded"})
        return JSONResponse(reg.describe(reg.get(name)))

    @endpoint
    async def invoke_named(request: Request) -> Response:
        registry()
        return await invoke(request, request.path_params["name"])

    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, exc.detail)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if isinstance(models, SingleModel):
            threading.Thread(target=models.load, name="model-loader", daemon=True).start()
        log.info(
            "serving on device %s with %d inference workers%s%s%s",
            settings.device,
            settings.workers,
            ", micro-batching" if settings.batching else "",
            ", multi-model" if settings.multi_model else "",
            ", batch transform (see /execution-parameters)" if settings.batch_mode else "",
        )
        yield
        log.info("shutting down: in-flight requests finished")
        pools.close()
        loaded = models.models.values() if isinstance(models, Registry) else [models.model] if models.model else []
        for model in loaded:
            model.close()

    routes = [
        Route("/ping", ping, methods=["GET"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/predictions/{name}", predictions, methods=["POST"]),
        Route("/execution-parameters", execution_parameters, methods=["GET"]),
        Route("/models", list_or_load, methods=["GET", "POST"]),
        Route("/models/{name}", one_model, methods=["GET", "DELETE"]),
        Route("/models/{name}/invoke", invoke_named, methods=["POST"]),
    ]
    if metrics.enabled:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.models = models
    return RequestLog(app, metrics, settings.access_log)  # request ids, access log, request metrics

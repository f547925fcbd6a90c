"""Model hosting: one interface (`get`, `ping`, `close`) for the single model of a
plain endpoint and the named models of a multi-model endpoint.

A HostedModel is one model directory made ready: model.tar.gz extracted, the user's
script found and imported, model_fn called once, warmed up. It runs requests as
decode (decode pool) -> predict (inference pool, directly or through the micro-batcher) -> encode.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from starlette.concurrency import run_in_threadpool

from container import ConfigError
from serve import archive, codec
from serve import metrics as server_metrics
from serve.archive import ExtractLimits
from serve.errors import BadInput, Conflict, InsufficientMemory, NotFound, NotReady, redact_paths
from serve.handler import Call, Handler
from serve.hooks import Context, UserHooks, find_script, safe_module_name
from serve.model import prepare_model_dir
from serve.runner import BatchRunner

log = logging.getLogger("serve")

TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"


@dataclass(frozen=True)
class Settings:
    """What the app runs with: ServeConfig resolved against this machine (device,
    thread counts, decode limits). serve.cli builds it; tests construct it directly."""

    model_dir: Path
    scratch: Path = Path("/tmp/sm-vision-models")
    device: torch.device = torch.device("cpu")
    precision: str = "auto"  # our classifier's forward precision (vision.precision)
    workers: int = 1  # concurrent forward passes (CPU) / user-hook calls
    decode_threads: int = 4  # concurrent decodes: a few, not one per request, so forwards keep the GIL and cores
    timeout_s: float = 60
    max_payload_bytes: int = 6 * 1024 * 1024
    top_k: int = 5
    limits: codec.DecodeLimits = codec.DecodeLimits()
    batching: bool = False  # dynamic micro-batching of our classifier (serve.cli turns it on by default)
    max_batch_size: int = 16  # serve.cli.batch_shape picks these by device
    max_delay_ms: float = 5
    program: str | None = None  # SAGEMAKER_PROGRAM
    code_dirs: tuple[Path, ...] = ()  # where else the user's script may be (SDK submit directory)
    multi_model: bool = False
    batch_mode: bool = False  # SAGEMAKER_BATCH: a batch transform job
    max_concurrent_transforms: int | None = None
    batch_strategy: str | None = None
    mme_budget_bytes: int = 4 * 1024**3
    models_root: Path = Path("/opt/ml/models")  # where a multi-model endpoint's urls must point
    gpu_id: int | None = None  # this worker's GPU (context.system_properties["gpu_id"])
    metrics: bool = True  # GET /metrics (SM_VISION_METRICS)
    access_log: str = "log"  # log, json or off (SM_VISION_ACCESS_LOG)
    extract_limits: ExtractLimits = ExtractLimits()  # model.tar.gz expansion caps (serve.archive)
    max_pending: int = 64  # requests in progress at once; more get 503 + Retry-After (SM_VISION_MAX_PENDING)


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


def load_handler(name: str, model_dir: Path, settings: Settings) -> Handler:
    """Everything start-up does for one model: find and import the script, model_fn, warm-up."""
    script = find_script(model_dir, settings.program, settings.code_dirs)
    hooks = UserHooks.load(script, safe_module_name(name)) if script else None
    context = Context(name, str(model_dir), gpu_id(settings))
    return Handler.load(model_dir, hooks, context, settings.device, settings.precision, limits=settings.limits, top_k=settings.top_k)


def gpu_id(settings: Settings) -> int | None:
    if settings.gpu_id is not None:
        return settings.gpu_id
    return (settings.device.index or 0) if settings.device.type == "cuda" else None


class HostedModel:
    """One loaded model and the pools that run it."""

    def __init__(self, name: str, model_dir: Path, url: str, settings: Settings, pools: Pools):
        started = time.perf_counter()
        self.name, self.url, self.settings, self.pools = name, url, settings, pools
        # The name becomes a directory: SageMaker's model-name pattern only (serve.archive).
        self.model_dir = prepare_model_dir(model_dir, settings.scratch / archive.check_model_name(name), settings.extract_limits)
        self.handler = load_handler(name, self.model_dir, settings)
        self.batcher = None
        if self.handler.plain and settings.batching:
            forward = pools.metrics.counting_batches(name, self.handler.classifier.probabilities)  # metrics: batch sizes
            self.batcher = BatchRunner(
                forward, settings.max_batch_size, settings.max_delay_ms, executor=pools.inference, concurrency=settings.workers
            )
        self.nbytes = self.handler.nbytes()
        self.load_seconds = time.perf_counter() - started  # read by serve.metrics.HostCollector

    async def invoke(self, body: bytes, request: Call) -> tuple[bytes, str]:
        if self.handler.plain and self.settings.batch_mode:
            return await self.invoke_records(body, request)
        metrics, started = self.pools.metrics, time.perf_counter()
        data = await self.pools.decode(self.handler.decode, body, request)
        decoded_at = time.perf_counter()
        metrics.stage("decode", self.name, decoded_at - started)
        if self.batcher is not None:
            prediction = await self.batcher.run(data)
        else:
            prediction = await self.pools.infer(self.handler.predict, data, request)
        forwarded_at = time.perf_counter()
        metrics.stage("forward", self.name, forwarded_at - decoded_at)
        out = self.handler.encode(prediction, request)
        metrics.stage("encode", self.name, time.perf_counter() - forwarded_at)
        return out

    async def invoke_records(self, body: bytes, request: Call) -> tuple[bytes, str]:
        """Batch transform: a request holds as many records as MaxPayloadInMB lets in
        (what /execution-parameters advertises); they are decoded and run max_batch at a
        time, so memory stays bounded."""
        metrics, started, limits = self.pools.metrics, time.perf_counter(), self.handler.limits
        request.out_type = codec.check_accept(request.accept)
        parsed = await self.pools.decode(codec.parse, body, request.content_type, limits, False)
        decode_s, forward_s, chunks = time.perf_counter() - started, 0.0, []
        preprocess = self.handler.preprocess
        for start in range(0, len(parsed), limits.max_batch):
            chunk_started = time.perf_counter()
            inputs = await self.pools.decode(codec.to_inputs, parsed, preprocess, limits, start, start + limits.max_batch)
            decoded_at = time.perf_counter()
            if self.batcher is not None:
                chunks.append(await self.batcher.run(inputs))
            else:
                chunks.append(await self.pools.infer(self.handler.classifier.probabilities, inputs))
            decode_s += decoded_at - chunk_started
            forward_s += time.perf_counter() - decoded_at
        metrics.stage("decode", self.name, decode_s)
        metrics.stage("forward", self.name, forward_s)
        encode_started = time.perf_counter()
        request.batch, request.lines = parsed.batch, parsed.lines
        out = self.handler.default_output_fn(torch.cat(chunks), request)
        metrics.stage("encode", self.name, time.perf_counter() - encode_started)
        return out

    @property
    def healthy(self) -> bool:
        """False once the micro-batcher's thread has died (every request would time out)."""
        return self.batcher is None or self.batcher.alive

    def context(self, headers: dict[str, str]) -> Context:
        return Context(self.name, str(self.model_dir), gpu_id(self.settings), headers)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


class SingleModel:
    """The one model of a plain endpoint, loaded in the background at start-up."""

    multi_model = False

    def __init__(self, settings: Settings, pools: Pools):
        self.settings, self.pools = settings, pools
        self.state, self.reason, self.model = "loading", None, None
        self.started = time.monotonic()

    def load(self) -> None:
        try:
            self.model = HostedModel("model", self.settings.model_dir, str(self.settings.model_dir), self.settings, self.pools)
        except ConfigError as err:
            self.reason = str(err)
            log.error("MODEL LOAD FAILED: %s", self.reason)
        except Exception as err:  # noqa: BLE001 - the user's model_fn can raise anything
            self.reason = f"{type(err).__name__}: {err}"
            log.exception("MODEL LOAD FAILED: %s", self.reason)
        else:
            classifier = self.model.handler.classifier
            log.info(
                "model ready in %.1f s (%s, device %s%s%s)",
                time.monotonic() - self.started,
                "user hooks: " + ", ".join(sorted(self.model.handler.hooks)) if self.model.handler.hooks else "default handlers",
                self.settings.device,
                f", precision {classifier.precision.name}" if classifier is not None else "",
                ", micro-batched" if self.model.batcher is not None else "",
            )
        self.state = "ready" if self.model is not None else "failed"

    def ping(self) -> tuple[int, dict]:
        if self.state == "ready" and self.model.healthy:
            return 200, {"status": "healthy"}
        if self.state == "ready":
            return 500, {"status": "unhealthy", "error": "the micro-batcher has stopped"}
        if self.state == "loading":
            return 503, {"status": "loading"}
        return 500, {"status": "failed", "error": redact_paths(self.reason)}

    def get(self, name: str | None = None) -> HostedModel:
        if self.model is None:
            raise NotReady("model is still loading" if self.state == "loading" else f"model failed to load: {redact_paths(self.reason)}")
        return self.model

    def loaded(self) -> list[HostedModel]:
        return [self.model] if self.model is not None else []


class MultiModel:
    """Multi-model endpoint: models loaded by name, least recently used unloaded first
    when the memory budget would be exceeded."""

    multi_model = True

    def __init__(self, settings: Settings, pools: Pools):
        self.settings, self.pools = settings, pools
        self.models: OrderedDict[str, HostedModel] = OrderedDict()
        self.lock = asyncio.Lock()
        self.evictions = 0  # read by serve.metrics.HostCollector

    def ping(self) -> tuple[int, dict]:
        return 200, {"status": "healthy"}

    def get(self, name: str | None) -> HostedModel:
        if not name:
            raise BadInput(f"multi-model endpoint: name the model ({TARGET_MODEL_HEADER} header or /models/<name>/invoke)")
        if name not in self.models:
            raise NotFound(f"model {name!r} is not loaded")
        self.models.move_to_end(name)
        return self.models[name]

    def loaded(self) -> list[HostedModel]:
        return list(self.models.values())

    def used(self) -> int:
        return sum(model.nbytes for model in self.models.values())

    async def load(self, name: str, url: str) -> None:
        try:
            archive.check_model_name(name)  # it becomes a directory name
        except ValueError as err:
            raise BadInput(str(err)) from None
        path = Path(url)
        root = self.settings.models_root
        async with self.lock:
            if name in self.models:
                raise Conflict(f"model {name!r} is already loaded")
            # SageMaker puts a multi-model endpoint's models under /opt/ml/models; a url
            # elsewhere would let a client load any directory of the container.
            if not path.is_absolute() or ".." in path.parts or not path.is_relative_to(root):
                raise BadInput(f"model url {url!r} must be a directory under {root}")
            if not await run_in_threadpool(path.is_dir):
                raise NotFound(f"model url {url!r} is not a directory in the container")
            need = await run_in_threadpool(dir_bytes, path)  # off the event loop: /ping stays prompt
            budget = self.settings.mme_budget_bytes
            if need > budget:
                raise InsufficientMemory(
                    f"model {name!r} needs ~{need >> 20} MiB; the budget is {budget >> 20} MiB (SM_VISION_MME_MEMORY_MB)"
                )
            try:
                model = await run_in_threadpool(HostedModel, name, path, url, self.settings, self.pools)
            except ConfigError as err:
                log.error("loading model %s from %s failed: %s", name, url, err)
                raise BadInput(f"cannot load model {name!r}: {redact_paths(str(err))}") from None
            # Only a model that loaded makes room: a failed load unloads nothing.
            while self.models and self.used() + model.nbytes > budget:
                evicted, old = self.models.popitem(last=False)
                old.close()
                self.evictions += 1
                log.info("unloaded least recently used model %s to fit %s", evicted, name)
            gc.collect()
            self.models[name] = model
            log.info("loaded model %s from %s (~%d MiB)", name, url, model.nbytes >> 20)

    def unload(self, name: str) -> None:
        model = self.models.pop(name, None)
        if model is None:
            raise NotFound(f"model {name!r} is not loaded")
        model.close()
        gc.collect()


def create_hosting(settings: Settings, pools: Pools) -> SingleModel | MultiModel:
    return MultiModel(settings, pools) if settings.multi_model else SingleModel(settings, pools)

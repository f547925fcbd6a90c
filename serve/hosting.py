"""Model hosting: one interface (`get`, `ping`, `close`) for the single model of a
plain endpoint and the named models of a multi-model endpoint.

A HostedModel is one model directory made ready: model.tar.gz extracted, the user's
script found and imported, model_fn called once, warmed up. `invoke` is the one path
of a request, for /invocations, batch transform and the MMS backend alike: decode
(decode pool) -> forward (inference pool, directly or through the micro-batcher) ->
encode, a chunk of items at a time (serve.handler); the answered request is then
offered to the capture (serve.capture), when it is on.

Everything here reads the resolved ServeConfig (ServeConfig.resolve): no setting has a
default of its own in this module.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from container import ConfigError, ServeConfig
from container.attributes import HEADER as CUSTOM_ATTRIBUTES_HEADER
from container.attributes import RequestOptions, parse_pairs
from serve import archive
from serve.access_log import escape_every_log
from serve.archive import ExtractLimits
from serve.decode_pool import DecodePool
from serve.errors import BadInput, Conflict, InsufficientMemory, NotFound, NotReady, redact_paths
from serve.handler import Call, Handler, hook_accept
from serve.hooks import Context, UserHooks, find_script, safe_module_name
from serve.machine import FULL_IMAGE, has_torch, torch_missing
from serve.model import prepare_model_dir
from serve.pools import Pools
from serve.runner import BatchRunner
from vision.artifact import INT8_FILE, ONNX_FILE, WEIGHTS_FILE

log = logging.getLogger("serve")

TARGET_MODEL_HEADER = "x-amzn-sagemaker-target-model"
INFERENCE_ID_HEADER = "x-amzn-sagemaker-inference-id"
SESSION_ID_HEADER = "x-amzn-sagemaker-session-id"


def admission_bytes(path: Path) -> int:
    """The memory MME admission expects a model dir to take: its size on disk, its code/
    aside, counting one copy of the network. The trainer writes it up to three times
    (model.pt, model.onnx, model.int8.onnx) and an engine loads one of them, so charging
    every copy would refuse models that fit. Once loaded, the model's own nbytes counts."""
    on_disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and "code" not in f.relative_to(path).parts[:1])
    copies = [(path / name).stat().st_size for name in (WEIGHTS_FILE, ONNX_FILE, INT8_FILE) if (path / name).is_file()]
    return on_disk - sum(copies) + max(copies, default=0)


def load_handler(name: str, model_dir: Path, config: ServeConfig, scratch: Path, pool: DecodePool | None = None) -> Handler:
    """Everything start-up does for one model: find and import the script, model_fn, warm-up."""
    script = find_script(model_dir, config.program, config.code_dirs())
    if script and not has_torch():
        raise torch_missing(f"the model comes with {script.name} (a user's inference.py runs on torch)")
    hooks = UserHooks.load(script, safe_module_name(name)) if script else None
    if hooks:
        escape_every_log()  # log handlers the script added at import escape client text too
    return Handler.load(model_dir, hooks, Context(name, str(model_dir), config.gpu_id), config, scratch, pool)


def extras_need_torch() -> str:
    """Why our classifier answers no explain, embedding, OOD score or TTA here."""
    return f"explain, output=embedding, ood and tta need torch, which this serving image leaves out: serve the model with {FULL_IMAGE}"


class HostedModel:
    """One loaded model and the pools that run it."""

    def __init__(self, name: str, model_dir: Path, url: str, config: ServeConfig, pools: Pools, admit=None):
        """`admit(model_dir)` (multi-model admission) runs on the model's files, extracted
        from model.tar.gz if need be, before anything is loaded; a load that fails, or is
        refused, leaves no extracted copy behind."""
        started = time.perf_counter()
        self.name, self.url, self.config, self.pools = name, url, config, pools
        # The name becomes a directory: SageMaker's model-name pattern only (serve.archive).
        self.scratch = config.scratch_path / archive.check_model_name(name)
        self.model_dir = prepare_model_dir(model_dir, self.scratch, ExtractLimits.from_config(config))
        try:
            if admit is not None:
                admit(self.model_dir)
            self._load(config, pools)
        except BaseException:
            self.remove_extracted()
            raise
        self.load_seconds = time.perf_counter() - started  # read by serve.metrics.HostCollector

    def _load(self, config: ServeConfig, pools: Pools) -> None:
        self.handler = load_handler(self.name, self.model_dir, config, self.scratch, pools.images)
        self.batcher = None
        if self.handler.plain and config.micro_batching:
            self.batcher = BatchRunner(
                self.handler.classifier.probabilities,
                config.max_batch_size,
                config.max_batch_delay_ms,
                executor=pools.inference,
                concurrency=config.workers,
                observe=pools.metrics.batch_rows(self.name),
            )
        # Per-request options (custom attributes) for our classifier served without hooks;
        # a user's hooks get the attributes in their context instead.
        self.defaults = config.request_defaults if self.handler.plain else RequestOptions()
        self.job_attributes = parse_pairs(config.custom_attributes, "SM_VISION_CUSTOM_ATTRIBUTES")
        self.extras = None
        self._extras_lock = threading.Lock()
        if self.handler.plain and self.handler.classifier.engine == "torch":
            self.prepared_extras()  # torch is loaded already: at once, as the plain path
        if not self.defaults.plain_forward:  # every request asks for extras: set them up now
            try:
                self.prepared_extras().prepare(self.defaults)
            except BadInput as err:
                raise ConfigError(f"SM_VISION_CUSTOM_ATTRIBUTES: {err.message}") from None

    @property
    def nbytes(self) -> int:
        """Memory the model holds: its engine's, and the torch copy the extras may add."""
        return self.handler.nbytes() + (self.extras.nbytes() if self.extras is not None else 0)

    def can_have_extras(self) -> bool:
        """Our classifier without hooks, in an image with torch."""
        return self.handler.plain and has_torch()

    def prepared_extras(self):
        """The per-request extras (serve.extras), made on first use for a model served on
        ONNX Runtime: that imports torch and loads the same weights on torch fp32 (2.4 s
        for a ResNet-50 on two cores), which a server answering plain requests never pays.
        Not on the event loop."""
        with self._extras_lock:
            if self.extras is None:
                if not self.can_have_extras():
                    raise BadInput(extras_need_torch())
                started = time.perf_counter()
                from serve.extras import Extras  # Grad-CAM and the penultimate features need torch

                observe = self.pools.metrics.batch_rows(self.name)
                served = self.handler.classifier
                self.extras = Extras(self.name, served, self.model_dir, self.config, self.pools.inference, self.batcher, observe)
                if self.extras.nbytes():  # a torch copy beside the served engine
                    log.info(
                        "model %s: explain and embeddings on torch fp32 beside %s (~%d MiB, ready in %.1f s, torch's import included)",
                        self.name,
                        served.engine,
                        self.extras.nbytes() >> 20,
                        time.perf_counter() - started,
                    )
            return self.extras

    async def invoke(self, body: bytes, request: Call) -> tuple[bytes, str]:
        """decode -> forward -> encode, a chunk at a time: a real-time request is one chunk,
        a batch-transform request as many as its records need (memory stays bounded).
        Nothing of ours runs between this and the forward: the pools and the batcher hand
        back futures, awaited here."""
        handler, decoders, outputs = self.handler, self.pools.decoders, []
        extras = self.extras
        if extras is None and not request.options.plain_forward:
            extras = await run_in_threadpool(self.prepared_extras)
            extras.check(request.options)  # before any decoding, as call() does once they exist
        decode_s = forward_s = 0.0
        try:
            started = time.perf_counter()
            data = await asyncio.wrap_future(decoders.submit(handler.decode, body, request))
            while True:
                decoded_at = time.perf_counter()
                decode_s += decoded_at - started
                if not request.options.plain_forward:
                    outputs.append(await extras.forward(data, request.options))
                elif self.batcher is not None:
                    outputs.append(await self.batcher.run(data))
                else:
                    outputs.append(await asyncio.wrap_future(self.pools.inference.submit(handler.predict, data, request)))
                started = time.perf_counter()
                forward_s += started - decoded_at
                if not handler.more(request):
                    break
                data = await asyncio.wrap_future(decoders.submit(handler.decode_more, request))
        finally:  # the stages that finished, also when a later one failed
            if decode_s:
                self.pools.metrics.stage("decode", self.name, decode_s)
            if forward_s:
                self.pools.metrics.stage("forward", self.name, forward_s)
        if request.options.extra_fields:  # a PNG, an embedding: off the event loop
            out = await asyncio.wrap_future(decoders.submit(extras.encode, handler, outputs, request))
        else:
            out = handler.encode(handler.join(outputs), request)
        self.pools.metrics.stage("encode", self.name, time.perf_counter() - started)
        self.pools.capture.offer(self.name, body, request.content_type, request.context.request_headers, out)
        return out

    @property
    def healthy(self) -> bool:
        """False once the micro-batcher's thread has died (every request would time out)."""
        return (self.batcher is None or self.batcher.alive) and (self.extras is None or self.extras.alive)

    def remove_extracted(self) -> None:
        if self.model_dir == self.scratch:  # extracted from model.tar.gz for this model only
            shutil.rmtree(self.scratch, ignore_errors=True)

    def retire(self) -> None:
        """Unloaded or evicted (multi-model): the batcher stops, and nothing of the model
        stays behind: its extracted copy, its user module, its metric series."""
        self.close()
        self.remove_extracted()
        sys.modules.pop(safe_module_name(self.name), None)
        self.pools.metrics.forget(self.name)

    def call(self, headers: dict[str, str], top_k: int | None = None, request_id: str | None = None, deadline=None) -> Call:
        """A request as the steps carry it (`headers` with lower-case names): its types, the
        context the user's hooks see, and the custom attributes, parsed once here: the
        request's own over SM_VISION_CUSTOM_ATTRIBUTES, key by key."""
        sent = headers.get(CUSTOM_ATTRIBUTES_HEADER.lower())
        try:
            pairs = parse_pairs(sent)
            options = self.defaults.updated(pairs) if self.handler.plain else self.defaults
        except ConfigError as err:
            raise BadInput(str(err)) from None
        if self.extras is not None:
            self.extras.check(options)
        elif not options.plain_forward and not self.can_have_extras():
            raise BadInput(extras_need_torch())
        context = Context(
            self.name,
            str(self.model_dir),
            self.config.gpu_id,
            headers,
            custom_attributes=sent if sent is not None else self.config.custom_attributes,
            attributes=dict(self.job_attributes + pairs),
            inference_id=headers.get(INFERENCE_ID_HEADER),
            target_model=headers.get(TARGET_MODEL_HEADER) or (self.name if self.config.multi_model else None),
            session_id=headers.get(SESSION_ID_HEADER),
            request_id=request_id,
            content_type=headers.get("content-type"),
            accept=hook_accept(headers.get("accept")),
        )
        call = Call(headers.get("content-type"), headers.get("accept"), context, top_k, options=options)
        if deadline is not None:
            call.deadline = deadline
        return call

    def close(self) -> None:
        if self.handler.classifier is not None:
            self.handler.classifier.close()  # a guard still running in the background stops
        if self.batcher is not None:
            self.batcher.close()
        if self.extras is not None:
            self.extras.close()


class SingleModel:
    """The one model of a plain endpoint, loaded in the background at start-up."""

    multi_model = False

    def __init__(self, config: ServeConfig, pools: Pools):
        self.config, self.pools = config, pools
        self.state, self.reason, self.model = "loading", None, None
        self.started = time.monotonic()

    def load(self) -> None:
        try:
            path = self.config.model_path
            self.model = HostedModel("model", path, str(path), self.config, self.pools)
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
                self.config.device,
                f", {classifier.describe()}" if classifier is not None else "",
                ", micro-batched" if self.model.batcher is not None else "",
            )
        self.state = "ready" if self.model is not None else "failed"

    def ping(self) -> tuple[int, dict]:
        problem = self.pools.problem()
        if self.state == "ready" and self.model.healthy and problem is None:
            return 200, {"status": "healthy"}
        if self.state == "ready":
            return 500, {"status": "unhealthy", "error": problem or "the micro-batcher has stopped"}
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

    def __init__(self, config: ServeConfig, pools: Pools):
        self.config, self.pools = config, pools
        self.models: OrderedDict[str, HostedModel] = OrderedDict()
        self.lock = asyncio.Lock()
        self.evictions = 0  # read by serve.metrics.HostCollector

    def ping(self) -> tuple[int, dict]:
        problem = self.pools.problem()
        return (200, {"status": "healthy"}) if problem is None else (500, {"status": "unhealthy", "error": problem})

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
        root = self.config.models_path
        async with self.lock:
            if name in self.models:
                raise Conflict(f"model {name!r} is already loaded")
            # SageMaker puts a multi-model endpoint's models under /opt/ml/models; a url
            # elsewhere would let a client load any directory of the container.
            if not path.is_absolute() or ".." in path.parts or not path.is_relative_to(root):
                raise BadInput(f"model url {url!r} must be a directory under {root}")
            if not await run_in_threadpool(path.is_dir):
                raise NotFound(f"model url {url!r} is not a directory in the container")
            budget = self.config.mme_budget_bytes

            def admit(model_dir: Path) -> None:
                need = admission_bytes(model_dir)
                if need > budget:
                    raise InsufficientMemory(
                        f"model {name!r} needs ~{need >> 20} MiB; the budget is {budget >> 20} MiB (SM_VISION_MME_MEMORY_MB)"
                    )

            try:
                # Off the event loop (extraction, admission, load): /ping stays prompt.
                model = await run_in_threadpool(HostedModel, name, path, url, self.config, self.pools, admit)
            except ConfigError as err:
                log.error("loading model %s from %s failed: %s", name, url, err)
                raise BadInput(f"cannot load model {name!r}: {redact_paths(str(err))}") from None
            # Only a model that loaded makes room: a failed load unloads nothing.
            while self.models and self.used() + model.nbytes > budget:
                evicted, old = self.models.popitem(last=False)
                await run_in_threadpool(old.retire)
                self.evictions += 1
                log.info("unloaded least recently used model %s to fit %s", evicted, name)
            gc.collect()
            self.models[name] = model
            classifier = model.handler.classifier
            described = f", {classifier.describe()}" if classifier is not None else ""
            log.info("loaded model %s from %s (~%d MiB%s)", name, url, model.nbytes >> 20, described)

    async def unload(self, name: str) -> None:
        model = self.models.pop(name, None)
        if model is None:
            raise NotFound(f"model {name!r} is not loaded")
        await run_in_threadpool(model.retire)  # removing its files may take a while: off the event loop
        gc.collect()


def create_hosting(config: ServeConfig, pools: Pools) -> SingleModel | MultiModel:
    return MultiModel(config, pools) if config.multi_model else SingleModel(config, pools)

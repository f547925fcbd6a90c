"""Prometheus metrics of the default server, exposed as GET /metrics on the serving port.

Three sources feed one exposition (docs/observability.md lists every metric):
- per request, from serve.access_log.RequestLog (the outermost middleware): count by
  route, model and status class, whole-request latency, requests in flight;
- per stage, from the model's invoke: decode, forward and encode latency, micro-batch sizes;
- from the capture (serve.capture): requests captured or dropped, records written or failed;
- at scrape time, read from the model host (HostCollector): model state and load time,
  loaded models and their memory, evictions, queue depths, GPU memory; plus the
  process's RSS and CPU from prometheus_client's ProcessCollector.

The per-request work is a few dict lookups and histogram observations (a few
microseconds against milliseconds of inference). Everything else runs only when
someone scrapes.

When PROMETHEUS_MULTIPROC_DIR is set (the variable prometheus_client itself reads; set
it before the server starts whenever more than one server process shares a port), the
request and stage metrics are written to memory-mapped files there and /metrics sums
them over every process (prometheus_client's multiprocess mode). The scrape-time
gauges then describe the process that answered the scrape.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREFIX = "sm_vision"
MULTIPROC_ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
# Starlette's Request shares the ASGI scope, so a route names the model it resolved
# here and the middleware labels the request with it (never a name a client made up).
MODEL_SCOPE_KEY = "sm_vision.model"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Route templates, so paths that carry a model name count under one label.
_FIXED_ROUTES = frozenset({"/ping", "/invocations", "/execution-parameters", "/models", "/metrics"})


def route_label(path: str) -> str:
    """The route template a path belongs to; 'other' for anything unrouted (bounded labels)."""
    if path in _FIXED_ROUTES:
        return path
    if path.startswith("/predictions/") and path.count("/") == 2:
        return "/predictions/{name}"
    if path.startswith("/models/"):
        slashes = path.count("/")
        if slashes == 2:
            return "/models/{name}"
        if slashes == 3 and path.endswith("/invoke"):
            return "/models/{name}/invoke"
    return "other"


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def note_model(scope: dict, name: str) -> None:
    """Called by a route once it has resolved the model a request is for."""
    scope[MODEL_SCOPE_KEY] = name


class ServerMetrics:
    """The request and stage metrics, and the registry /metrics exposes."""

    enabled = True

    def __init__(self, multiprocess_dir: str | None = None):
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        # In multiprocess mode the values live in files; the metric objects then belong
        # to no registry and MultiProcessCollector reads them all back at scrape time.
        owner = None if multiprocess_dir else self.registry
        if multiprocess_dir:
            MultiProcessCollector(self.registry, path=multiprocess_dir)
        ProcessCollector(registry=self.registry)

        def histogram(name, doc, labels, buckets=LATENCY_BUCKETS):
            return Histogram(f"{PREFIX}_{name}", doc, labels, registry=owner, buckets=buckets)

        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests answered, by route, model and status class",
            ["route", "model", "status_class"],
            registry=owner,
        )
        self.request_seconds = histogram("request_duration_seconds", "Whole-request latency, first byte in to last byte out", ["route"])
        self.in_flight = Gauge(f"{PREFIX}_requests_in_flight", "Requests being handled now", registry=owner, multiprocess_mode="livesum")
        self.stage_seconds = {
            stage: histogram(f"{stage}_duration_seconds", doc, ["model"])
            for stage, doc in (
                ("decode", "Request body to input tensor (default handlers), including the wait for a decode thread"),
                ("forward", "Model forward pass per request, including the wait for an inference worker or a micro-batch"),
                ("encode", "Probabilities to the response body (default handlers)"),
            )
        }
        self.batch_size = histogram("batch_size", "Rows per micro-batched forward pass", ["model"], BATCH_BUCKETS)
        self.capture_records = Counter(
            f"{PREFIX}_capture_records",
            "Requests sampled for capture (SM_VISION_CAPTURE_PERCENT): captured (queued for the writer), or dropped (the queue was full)",
            ["model", "outcome"],
            registry=owner,
        )
        self.capture_writes = Counter(
            f"{PREFIX}_capture_writes",
            "Captured records by destination (local, s3): written, or failed (a full disk, S3 refusing)",
            ["destination", "outcome"],
            registry=owner,
        )
        # labels() validates and locks on every call: keep the children it returns.
        self._children: dict[tuple, object] = {}

    @classmethod
    def from_env(cls, enabled: bool, environ=None) -> ServerMetrics | NoMetrics:
        environ = os.environ if environ is None else environ
        if not enabled:
            return NoMetrics()
        return cls(environ.get(MULTIPROC_ENV_VAR) or None)

    def _child(self, metric, *labels):
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- per request (serve.access_log.RequestLog) ---
    def request_started(self) -> None:
        self.in_flight.inc()

    def request_finished(self, route: str, model: str, status: int, seconds: float) -> None:
        self.in_flight.dec()
        self._child(self.requests, route, model, status_class(status)).inc()
        self._child(self.request_seconds, route).observe(seconds)

    # --- per stage (the model's invoke) ---
    def stage(self, stage: str, model: str, seconds: float) -> None:
        self._child(self.stage_seconds[stage], model).observe(seconds)

    def batch_rows(self, model: str) -> Callable[[int], None]:
        """What the micro-batcher calls with the rows of each forward it runs."""
        return self._child(self.batch_size, model).observe

    def forget(self, model: str) -> None:
        """Drop every series labelled with `model` (unloaded from a multi-model endpoint),
        so a stream of loads and unloads does not grow the exposition without bound."""
        for metric in (self.requests, *self.stage_seconds.values(), self.batch_size, self.capture_records):
            position = 1 + metric._labelnames.index("model")  # prometheus_client keeps the names there
            for key in [key for key in self._children if key[0] == id(metric) and key[position] == model]:
                with contextlib.suppress(KeyError):
                    metric.remove(*key[1:])
                del self._children[key]

    # --- capture (serve.capture) ---
    def capture(self, model: str, outcome: str) -> None:
        self._child(self.capture_records, model, outcome).inc()

    def capture_write(self, destination: str, outcome: str, count: int) -> None:
        self._child(self.capture_writes, destination, outcome).inc(count)

    # --- scrape ---
    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class NoMetrics:
    """SM_VISION_METRICS=false: the same calls, doing nothing, and no /metrics route."""

    enabled = False

    def request_started(self) -> None:
        pass

    def request_finished(self, route: str, model: str, status: int, seconds: float) -> None:
        pass

    def stage(self, stage: str, model: str, seconds: float) -> None:
        pass

    def batch_rows(self, model: str) -> None:
        return None  # the batcher then records nothing

    def forget(self, model: str) -> None:
        pass

    def capture(self, model: str, outcome: str) -> None:
        pass

    def capture_write(self, destination: str, outcome: str, count: int) -> None:
        pass

    def watch(self, collector: Collector) -> None:
        pass


class HostCollector(Collector):
    """Gauges read from the model host when /metrics is scraped, so serving pays nothing.

    `host` is the app's SingleModel or MultiModel, `pools` its thread pools, `device`
    the serving device, e.g. "cuda:0" (GPU memory is reported only on CUDA).
    """

    def __init__(self, host, pools, device: str):
        self.host, self.pools, self.device = host, pools, device

    def _loaded(self) -> list:
        if hasattr(self.host, "models"):  # multi-model registry
            return list(self.host.models.values())
        return [self.host.model] if self.host.model is not None else []

    def collect(self) -> Iterable:
        loaded = self._loaded()
        multi = hasattr(self.host, "models")

        state = GaugeMetricFamily(
            f"{PREFIX}_model_state", "1 for the state each model is in (loading, ready, failed)", labels=["model", "state"]
        )
        if multi:
            for model in loaded:
                state.add_metric([model.name, "ready"], 1)
        else:
            for name in ("loading", "ready", "failed"):
                state.add_metric(["model", name], 1 if self.host.state == name else 0)
        yield state

        load = GaugeMetricFamily(f"{PREFIX}_model_load_duration_seconds", "Seconds the model took to load and warm up", labels=["model"])
        memory = GaugeMetricFamily(f"{PREFIX}_model_memory_bytes", "Bytes of parameters and buffers a loaded model holds", labels=["model"])
        engine = GaugeMetricFamily(
            f"{PREFIX}_model_engine",
            "1 for the engine and precision each model's forward runs on (our classifiers, and users' modules), and the CPU class (docs/serving.md)",
            labels=["model", "engine", "precision", "cpu_class"],
        )
        guard = GaugeMetricFamily(
            f"{PREFIX}_model_guard",
            "1 for the state of the accuracy guard of a reduced precision: running (fp32 serves meanwhile), passed, failed or stopped",
            labels=["model", "precision", "state"],
        )
        for model in loaded:
            load.add_metric([model.name], getattr(model, "load_seconds", 0.0))
            memory.add_metric([model.name], model.nbytes)
            handler = model.handler if hasattr(model, "handler") else None
            served_by = handler.engine() if handler is not None else None
            if served_by is not None:
                engine.add_metric([model.name, *served_by], 1)
            checked = handler.classifier.guard_state() if handler is not None and handler.classifier is not None else None
            if checked is not None:
                guard.add_metric([model.name, *checked], 1)
        yield load
        yield memory
        yield engine
        yield guard
        yield GaugeMetricFamily(f"{PREFIX}_models_loaded", "Models loaded now", value=len(loaded))
        if multi:
            yield GaugeMetricFamily(
                f"{PREFIX}_model_memory_budget_bytes",
                "Multi-model memory budget (SM_VISION_MME_MEMORY_MB)",
                value=self.host.config.mme_budget_bytes,
            )
            yield CounterMetricFamily(
                f"{PREFIX}_model_evictions", "Models unloaded to make room for another", value=getattr(self.host, "evictions", 0)
            )

        queue = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Work waiting for a thread or a micro-batch", labels=["queue"])
        queue.add_metric(["decode"], _pending(self.pools.decoders))
        queue.add_metric(["inference"], _pending(self.pools.inference))
        queue.add_metric(["batch"], sum(model.batcher.queue.qsize() for model in loaded if getattr(model, "batcher", None)))
        yield queue

        if self.device.startswith("cuda"):
            yield from _gpu_memory(self.device)


def _pending(executor) -> int:
    # ThreadPoolExecutor keeps its backlog in _work_queue (stable since Python 3.2).
    work = getattr(executor, "_work_queue", None)
    return work.qsize() if work is not None else 0


def _gpu_memory(device: str) -> Iterable:
    import torch

    labels = [str(device)]
    try:
        free, total = torch.cuda.mem_get_info(device)
        allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    except RuntimeError as err:  # a lost or reset device must not break the scrape
        log.warning("cannot read GPU memory of %s: %s", device, err)
        return
    for name, doc, value in (
        ("allocated", "Bytes of tensors PyTorch holds on the GPU", allocated),
        ("reserved", "Bytes PyTorch's caching allocator has reserved on the GPU", reserved),
        ("used", "Bytes in use on the GPU by every process (total - free)", total - free),
        ("total", "The GPU's memory", total),
    ):
        family = GaugeMetricFamily(f"{PREFIX}_gpu_memory_{name}_bytes", doc, labels=["device"])
        family.add_metric(labels, value)
        yield family

"""ServeConfig: every setting of `serve`, read from the environment SageMaker (or the
user) gives a serving container, and overridden by `serve` flags.

Each field names its environment variable, its default and what it means; the
reference table in docs/serving.md is generated from these fields. Values are parsed
strictly (container.parse): a typo fails at start-up naming the variable. No torch
here, so host tools and tests read it freely.

This is the one settings object of the server, the MMS backend and batch transform.
A few settings are left to the machine (`auto` device, workers, batch shape, MME
memory): `resolve(machine)` decides them once, here, next to the settings they fill,
from a `Machine` (facts gathered by serve.machine) and returns a ServeConfig with
none of them left open. Each default is written once, in its field below; other code
reads the setting (or the class attribute, e.g. `ServeConfig.max_image_pixels`, for
the default).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from container import settings
from container.attributes import RequestOptions, request_defaults
from container.contract import DEFAULT_ROOT, ROOT_ENV_VAR, SageMakerPaths
from container.parse import ConfigError
from container.settings import setting

BACKENDS = ("asgi", "mms")
BATCHING = ("auto", "on", "off")
LOG_LEVELS = ("debug", "info", "warning", "error")
ENGINES = ("auto", "torch", "onnxruntime")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
ENGINE_PRECISIONS = {"torch": ("auto", "fp32", "bf16", "fp16"), "onnxruntime": ("auto", "fp32", "int8")}  # docs/serving.md
ACCESS_LOG_FORMATS = ("log", "json", "off")  # serve.access_log.LOG_FORMATS
# Our classifier's answer: labels = {"predicted_label", "confidence", "probabilities", "top_k"}
# (multi-label: "predicted_labels" above each class's threshold); prediction = the built-in
# Image Classification algorithm's {"prediction": [p0, p1, ...]} in class order.
RESPONSE_SHAPES = ("labels", "prediction")


@dataclass(frozen=True)
class ServeConfig:
    # --- server ---
    backend: str = setting(
        "SM_VISION_SERVE_BACKEND", "asgi", "asgi (our server) or mms (multi-model-server, as AWS's images)", "--backend", BACKENDS
    )
    host: str = setting("SM_VISION_BIND_HOST", "0.0.0.0", "address to listen on", "--host")
    port: int = setting("SAGEMAKER_BIND_TO_PORT", 8080, "TCP port to listen on", "--port", minimum=1, maximum=65535)
    log_level: str = setting("SM_VISION_LOG_LEVEL", "info", "log level", "--log-level", LOG_LEVELS)
    opt_ml: str = setting(ROOT_ENV_VAR, DEFAULT_ROOT, "root of SageMaker's /opt/ml tree (moved for tests and local runs)")
    model_dir: str | None = setting("SM_VISION_MODEL_DIR", None, "model directory (default /opt/ml/model)", "--model-dir")
    scratch_dir: str = setting(
        "SM_VISION_SCRATCH_DIR", "/tmp/sm-vision-models", "where model.tar.gz files are extracted, one folder per model"
    )
    device: str = setting("SM_VISION_DEVICE", "auto", "auto, cpu, cuda or cuda:N", "--device")
    engine: str = setting(
        "SM_VISION_ENGINE",
        "auto",
        "what runs our classifier: torch, onnxruntime (CPU), or auto = by the CPU's class (docs/serving.md); a user's "
        "inference.py runs on torch, with its model's forward on ONNX Runtime fp32 once checked unless this is torch",
        "--engine",
        ENGINES,
    )
    precision: str = setting(
        "SM_VISION_PRECISION",
        "auto",
        "our classifier's forward precision: fp32, bf16, fp16 (torch) or int8 (onnxruntime); auto = the engine's fastest, "
        "kept only if it agrees with fp32 at warm-up",
        "--precision",
        PRECISIONS,
    )
    wait_for_guard: bool = setting(
        "SM_VISION_WAIT_FOR_GUARD",
        False,
        "true: /ping turns ready only after the accuracy guard of ONNX Runtime int8 (64 fp32 and 64 int8 forwards) has run, so "
        "the first request already gets the final precision; false: ready on fp32 at once, int8 once the guard passes in the "
        "background (docs/serving.md). torch's bf16/fp16 guard always runs before ready",
    )
    threads: int | None = setting(
        "SM_VISION_THREADS",
        None,
        "intra-op threads of each concurrent forward, torch's and ONNX Runtime's (default: the container's CPUs / the workers)",
        "--threads",
        minimum=1,
    )
    workers: int | None = setting(
        "SAGEMAKER_MODEL_SERVER_WORKERS",
        None,
        "our classifier: concurrent forward passes (default min(CPUs, 4), 1 on GPU); a user's model: that many "
        "independent worker processes, each calling model_fn once",
        "--workers",
        minimum=1,
    )
    timeout_s: int = setting("SAGEMAKER_MODEL_SERVER_TIMEOUT", 60, "seconds one inference may take before a 504", minimum=1)
    max_payload_mb: int = setting("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, "largest request body in MiB (413 above)", minimum=1)
    metrics: bool = setting("SM_VISION_METRICS", True, "serve Prometheus metrics at GET /metrics")
    access_log: str = setting(
        "SM_VISION_ACCESS_LOG", "log", "one access-log line per request: a log line, a JSON line, or none", choices=ACCESS_LOG_FORMATS
    )
    # --- the user's inference script ---
    program: str | None = setting(
        "SAGEMAKER_PROGRAM", None, "the user's inference script (default inference.py), found in model/code or the submit directory"
    )
    submit_directory: str | None = setting(
        "SAGEMAKER_SUBMIT_DIRECTORY", None, "where the SDK put the user's code (file://DIR, or s3://... repacked into model/code)"
    )
    # --- endpoint kinds ---
    multi_model: bool = setting("SAGEMAKER_MULTI_MODEL", False, "multi-model endpoint: models loaded by name through /models")
    mme_memory_mb: int | None = setting(
        "SM_VISION_MME_MEMORY_MB", None, "multi-model memory budget in MiB (default 70% of the container's memory)", minimum=1
    )
    batch: bool = setting("SAGEMAKER_BATCH", False, "a batch transform job (reported by /execution-parameters)")
    max_concurrent_transforms: int | None = setting(
        "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", None, "batch transform: parallel requests (default: the workers)", minimum=1
    )
    batch_strategy: str | None = setting("SAGEMAKER_BATCH_STRATEGY", None, "batch transform: MULTI_RECORD (default) or SINGLE_RECORD")
    # --- our classifier ---
    top_k: int = setting("SM_VISION_TOP_K", 5, "classes in top_k (per request: ?top_k= or X-Top-K)", "--top-k", minimum=1)
    response_shape: str = setting(
        "SM_VISION_RESPONSE_SHAPE",
        "labels",
        "our classifier's answer: labels, or the built-in algorithm's {\"prediction\": [p0, p1, ...]} (per request: Accept: "
        "application/json; shape=prediction)",
        "--response-shape",
        RESPONSE_SHAPES,
    )
    batching: str = setting(
        "SM_VISION_BATCHING",
        "auto",
        "dynamic micro-batching of concurrent requests into one forward; auto = on (CPU and GPU), off = one request per forward",
        "--batching",
        BATCHING,
    )
    max_batch_size: int | None = setting(
        "SM_VISION_MAX_BATCH_SIZE", None, "micro-batch rows (default 4 on CPU, 16 on GPU)", "--max-batch-size", minimum=1
    )
    max_batch_delay_ms: float | None = setting(
        "SM_VISION_MAX_BATCH_DELAY_MS",
        None,
        "how long a micro-batch waits to fill while a forward slot is free (default 0 on CPU, 5 on GPU)",
        "--max-batch-delay-ms",
        minimum=0,
    )
    custom_attributes: str | None = setting(
        "SM_VISION_CUSTOM_ATTRIBUTES",
        None,
        "X-Amzn-SageMaker-Custom-Attributes for every request that sends none (batch transform sends none), "
        "e.g. explain=gradcam,overlay=false or abstain_below=0.6; a request's own header wins key by key",
    )
    # --- request limits ---
    max_image_pixels: int = setting("SM_VISION_MAX_IMAGE_PIXELS", 40_000_000, "largest image (width x height) decoded", minimum=1)
    max_batch_items: int = setting("SM_VISION_MAX_BATCH_ITEMS", 64, "most images in one request", minimum=1)
    url_fetch: bool = setting("SM_VISION_URL_FETCH", True, 'fetch {"url": ...} inputs (public addresses only)')
    url_allow: str | None = setting(
        "SM_VISION_URL_ALLOW",
        None,
        "comma-separated entries the URL guard lets through, each with its ports: host or CIDR alone covers 80 and 443; "
        "host:port, CIDR:port, [v6]:port, host:* (docs/security.md)",
    )
    url_timeout_s: float = setting(
        "SM_VISION_URL_TIMEOUT_S", 5.0, "wall-clock deadline of one URL fetch in seconds (connect, redirects, body)", minimum=0.1
    )
    jpeg_draft: bool = setting(
        "SM_VISION_JPEG_DRAFT",
        False,
        "decode JPEGs at the smallest DCT scale that keeps twice the model's resize size (faster on large photos; pixels differ slightly)",
    )
    max_aspect_ratio: float = setting(
        "SM_VISION_MAX_ASPECT_RATIO", 20.0, "long side / short side of an image; bounds what the short-side resize allocates", minimum=1.0
    )
    max_pending: int = setting(
        "SM_VISION_MAX_PENDING",
        64,
        "requests admitted at once once their body is in (decoding, queued, running); one more gets 503 with Retry-After",
        minimum=1,
    )
    max_model_extract_mb: int = setting(
        "SM_VISION_MAX_MODEL_EXTRACT_MB", 20 * 1024, "largest expanded size of a model.tar.gz in MiB", minimum=1
    )
    header_timeout_s: float = setting(
        "SM_VISION_HEADER_TIMEOUT_S", 15.0, "seconds a connection may take to send a request's headers before it is closed", minimum=0.1
    )
    body_timeout_s: float = setting(
        "SM_VISION_BODY_TIMEOUT_S",
        10.0,
        "seconds a request body may take to arrive, plus one second per SM_VISION_BODY_MIN_RATE_KIB_S KiB received; "
        "past it the answer is 408 and the connection closes",
        minimum=0.1,
    )
    body_min_rate_kib_s: int = setting(
        "SM_VISION_BODY_MIN_RATE_KIB_S",
        64,
        "the slowest a body may arrive (KiB per second) once SM_VISION_BODY_TIMEOUT_S is spent",
        minimum=1,
    )
    max_decode_bytes: int | None = setting(
        "SM_VISION_MAX_DECODE_BYTES",
        None,
        "bytes one decoded image may take (its frame as Pillow stores it, plus a multi-scan JPEG's coefficients); "
        "default what a SM_VISION_MAX_IMAGE_PIXELS RGB image takes (4 bytes a pixel)",
        minimum=1,
    )
    max_jpeg_scans: int = setting(
        "SM_VISION_MAX_JPEG_SCANS", 100, "scans a JPEG may have (encoders write 1-10; each costs a pass over the image)", minimum=1
    )
    max_array_mb: int = setting(
        "SM_VISION_MAX_ARRAY_MB",
        64,
        "largest array a .npy/.npz/CSV/JSON tensor body decodes to, in MiB (at least SAGEMAKER_MAX_PAYLOAD_IN_MB)",
        minimum=1,
    )
    drain_timeout_s: float = setting(
        "SM_VISION_DRAIN_TIMEOUT_S",
        25.0,
        "on SIGTERM, seconds in-flight requests may take to finish before the server exits (keep it below the stop grace)",
        minimum=0.1,
    )
    # --- capture for monitoring (docs/monitoring.md): Data Capture's records, where SageMaker has none ---
    capture_percent: float = setting(
        "SM_VISION_CAPTURE_PERCENT",
        0.0,
        "share of answered requests captured for monitoring, as SageMaker Data Capture writes them (0: off)",
        minimum=0.0,
        maximum=100.0,
    )
    capture_dir: str | None = setting("SM_VISION_CAPTURE_DIR", None, "folder the captured requests are written to")
    capture_s3_uri: str | None = setting(
        "SM_VISION_CAPTURE_S3_URI", None, "s3://bucket/prefix the captured requests are uploaded to, with the endpoint's own role"
    )
    capture_endpoint: str = setting("SM_VISION_CAPTURE_ENDPOINT", "local", "the endpoint's name: the first folder of the capture layout")
    capture_variant: str = setting(
        "SM_VISION_CAPTURE_VARIANT", "AllTraffic", "the variant's name: the second folder (a multi-model endpoint: each model's name)"
    )
    capture_upload_s: float = setting(
        "SM_VISION_CAPTURE_UPLOAD_S",
        60.0,
        "seconds between uploads of captured records to S3 (sooner when 8 MiB are waiting); local files are written every second",
        minimum=1.0,
    )
    capture_queue_mb: int = setting(
        "SM_VISION_CAPTURE_QUEUE_MB",
        64,
        "MiB of captured requests waiting for the writer; past it a sampled request is dropped (counted in /metrics), never slowed",
        minimum=1,
    )

    def __post_init__(self):
        settings.check(self)
        if self.capture_percent and not (self.capture_dir or self.capture_s3_uri):
            raise ConfigError(
                f"SM_VISION_CAPTURE_PERCENT={self.capture_percent:g}: set SM_VISION_CAPTURE_DIR and/or SM_VISION_CAPTURE_S3_URI"
            )
        if self.capture_s3_uri is not None and not (self.capture_s3_uri.startswith("s3://") and self.capture_s3_uri[5:].split("/")[0]):
            raise ConfigError(f"SM_VISION_CAPTURE_S3_URI={self.capture_s3_uri!r}: expected s3://bucket/prefix")
        if self.engine in ENGINE_PRECISIONS and self.precision not in ENGINE_PRECISIONS[self.engine]:
            runs = ", ".join(ENGINE_PRECISIONS[self.engine][1:])
            raise ConfigError(f"SM_VISION_PRECISION={self.precision} with SM_VISION_ENGINE={self.engine}: {self.engine} runs {runs}")
        self.request_defaults  # noqa: B018 - a bad SM_VISION_CUSTOM_ATTRIBUTES fails at start-up, naming it

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None) -> ServeConfig:
        """The environment, then `overrides` (flag values as text, by field name) on top."""
        return settings.load(cls, os.environ if environ is None else environ, overrides)

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables: what a worker process reads back."""
        env = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if value is not None:
                env[spec.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    # --- resolved against the machine ---------------------------------------------------

    def resolve(self, machine: Machine) -> ServeConfig:
        """This config with what it leaves to the machine decided: a concrete device, the
        concurrent forwards, micro-batching on or off and its shape, the MME memory budget
        and the batch-transform parameters. The per-device defaults live here only.

        CPU (measured, docs/benchmarks.md): one forward per core up to 4, each on its share
        of the cores, batches of at most 4 rows with no waiting; a 4-row ResNet-50 forward
        costs about 0.7x per image of a 1-row one, longer batches only lengthen the tail.
        GPU: one forward at a time, 16 rows, 5 ms to fill the device. A worker process
        (several share the machine) runs one request at a time, as MMS's workers do."""
        gpu = machine.device.startswith("cuda")
        workers = 1 if machine.processes > 1 else self.workers or (1 if gpu else min(4, machine.cpus))
        return dataclasses.replace(
            self,
            device=machine.device,
            workers=workers,
            threads=self.threads or machine.forward_threads(workers),
            batching="off" if self.batching == "off" else "on",
            max_batch_size=self.max_batch_size or (16 if gpu else 4),
            max_batch_delay_ms=self.max_batch_delay_ms if self.max_batch_delay_ms is not None else (5.0 if gpu else 0.0),
            mme_memory_mb=self.mme_memory_mb or int(machine.memory_bytes * 0.7) >> 20,
            max_concurrent_transforms=self.max_concurrent_transforms or workers,
            batch_strategy=self.batch_strategy or "MULTI_RECORD",
        )

    # --- derived values (one formula each) ---------------------------------------------

    @property
    def paths(self) -> SageMakerPaths:
        return SageMakerPaths(Path(self.opt_ml))

    @property
    def model_path(self) -> Path:
        return Path(self.model_dir) if self.model_dir else self.paths.model_dir

    @property
    def models_path(self) -> Path:
        """Where a multi-model endpoint's models must be (SageMaker mounts them there)."""
        return self.paths.root / "models"

    @property
    def scratch_path(self) -> Path:
        return Path(self.scratch_dir)

    def code_dirs(self) -> tuple[Path, ...]:
        """Where the SDK may have put the user's code besides model/code: a file:// submit
        directory (SDK local mode mounts it at /opt/ml/code; the variable keeps the host path)."""
        submit = self.submit_directory or ""
        if not submit.startswith("file://"):
            return ()  # s3://.../sourcedir.tar.gz: the SDK repacked it into model/code
        return tuple(dict.fromkeys(p for p in (Path(submit[len("file://") :]), self.paths.root / "code") if p.is_dir()))

    @property
    def request_defaults(self) -> RequestOptions:
        """What SM_VISION_CUSTOM_ATTRIBUTES asks of every request (container.attributes)."""
        return request_defaults(self.custom_attributes, "SM_VISION_CUSTOM_ATTRIBUTES")

    @property
    def micro_batching(self) -> bool:
        return self.batching != "off"

    @property
    def gpu_id(self) -> int | None:
        """The GPU this process serves on (what a user hook's context reports); None on CPU."""
        if not self.device.startswith("cuda"):
            return None
        _, _, index = self.device.partition(":")
        return int(index) if index else 0

    @property
    def max_payload_bytes(self) -> int:
        return self.max_payload_mb << 20

    @property
    def max_array_bytes(self) -> int:
        """A tensor body may always decode to what the payload cap lets in (async endpoints raise it)."""
        return max(self.max_array_mb, self.max_payload_mb) << 20

    @property
    def max_model_extract_bytes(self) -> int:
        return self.max_model_extract_mb << 20

    @property
    def capture_queue_bytes(self) -> int:
        return self.capture_queue_mb << 20

    @property
    def mme_budget_bytes(self) -> int | None:
        return None if self.mme_memory_mb is None else self.mme_memory_mb << 20


@dataclass(frozen=True)
class Machine:
    """What the machine tells us (gathered once by serve.machine.probe); ServeConfig.resolve
    turns it into settings. Plain facts, no defaults."""

    device: str  # the device this process serves on: cpu, cuda or cuda:N
    cpus: int  # CPUs this process may use: the container's, divided among `processes`
    memory_bytes: int  # the container's memory: its cgroup limit, else physical memory
    processes: int  # server processes sharing the machine (SAGEMAKER_MODEL_SERVER_WORKERS for a user's model)

    @property
    def decode_threads(self) -> int:
        # A few decodes at once, not one per request, so forwards keep the GIL and the cores.
        return max(2, self.cpus)

    @property
    def decode_workers(self) -> int:
        # Processes for the decodes a thread cannot bound (serve.decode_pool): each holds
        # one decoded frame at most; the threads wait for one until their deadline.
        return min(4, self.decode_threads)

    def forward_threads(self, workers: int) -> int:
        """Intra-op threads of each of `workers` concurrent forwards: its share of the cores."""
        return max(1, self.cpus // workers)

"""`serve`: run the model in /opt/ml/model behind SageMaker's HTTP contract.

    serve                      the default ASGI server (starlette + uvicorn)
    serve --backend mms        multi-model-server + sagemaker-inference, as AWS's images

Settings come from SageMaker's environment (container.ServingEnv) and our own
SM_VISION_* variables; flags override both. See `serve --help`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from container import ConfigError, SageMakerPaths, ServingEnv

log = logging.getLogger("serve")

BACKENDS = ("asgi", "mms")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="asgi (default) or mms; env SM_VISION_SERVE_BACKEND")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=None, help="default SAGEMAKER_BIND_TO_PORT or 8080")
    parser.add_argument("--model-dir", type=Path, default=None, help="default /opt/ml/model (root moved by SM_VISION_OPT_ML)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="concurrent forward passes; default SAGEMAKER_MODEL_SERVER_WORKERS or min(CPUs, 4) (1 on GPU)",
    )
    parser.add_argument(
        "--top-k", type=int, default=None, help="classes in top_k; default SM_VISION_TOP_K or 5 (per request: ?top_k= or X-Top-K)"
    )
    parser.add_argument(
        "--batching", choices=["auto", "on", "off"], default=None, help="dynamic micro-batching; auto = on for GPU; env SM_VISION_BATCHING"
    )
    parser.add_argument("--max-batch-size", type=int, default=None, help="micro-batch rows; env SM_VISION_MAX_BATCH_SIZE, default 16")
    parser.add_argument(
        "--max-batch-delay-ms", type=float, default=None, help="wait for a batch to fill; env SM_VISION_MAX_BATCH_DELAY_MS, default 5"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _env_number(name: str, default, kind=int):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number") from None


def cpu_count() -> int:
    """CPUs this container may use: affinity, capped by a cgroup (v2 or v1) quota."""
    count = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return count
    if quota not in ("max", "-1"):
        count = min(count, max(1, int(int(quota) / int(period))))
    return count


def memory_budget_bytes() -> int:
    """Default MME budget: 70% of the cgroup limit, else of physical memory."""
    total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(path).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 reports "no limit" as a huge number
            total = int(limit)
        break
    total = total or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * 0.7)


def default_top_k() -> int:
    return _env_number("SM_VISION_TOP_K", 5)


def decode_limits(env: ServingEnv):
    """What a request may ask of the decoder (pixels, aspect ratio, batch items, URL
    fetches): the same for the default server and the MMS backend. Strictly parsed:
    SM_VISION_URL_FETCH=flase fails instead of leaving URL fetching on."""
    from container.parse import env_bool, env_float, env_int
    from serve.codec import DecodeLimits
    from serve.fetch import FetchPolicy

    fetch = FetchPolicy(
        max_bytes=env.max_payload_mb * 1024 * 1024,
        timeout_s=env_float(os.environ, "SM_VISION_URL_TIMEOUT_S", 5.0, minimum=0.1),
        allow=FetchPolicy.parse_allow(os.environ.get("SM_VISION_URL_ALLOW")),
        enabled=env_bool(os.environ, "SM_VISION_URL_FETCH", True),
    )
    return DecodeLimits(
        max_pixels=env_int(os.environ, "SM_VISION_MAX_IMAGE_PIXELS", 40_000_000, minimum=1),
        max_batch=env_int(os.environ, "SM_VISION_MAX_BATCH_ITEMS", 64, minimum=1),
        fetch=fetch,
        max_aspect_ratio=env_float(os.environ, "SM_VISION_MAX_ASPECT_RATIO", 20.0, minimum=1.0),
    )


def access_log_format() -> str:
    from serve.access_log import LOG_FORMATS

    value = os.environ.get("SM_VISION_ACCESS_LOG", "").strip().lower() or "log"
    if value not in LOG_FORMATS:
        raise ConfigError(f"SM_VISION_ACCESS_LOG={value!r}: choose one of {', '.join(LOG_FORMATS)}")
    return value


def build_settings(args, env: ServingEnv, paths: SageMakerPaths):
    import torch

    from container.parse import env_bool, env_int
    from serve.app import Settings
    from serve.archive import ExtractLimits
    from train.devices import select_device

    device = select_device(args.device)
    cpus = cpu_count()
    # CPU: one forward per core up to 4 (batch-1 forwards scale better across requests
    # than across intra-op threads; measured 2x req/s on 2 cores), the cores split between them.
    workers = args.workers or env.workers or (1 if device.type == "cuda" else max(1, min(4, cpus)))
    batching = args.batching or os.environ.get("SM_VISION_BATCHING", "auto")
    if batching not in ("auto", "on", "off"):
        raise ConfigError(f"SM_VISION_BATCHING={batching!r}: expected auto, on or off")
    settings = Settings(
        model_dir=args.model_dir or paths.model_dir,
        device=device,
        workers=workers,
        decode_threads=max(2, cpus),
        timeout_s=env.timeout_s,
        max_payload_bytes=env.max_payload_mb * 1024 * 1024,
        top_k=args.top_k or default_top_k(),
        limits=decode_limits(env),
        batching=batching == "on" or (batching == "auto" and device.type == "cuda"),
        max_batch_size=args.max_batch_size or _env_number("SM_VISION_MAX_BATCH_SIZE", 16),
        max_delay_ms=args.max_batch_delay_ms
        if args.max_batch_delay_ms is not None
        else _env_number("SM_VISION_MAX_BATCH_DELAY_MS", 5.0, float),
        program=env.program,
        multi_model=env.multi_model,
        batch_mode=env.batch,
        max_concurrent_transforms=env.max_concurrent_transforms,
        batch_strategy=env.batch_strategy,
        mme_budget_bytes=_env_number("SM_VISION_MME_MEMORY_MB", memory_budget_bytes() >> 20) * 1024 * 1024,
        max_pending=env_int(os.environ, "SM_VISION_MAX_PENDING", 64, minimum=1),
        extract_limits=ExtractLimits(max_bytes=env_int(os.environ, "SM_VISION_MAX_MODEL_EXTRACT_MB", 20 * 1024, minimum=1) << 20),
        precision=os.environ.get("SM_VISION_PRECISION", "auto"),
        metrics=env_bool(os.environ, "SM_VISION_METRICS", True),
        access_log=access_log_format(),
    )
    if settings.top_k < 1 or settings.workers < 1 or settings.max_batch_size < 1:
        raise ConfigError("top_k, workers and max batch size must be >= 1")
    if device.type == "cpu":
        # Each concurrent forward gets its share of the cores, so they do not oversubscribe.
        torch.set_num_threads(max(1, cpus // workers))
    return settings


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    try:
        env = ServingEnv.from_env()
        paths = SageMakerPaths.from_env()
        backend = args.backend or os.environ.get("SM_VISION_SERVE_BACKEND") or "asgi"
        if backend not in BACKENDS:
            raise ConfigError(f"SM_VISION_SERVE_BACKEND={backend!r}: choose one of {', '.join(BACKENDS)}")
        if backend == "mms":
            from serve import mms

            cpus = cpu_count()
            workers = args.workers or env.workers
            mms.start(paths.root, workers, max(1, cpus // (workers or cpus)))
            return
        settings = build_settings(args, env, paths)
    except ConfigError as err:
        log.error("%s", err)
        sys.exit(2)

    import uvicorn

    from container.parse import env_float
    from serve.app import create_app
    from serve.connections import with_header_timeout

    port = args.port or env.port
    log.info("sagemaker-vision serve: http://%s:%d (model %s)", args.host, port, settings.model_dir)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=port,
        log_level=args.log_level,
        access_log=False,  # serve.access writes one structured line per request
        timeout_graceful_shutdown=settings.timeout_s,
        timeout_keep_alive=75,  # above SageMaker's 60 s idle timeout, so it closes first
        # A connection that has not sent a request's headers in time is closed (uvicorn has no such timeout).
        http=with_header_timeout(env_float(os.environ, "SM_VISION_HEADER_TIMEOUT_S", 15.0, minimum=0.1)),
        log_config=None,
    )


if __name__ == "__main__":
    main()

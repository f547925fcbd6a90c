"""`serve`: run the model in /opt/ml/model behind SageMaker's HTTP contract.

    serve                      the default ASGI server (starlette + uvicorn)
    serve --backend mms        multi-model-server, as AWS's images, with the same handlers

Every setting is a field of container.ServeConfig: an environment variable (SageMaker's
SAGEMAKER_* or our SM_VISION_*), some also a flag here, which wins. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path

from container import ConfigError, SageMakerPaths, ServeConfig, cpu_count

log = logging.getLogger("serve")

WORKER_CLAIMS = "worker-claims"  # under the scratch dir: which worker index each process took
SCRATCH = Path("/tmp/sm-vision-models")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for spec in dataclasses.fields(ServeConfig):
        meta = spec.metadata
        if meta["flag"]:
            default = "none" if spec.default is None else spec.default
            parser.add_argument(
                meta["flag"],
                dest=spec.name,
                default=None,
                choices=meta["choices"],
                help=f"{meta['help']}; env {meta['env']}, default {default}",
            )
    return parser


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


def decode_limits(config: ServeConfig):
    """What a request may ask of the decoder (pixels, batch items, URL fetches): the
    same for the default server and the MMS backend."""
    from serve.codec import DecodeLimits
    from serve.fetch import FetchPolicy

    fetch = FetchPolicy(
        max_bytes=config.max_payload_bytes,
        timeout_s=config.url_timeout_s,
        allow=FetchPolicy.parse_allow(config.url_allow),
        enabled=config.url_fetch,
    )
    return DecodeLimits(
        max_pixels=config.max_image_pixels,
        max_batch=config.max_batch_items,
        fetch=fetch,
        max_aspect_ratio=config.max_aspect_ratio,
        jpeg_draft=config.jpeg_draft,
    )


def code_dirs(config: ServeConfig, paths: SageMakerPaths) -> tuple[Path, ...]:
    """Where the SDK may have put the user's code besides model/code: a file:// submit
    directory (SDK local mode mounts it at /opt/ml/code; the variable keeps the host path)."""
    submit = config.submit_directory or ""
    if not submit.startswith("file://"):
        return ()  # s3://.../sourcedir.tar.gz: the SDK repacked it into model/code
    return tuple(dict.fromkeys(p for p in (Path(submit[len("file://") :]), paths.root / "code") if p.is_dir()))


def build_settings(config: ServeConfig, paths: SageMakerPaths, processes: int = 1, worker_index: int = 0):
    import torch

    from serve.archive import ExtractLimits
    from serve.hosting import Settings
    from vision.devices import select_device

    device = select_device(config.device)
    gpu = None
    if device.type == "cuda" and processes > 1 and torch.cuda.device_count() > 1:
        gpu = worker_index % torch.cuda.device_count()  # one GPU per worker, round robin
        device = torch.device("cuda", gpu)
    cpus = max(1, cpu_count() // processes)
    # CPU: one forward per core up to 4, each on its share of the cores (forwards scale
    # better across requests than across intra-op threads, which stall whenever decoding
    # takes a core from one of them); with micro-batching each forward takes a batch.
    # A worker process runs one request at a time, as MMS's workers do.
    workers = 1 if processes > 1 else config.workers or (1 if device.type == "cuda" else max(1, min(4, cpus)))
    mme_mb = config.mme_memory_mb or memory_budget_bytes() >> 20
    settings = Settings(
        model_dir=Path(config.model_dir) if config.model_dir else paths.model_dir,
        scratch=SCRATCH,
        device=device,
        precision=config.precision,
        workers=workers,
        decode_threads=max(2, cpus),
        timeout_s=config.timeout_s,
        max_payload_bytes=config.max_payload_bytes,
        top_k=config.top_k,
        limits=decode_limits(config),
        batching=config.batching != "off",
        **batch_shape(config, device),
        program=config.program,
        code_dirs=code_dirs(config, paths),
        multi_model=config.multi_model,
        batch_mode=config.batch,
        max_concurrent_transforms=config.max_concurrent_transforms,
        batch_strategy=config.batch_strategy,
        mme_budget_bytes=mme_mb * 1024 * 1024,
        models_root=paths.root / "models",
        gpu_id=gpu,
        metrics=config.metrics,
        access_log=config.access_log,
        max_pending=config.max_pending,
        extract_limits=ExtractLimits(max_bytes=config.max_model_extract_mb << 20),
    )
    if device.type == "cpu":
        # Each concurrent forward gets its share of the cores, so they do not oversubscribe.
        torch.set_num_threads(max(1, cpus // workers))
    return settings


def batch_shape(config: ServeConfig, device) -> dict:
    """Micro-batch size and fill delay: the user's, else what wins on the device.
    CPU (measured, docs/benchmarks.md): one single-threaded forward per worker, at most 4
    rows and no waiting. Batches form from the requests queued while every forward is
    busy; a 4-row ResNet-50 forward costs about 0.7x per image of a 1-row one, and longer
    batches only lengthen the tail. GPU: 16 rows, 5 ms, to fill the device."""
    gpu = device.type == "cuda"
    size = config.max_batch_size or (16 if gpu else 4)
    delay = config.max_batch_delay_ms if config.max_batch_delay_ms is not None else (5.0 if gpu else 0.0)
    return {"max_batch_size": size, "max_delay_ms": delay}


def worker_processes(config: ServeConfig, settings) -> int:
    """SAGEMAKER_MODEL_SERVER_WORKERS=N gives a user's model N independent processes
    (model_fn once in each, as AWS's model server does). Our own classifier without a
    script, and a multi-model endpoint, run N inference threads in one process instead."""
    from serve.hooks import find_script
    from serve.model import SPEC_FILE

    if not config.workers or config.workers < 2 or config.multi_model:
        return 1
    users = find_script(settings.model_dir, settings.program, settings.code_dirs) is not None
    return config.workers if users or not (settings.model_dir / SPEC_FILE).exists() else 1


def worker_app():
    """The app of one worker process (uvicorn's factory): the parent exported the
    resolved ServeConfig into the environment."""
    config = ServeConfig.from_env()
    configure_logging(config)
    from serve.connections import with_header_timeout

    with_header_timeout(config.header_timeout_s)  # this process's connections (the class came by reference)
    processes = config.workers or 1
    claims = SCRATCH / WORKER_CLAIMS
    index = next(i for i in range(10_000) if _claim(claims / str(i)))
    from serve.app import create_app

    settings = build_settings(config, SageMakerPaths.from_env(), processes, index)
    log.info("worker %d of %d (pid %d, device %s)", index, processes, os.getpid(), settings.device)
    return create_app(settings)


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def configure_logging(config: ServeConfig) -> None:
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True
    )


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    try:
        config = ServeConfig.from_env(os.environ, overrides)
        configure_logging(config)
        paths = SageMakerPaths.from_env()
        if config.backend == "mms":
            from serve import mms

            mms.start(config, paths, cpu_count())
            return
        settings = build_settings(config, paths)
        processes = worker_processes(config, settings)
    except ConfigError as err:
        logging.basicConfig()
        log.error("%s", err)
        sys.exit(2)

    import uvicorn

    from serve.connections import with_header_timeout

    log.info("sagemaker-vision serve: http://%s:%d (model %s)", config.host, config.port, settings.model_dir)
    options = {
        "host": config.host,
        "port": config.port,
        "log_level": config.log_level,
        "access_log": False,  # serve.access writes one structured line per request
        "timeout_graceful_shutdown": settings.timeout_s,
        "timeout_keep_alive": 75,  # above SageMaker's 60 s idle timeout, so it closes first
        # A connection that has not sent a request's headers in time is closed (uvicorn has no such timeout).
        "http": with_header_timeout(config.header_timeout_s),
        "log_config": None,
    }
    if processes == 1:
        from serve.app import create_app

        uvicorn.run(create_app(settings), **options)
        return
    from serve.model import prepare_model_dir

    # Extract model.tar.gz once, here, so the workers do not race on the scratch dir.
    model_dir = prepare_model_dir(settings.model_dir, SCRATCH / "model", settings.extract_limits)
    shutil.rmtree(SCRATCH / WORKER_CLAIMS, ignore_errors=True)
    (SCRATCH / WORKER_CLAIMS).mkdir(parents=True)
    os.environ.update(dataclasses.replace(config, model_dir=str(model_dir)).to_env())
    log.info("starting %d worker processes (SAGEMAKER_MODEL_SERVER_WORKERS)", processes)
    uvicorn.run("serve.cli:worker_app", factory=True, workers=processes, **options)


if __name__ == "__main__":
    main()

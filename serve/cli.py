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

from container import ConfigError, ServeConfig

log = logging.getLogger("serve")

WORKER_CLAIMS = "worker-claims"  # under the scratch dir: which worker index each process took


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


def worker_processes(config: ServeConfig) -> int:
    """SAGEMAKER_MODEL_SERVER_WORKERS=N gives a user's model N independent processes
    (model_fn once in each, as AWS's model server does). Our own classifier without a
    script, and a multi-model endpoint, run N inference threads in one process instead."""
    from serve.hooks import find_script
    from vision.artifact import SPEC_FILE

    if not config.workers or config.workers < 2 or config.multi_model:
        return 1
    users = find_script(config.model_path, config.program, config.code_dirs()) is not None
    return config.workers if users or not (config.model_path / SPEC_FILE).exists() else 1


def server_options(config: ServeConfig) -> dict:
    """uvicorn's options, the same for one process and for several."""
    from serve.connections import with_header_timeout

    return {
        "host": config.host,
        "port": config.port,
        "log_level": config.log_level,
        "access_log": False,  # serve.access_log writes one structured line per request
        # On SIGTERM: stop accepting, let in-flight requests finish (up to this), then exit 0.
        "timeout_graceful_shutdown": config.drain_timeout_s,
        "timeout_keep_alive": 75,  # above SageMaker's 60 s idle timeout, so it closes first
        # A connection that has not sent a request's headers in time is closed (uvicorn has no such timeout).
        "http": with_header_timeout(config.header_timeout_s),
        "log_config": None,
    }


def app_for(config: ServeConfig, processes: int = 1, worker_index: int = 0):
    """The app of one server process: the config resolved against its share of the machine."""
    from serve.app import create_app
    from serve.machine import probe, share_cores

    machine = probe(config, processes, worker_index)
    resolved = config.resolve(machine)
    share_cores(resolved, machine)
    log.info("sagemaker-vision serve: http://%s:%d (model %s, device %s)", config.host, config.port, resolved.model_path, resolved.device)
    return create_app(resolved, machine)


def worker_app():
    """The app of one worker process (uvicorn's factory): the parent exported its
    ServeConfig into the environment."""
    config = ServeConfig.from_env()
    configure_logging(config)
    from serve.connections import with_header_timeout

    with_header_timeout(config.header_timeout_s)  # this process's connections (the class came by reference)
    processes = config.workers or 1
    claims = config.scratch_path / WORKER_CLAIMS
    index = next(i for i in range(10_000) if _claim(claims / str(i)))
    log.info("worker %d of %d (pid %d)", index, processes, os.getpid())
    return app_for(config, processes, index)


def run_workers(config: ServeConfig, processes: int, options: dict) -> None:
    import uvicorn

    from serve.archive import ExtractLimits
    from serve.model import prepare_model_dir

    # Extract model.tar.gz once, here, so the workers do not race on the scratch dir.
    model_dir = prepare_model_dir(config.model_path, config.scratch_path / "model", ExtractLimits.from_config(config))
    shutil.rmtree(config.scratch_path / WORKER_CLAIMS, ignore_errors=True)
    (config.scratch_path / WORKER_CLAIMS).mkdir(parents=True)
    os.environ.update(dataclasses.replace(config, model_dir=str(model_dir)).to_env())
    log.info("starting %d worker processes (SAGEMAKER_MODEL_SERVER_WORKERS)", processes)
    uvicorn.run("serve.cli:worker_app", factory=True, workers=processes, **options)


def _claim(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def configure_logging(config: ServeConfig) -> None:
    """One log on stdout for every logger (uvicorn's propagate to it), its messages
    escaped: a client's text cannot drive the reader's terminal or forge a line."""
    from serve.access_log import escape_every_log

    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True
    )
    escape_every_log()


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    overrides = {name: value for name, value in vars(args).items() if value is not None}
    try:
        config = ServeConfig.from_env(os.environ, overrides)
        configure_logging(config)
        if config.backend == "mms":
            from serve import mms

            mms.start(config)
            return
        processes = worker_processes(config)
        options = server_options(config)
        app = app_for(config) if processes == 1 else None
    except ConfigError as err:
        logging.basicConfig()
        log.error("%s", err)
        sys.exit(2)
    if app is None:
        run_workers(config, processes, options)
        return
    import uvicorn

    uvicorn.run(app, **options)


if __name__ == "__main__":
    main()

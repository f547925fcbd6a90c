"""`monitor`: watch a deployed model through its captured traffic, on PATH in the image.

    monitor                                 a Model Monitor job: everything from its environment
    monitor --captures DIR --model DIR --out DIR [--start ISO --end ISO]
                                            a Processing job or a local run
    monitor baseline --model DIR --data IMAGES
                                            write a monitoring baseline into a model

Every setting is an environment variable (Model Monitor's lower-case contract, or
SM_VISION_MONITOR_*), some also a flag here, which wins; container.monitoring
defines them and docs/monitoring.md lists them. The run compares the window's
captured images with the model's baseline (monitor.checks) and writes
statistics.json, constraint_violations.json and report.md into the output path.
Violations are results, not errors: the exit status is 0. A bad or missing input ends
with its reason in /opt/ml/output/failure and /opt/ml/output/message (a processing
job's ExitMessage) and exit status 2 (1 for anything else).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from container import EXIT_CONFIG, ConfigError, SageMakerPaths, write_failure
from container.monitoring import MonitoringJob, MonitorSettings, flag_fields

log = logging.getLogger("monitor")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="monitor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for cls in (MonitoringJob, MonitorSettings):
        for spec in flag_fields(cls):
            meta = spec.metadata
            default = "none" if spec.default is None else spec.default
            metavar = meta["flag"].lstrip("-").upper().replace("-", "_")
            parser.add_argument(
                meta["flag"], dest=spec.name, default=None, metavar=metavar, help=f"{meta['help']}; env {meta['env']}, default {default}"
            )
    return parser


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout, force=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    paths = SageMakerPaths.from_env()
    paths.failure_file.unlink(missing_ok=True)
    try:
        if argv[:1] == ["baseline"]:
            from monitor import baseline

            return baseline.main(argv[1:])
        args = get_args_parser().parse_args(argv)
        overrides = {name: value for name, value in vars(args).items() if value is not None}
        job = MonitoringJob.from_env(os.environ, overrides)
        from monitor import run

        settings = MonitorSettings.from_env(os.environ, overrides, run.constraint_thresholds(job))
        scratch = Path(tempfile.mkdtemp(prefix="sm-vision-monitor-"))
        try:
            run.run(job, settings, paths, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except ConfigError as err:
        log.error("%s", err)
        failed(paths, f"ConfigError: {err}")
        return EXIT_CONFIG
    except Exception as err:  # noqa: BLE001 - any failure ends the job with its reason for SageMaker
        log.exception("monitoring failed")
        failed(paths, f"{type(err).__name__}: {err}")
        return 1
    return 0


def failed(paths: SageMakerPaths, reason: str) -> None:
    """The reason where each kind of job reads it: the failure file (training-style
    containers) and the exit message (a processing job's ExitMessage)."""
    from monitor.outputs import write_message

    write_failure(paths, reason)
    write_message(paths, f"Failed: {reason}")


def entry() -> None:
    sys.exit(main())

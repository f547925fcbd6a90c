"""`train`: the trainer's entry point, on PATH in the image.

    train [--flag value ...]          built-in trainer (hyperparameters.json + flags)
    train check-data [...]            check a dataset (any format the trainer reads) and print its fingerprint
    train prepare-bins ...            bin-count metadata -> ImageFolder split
    (hyperparameters naming sagemaker_program run the user's script instead)

SageMaker is a thin adapter here: hyperparameters.json and the channels become the
same TrainConfig an EC2 user gets from flags. Any failure ends with its reason in
/opt/ml/output/failure and a non-zero exit.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback

from container import EXIT_CONFIG, EXIT_STOPPED, ConfigError, SageMakerPaths, read_hyperparameters, read_resource_config, write_failure

log = logging.getLogger("train")


def setup_logging(rank: int = 0) -> None:
    # Non-main ranks log warnings only, so a job's log reads like one process's.
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        if rank == 0
        else f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s",
        stream=sys.stdout,
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["prepare-bins"]:
        from train import prepare_bins

        return prepare_bins.main(argv[1:])
    if argv[:1] == ["check-data"]:
        from train import check_data

        return check_data.main(argv[1:])
    setup_logging()
    paths = SageMakerPaths.from_env()
    if os.environ.get("RANK", "0") == "0":
        # A previous attempt's reason (spot restart, max_restarts); other workers of a
        # job leave it to rank 0.
        paths.failure_file.unlink(missing_ok=True)
    try:
        hyperparameters = read_hyperparameters(paths)
        if "sagemaker_program" in hyperparameters:
            from train import script_mode

            return script_mode.run(paths, hyperparameters)
        from train.config import get_args_parser, resolve_config

        if "-h" in argv or "--help" in argv:
            get_args_parser().print_help()
            return 0
        config = resolve_config(hyperparameters, argv)
        import torch

        from train import launcher

        if launcher.started_by_launcher(os.environ):
            # One worker of a job that torchrun (ours or anyone's) or a PyTorchJob started.
            return run_worker(config, paths)
        gpu_count = torch.cuda.device_count() if config.device != "cpu" else 0
        topology = launcher.plan_topology(config, read_resource_config(paths), os.environ, gpu_count)
    except ConfigError as err:  # also script mode's: a bad request fails before the toolkit starts
        return config_failure(paths, err)
    if topology.world_size == 1 and config.max_restarts == 0:
        return run_worker(config, paths)  # in this process: no launcher in the way of a debugger
    # torchrun's engine starts the workers: each runs this same command line.
    result = launcher.launch(topology, ["-m", "train.cli", *argv], config.max_restarts, config.dist_timeout_s)
    if result.stopped and not paths.failure_file.exists():
        # Rank 0 writes the detailed stop message on its own host; say it here too.
        write_failure(
            paths, f"stopped by a signal on host {topology.host_name}; rank 0 saved a checkpoint that a restarted job resumes from"
        )
    elif result.failure:
        write_failure(paths, result.failure)  # the root cause, with the worker's own error
    return result.exit_code


def run_worker(config, paths: SageMakerPaths, environ=None) -> int:
    """One training process (the only one, or one of a DDP job)."""
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    from train import distributed
    from train.loop import fit
    from train.state import StopRequest
    from vision import devices

    environ = os.environ if environ is None else environ
    rank = int(environ.get("RANK", "0"))
    setup_logging(rank)
    stop = StopRequest()

    def on_signal(signum, _frame):
        name = signal.Signals(signum).name
        if not stop.requested:
            logging.getLogger("train").warning("%s received: finishing the current step, then saving a checkpoint", name)
        stop.set(name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    process = None
    where = f"rank {rank} on host {environ.get('SM_VISION_HOST', os.uname().nodename)}"
    try:
        # Rank 0 says it when GPUs are present but unusable (old driver, no toolkit).
        device = devices.select_device(config.device, warn=rank == 0)
        process = distributed.init_distributed(device, config.dist_timeout_s, environ)
        if process.is_main and process.distributed:
            log.info("joined the job: world size %d, rank 0 on host %s, device %s", process.world_size, process.host, process.device)
        outcome = fit(config, paths, process, stop)
    except ConfigError as err:
        get_error_handler().record_exception(err)  # for a launcher: torchelastic's error file
        return config_failure(paths, err)
    except Exception as err:  # noqa: BLE001 - the last line of defence: report, never hang
        log.error("training failed on %s:\n%s", where, traceback.format_exc())
        write_failure(paths, f"{type(err).__name__} on {where}: {err}")
        get_error_handler().record_exception(err)
        return 1
    finally:
        distributed.cleanup(process)
    if outcome.stopped:
        message = (
            f"stopped by {stop.signal_name} at epoch {outcome.epoch + 1}, step {outcome.step}; "
            f"checkpoint {outcome.checkpoint or '(written by rank 0)'}; a restarted job resumes from it"
        )
        log.warning(message)
        if rank == 0:
            write_failure(paths, message)
        return EXIT_STOPPED
    return 0


def config_failure(paths: SageMakerPaths, err: ConfigError) -> int:
    """Where every bad configuration ends, wherever it was found: the message logged and
    written to the failure file (SageMaker's FailureReason), and the config exit code."""
    log.error("%s", err)
    write_failure(paths, f"ConfigError: {err}")
    return EXIT_CONFIG


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()

"""Script mode: run the user's own training script as AWS's PyTorch images do.

The SageMaker SDK selects it with `entry_point=` / `source_dir=`: hyperparameters.json
then holds `sagemaker_program` (the script) and `sagemaker_submit_directory` (an
s3:// tarball, or /opt/ml/code in local mode). `train` hands over to this module.

How AWS's images do it, and so how we do it: their `train` command is AWS's
sagemaker-training toolkit (`sagemaker_training.trainer.train`), and the image names its
framework adapter in SAGEMAKER_TRAINING_MODULE (`sagemaker_pytorch_container.training:
main` for PyTorch). We call the same toolkit function with our adapter,
`train.script_mode:framework_main`, which does what the PyTorch adapter does: MASTER_ADDR
/ MASTER_PORT / NCCL variables, then the toolkit's `entry_point.run(..., capture_error=
True)`. So users get the toolkit's own behaviour, unchanged:

- the submitted directory downloaded (s3://) or copied into /opt/ml/code, and its
  requirements.txt installed with pip before the script starts;
- hyperparameters JSON-decoded and passed as `--key value` with the user's names,
  `sagemaker_*` keys left out;
- SM_MODEL_DIR, SM_OUTPUT_DATA_DIR, SM_CHANNEL_<NAME>, SM_CHANNELS, SM_HOSTS,
  SM_CURRENT_HOST, SM_NUM_GPUS, SM_HPS, SM_TRAINING_ENV ... in the script's environment;
- a failing script: the toolkit writes /opt/ml/output/failure (with the script's
  error output) and exits non-zero.

Outside SageMaker (plain `docker run -v dir:/opt/ml`), resourceconfig.json and
inputdataconfig.json may be absent; the toolkit cannot start without them, so we write
the single-host / channel-per-folder files it would otherwise assume, each channel in the
input mode its files show (a folder: File; pass FIFOs `<name>_0`, ...: Pipe). A job's own
inputdataconfig.json (SageMaker's, with Pipe or FastFile channels) is left as it is.
"""

from __future__ import annotations

import json
import logging
import os
import socket

from container import ConfigError, SageMakerPaths, read_input_data_config, write_failure

log = logging.getLogger("train.script_mode")

FRAMEWORK_MODULE = "train.script_mode:framework_main"
# What AWS's PyTorch adapter sets; scripts calling init_process_group("env://") rely on it.
MASTER_PORT = "7777"

# distribution= options of the SDK whose launchers are not in this image.
_UNSUPPORTED_LAUNCHERS = {
    "sagemaker_mpi_enabled": "MPI (mpirun)",
    "sagemaker_distributed_dataparallel_enabled": "SageMaker distributed data parallel (smddprun)",
    "sagemaker_pytorch_ddp_enabled": "the pytorchddp launcher (smddprun)",
}
TORCH_DISTRIBUTED = "sagemaker_torch_distributed_enabled"


def run(paths: SageMakerPaths, hyperparameters: dict[str, str]) -> int:
    """Run the user's script through the toolkit; returns the process exit code.

    `hyperparameters` (already read by `train`) only validates the request here: the
    toolkit reads hyperparameters.json itself, so values reach the script exactly as
    they would in AWS's images. A bad request raises ConfigError before the toolkit
    starts; `train` turns it into the failure file and exit code, as for its own config.
    """
    program = hyperparameters.get("sagemaker_program", "").strip()
    if not program:
        raise ConfigError("hyperparameter sagemaker_program is empty: name your entry point script, e.g. train.py")
    code_dir = paths.root / "code"
    submit_dir = hyperparameters.get("sagemaker_submit_directory", "").strip()
    if not submit_dir and not (code_dir / program).exists():
        raise ConfigError(
            f"sagemaker_program={program!r} but no sagemaker_submit_directory and no {code_dir / program}: "
            "pass source_dir= (or entry_point=) to the estimator, or mount your code at /opt/ml/code"
        )
    _complete_config(paths)

    # The toolkit computes its paths when imported; set them first.
    os.environ["SAGEMAKER_BASE_DIR"] = str(paths.root)
    previous = os.environ.get("SAGEMAKER_TRAINING_MODULE")
    if previous and previous != FRAMEWORK_MODULE:
        log.warning("SAGEMAKER_TRAINING_MODULE=%s replaced by %s (this image's adapter)", previous, FRAMEWORK_MODULE)
    os.environ["SAGEMAKER_TRAINING_MODULE"] = FRAMEWORK_MODULE
    log.info("script mode: running %s through the sagemaker-training toolkit", program)
    try:
        from sagemaker_training import trainer

        trainer.train()  # always ends in sys.exit(code)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except Exception as err:  # noqa: BLE001 - the toolkit failed before its own handler
        log.exception("the sagemaker-training toolkit failed to start")
        write_failure(paths, f"script mode could not start: {type(err).__name__}: {err}")
        return 1
    if code != 0 and not paths.failure_file.exists():
        write_failure(paths, f"user script {program} failed with exit code {code}")
    return code


def framework_main() -> None:
    """The toolkit's framework hook (SAGEMAKER_TRAINING_MODULE), as AWS's PyTorch adapter
    `sagemaker_pytorch_container.training:main`: set the distributed environment, then
    run the entry point with its error output captured for the failure file."""
    from sagemaker_training import entry_point, environment, errors, runner

    env = environment.Environment()
    framework = env.additional_framework_parameters
    for flag, launcher in _UNSUPPORTED_LAUNCHERS.items():
        if _truthy(framework.get(flag)):
            raise errors.ClientError(
                f"{flag} asks for {launcher}, which this image does not include. "
                "Use distribution={'torch_distributed': {'enabled': True}} (torchrun) instead, "
                "or the image's built-in trainer, which runs DDP on its own."
            )
    os.environ["MASTER_ADDR"] = env.master_hostname
    os.environ["MASTER_PORT"] = MASTER_PORT
    if env.network_interface_name:
        os.environ.setdefault("NCCL_SOCKET_IFNAME", env.network_interface_name)
    os.environ.setdefault("NCCL_DEBUG", "WARN")

    runner_type = runner.ProcessRunnerType
    if _truthy(framework.get(TORCH_DISTRIBUTED)) and env.current_instance_group in env.distribution_instance_groups:
        runner_type = runner.TorchDistributedRunnerType
    entry_point.run(
        uri=env.module_dir,
        user_entry_point=env.user_entry_point,
        args=env.to_cmd_args(),
        env_vars=env.to_env_vars(),
        capture_error=True,
        runner_type=runner_type,
    )


def _truthy(value: object) -> bool:
    return value is True or str(value).strip().lower() in {"true", "1"}


def _complete_config(paths: SageMakerPaths) -> None:
    """Write the resourceconfig.json / inputdataconfig.json SageMaker writes, when a
    plain `docker run` did not: one host (this one), one channel per folder under
    input/data (File mode) or per set of pass FIFOs `<name>_0, ...` (Pipe mode). An
    existing file is never touched, so a job's own input modes reach the script as declared."""
    wanted = []
    if not paths.resource_config_file.exists():
        host = socket.gethostname()
        wanted.append((paths.resource_config_file, {"current_host": host, "hosts": [host]}))
    if not paths.input_data_config_file.exists():
        channels = read_input_data_config(paths)  # the folders (File) and pass FIFOs (Pipe) under input/data
        wanted.append((paths.input_data_config_file, {name: {"TrainingInputMode": c.input_mode} for name, c in channels.items()}))
    for path, content in wanted:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content))
        except OSError as err:
            raise ConfigError(f"{path} is missing and cannot be written ({err.strerror}); the toolkit needs it") from None
        log.info("wrote %s (not provided; as outside SageMaker): %s", path.name, json.dumps(content))

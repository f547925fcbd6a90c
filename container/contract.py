"""SageMaker's /opt/ml layout, config files, failure file and serving environment.

References: SageMaker "Use your own training algorithms" and "Use your own inference
code" (container contract). Values in hyperparameters.json are always strings; the
SageMaker Python SDK JSON-encodes each one, so a string hyperparameter may arrive
wrapped in quotes ('"train.py"').
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from container.parse import ConfigError

# One variable moves the whole tree, so tests and local runs can use a temp dir.
ROOT_ENV_VAR = "SM_VISION_OPT_ML"
DEFAULT_ROOT = "/opt/ml"

# SageMaker reads at most 1024 characters of the failure file as FailureReason.
FAILURE_REASON_LIMIT = 1024

# Exit codes of `train` besides 0 and 1 (SageMaker only tells zero from non-zero; people,
# scripts and launchers read them).
EXIT_CONFIG = 2  # bad configuration: the failure file names the field
EXIT_STOPPED = 143  # stopped by SIGTERM after saving a checkpoint (128 + SIGTERM, as a shell reports it)


@dataclass(frozen=True)
class SageMakerPaths:
    """Every path of the /opt/ml contract, derived from one root."""

    root: Path = Path(DEFAULT_ROOT)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SageMakerPaths:
        environ = os.environ if environ is None else environ
        return cls(Path(environ.get(ROOT_ENV_VAR) or DEFAULT_ROOT))

    @property
    def config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def resource_config_file(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def input_data_config_file(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def data_dir(self) -> Path:
        return self.root / "input" / "data"

    def channel_dir(self, name: str) -> Path:
        return self.data_dir / name

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        """Where SageMaker uploads TensorBoard files from when a job has a
        TensorBoardOutputConfig (its LocalPath default)."""
        return self.output_dir / "tensorboard"

    @property
    def tensorboard_config_file(self) -> Path:
        return self.config_dir / "tensorboardoutputconfig.json"


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} ({what}) is not valid JSON: {err}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path} ({what}): {err.strerror}") from None


def read_hyperparameters(paths: SageMakerPaths) -> dict[str, str]:
    """hyperparameters.json as {name: string}; {} when the file is absent (EC2, local)."""
    if not paths.hyperparameters_file.exists():
        return {}
    raw = _read_json(paths.hyperparameters_file, "hyperparameters")
    if not isinstance(raw, dict):
        raise ConfigError(f"{paths.hyperparameters_file} must hold a JSON object of name: value")
    return {str(key): _unquote(value) for key, value in raw.items()}


def _unquote(value: object) -> str:
    """Undo the SDK's JSON encoding of string values ('"abc"' -> 'abc').

    Only a value that is itself a JSON string literal is decoded; numbers and booleans
    stay as the text the user wrote and are typed later by the flag they belong to.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return json.dumps(value)  # true/false, lists, objects: as JSON text
    if not isinstance(value, str):
        return str(value)
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def hyperparameters_to_argv(hyperparameters: Mapping[str, str]) -> list[str]:
    """{'batch-size': '32'} -> ['--batch-size', '32'], dropping the SDK's sagemaker_* keys.

    Names pass through verbatim: the trainer's parser accepts both '-' and '_'
    spellings, and script-mode users get exactly the names they chose.
    """
    argv: list[str] = []
    for key, value in hyperparameters.items():
        if key.startswith("sagemaker_"):
            continue
        argv += [f"--{key}", value]
    return argv


# TrainingInputMode values. FastFile streams S3 objects behind ordinary file paths, so a
# reader treats it as File; Pipe delivers each pass over the data as a FIFO.
INPUT_MODES = ("File", "FastFile", "Pipe")
DISTRIBUTIONS = ("FullyReplicated", "ShardedByS3Key")
RECORD_WRAPPERS = ("None", "RecordIO")


@dataclass(frozen=True)
class Channel:
    """One input channel as inputdataconfig.json declares it.

    In File (and FastFile) mode `path` is a directory. In Pipe mode nothing is at `path`:
    SageMaker creates one FIFO per pass over the data, `<path>_0`, `<path>_1`, ... (see
    `pipe_path`), each to be read once, in order. `record_wrapper` is "RecordIO" when
    SageMaker wraps every S3 object (or, for an augmented manifest, every attribute) in a
    RecordIO record; `distribution` says whether every host gets all the data or a shard.
    """

    name: str
    path: Path
    content_type: str | None = None
    input_mode: str = "File"
    record_wrapper: str | None = None
    distribution: str = "FullyReplicated"

    @property
    def pipe(self) -> bool:
        return self.input_mode == "Pipe"

    def pipe_path(self, pass_number: int) -> Path:
        """The FIFO of the `pass_number`-th pass (from 0) over a Pipe-mode channel."""
        return self.path.with_name(f"{self.name}_{pass_number}")


def _channel_field(path: Path, name: str, spec: Mapping, key: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    value = spec.get(key, default)
    if value is not None and value not in allowed:
        raise ConfigError(f"{path}: channel {name!r} has {key}={value!r}; expected one of {', '.join(allowed)}")
    return value


def read_input_data_config(paths: SageMakerPaths) -> dict[str, Channel]:
    """Channels SageMaker declared, or, when there is no inputdataconfig.json (plain
    `docker run -v data:/opt/ml/input/data/training`), the folders under input/data (File
    mode) and the channels whose pass FIFOs (`<name>_0`) are there (Pipe mode)."""
    if paths.input_data_config_file.exists():
        file = paths.input_data_config_file
        raw = _read_json(file, "input data config")
        if not isinstance(raw, dict):
            raise ConfigError(f"{file} must hold a JSON object")
        channels = {}
        for name, spec in raw.items():
            spec = spec or {}
            if not isinstance(spec, dict):
                raise ConfigError(f"{file}: channel {name!r} must be a JSON object")
            wrapper = _channel_field(file, name, spec, "RecordWrapperType", RECORD_WRAPPERS, None)
            channels[name] = Channel(
                name=name,
                path=paths.channel_dir(name),
                content_type=spec.get("ContentType"),
                input_mode=_channel_field(file, name, spec, "TrainingInputMode", INPUT_MODES, "File"),
                record_wrapper=None if wrapper == "None" else wrapper,
                distribution=_channel_field(file, name, spec, "S3DistributionType", DISTRIBUTIONS, "FullyReplicated"),
            )
        return channels
    if not paths.data_dir.is_dir():
        return {}
    entries = sorted(paths.data_dir.iterdir())
    channels = {entry.name: Channel(entry.name, entry) for entry in entries if entry.is_dir()}
    for entry in entries:  # FIFOs <name>_0, <name>_1, ...: a Pipe-mode channel, as SageMaker lays one out
        name, _, number = entry.name.rpartition("_")
        if name and number.isdigit() and name not in channels and entry.is_fifo():
            channels[name] = Channel(name, paths.channel_dir(name), input_mode="Pipe")
    return channels


def read_tensorboard_dir(paths: SageMakerPaths) -> Path | None:
    """The TensorBoard directory the job asked for: tensorboardoutputconfig.json's
    LocalPath (SageMaker writes the file when the job sets TensorBoardOutputConfig), else
    the default directory when it exists; None when TensorBoard was not asked for."""
    if paths.tensorboard_config_file.exists():
        raw = _read_json(paths.tensorboard_config_file, "TensorBoard output config")
        local = raw.get("LocalPath") if isinstance(raw, dict) else None
        return Path(local) if local else paths.tensorboard_dir
    return paths.tensorboard_dir if paths.tensorboard_dir.is_dir() else None


def training_job_name(environ: Mapping[str, str] | None = None) -> str | None:
    """TRAINING_JOB_NAME, which SageMaker sets in training containers."""
    environ = os.environ if environ is None else environ
    return environ.get("TRAINING_JOB_NAME") or None


@dataclass(frozen=True)
class ResourceConfig:
    current_host: str
    hosts: tuple[str, ...]
    network_interface_name: str | None = None

    @property
    def master_host(self) -> str:
        # Sorted order, as SageMaker's own toolkits do: every host agrees without talking.
        return sorted(self.hosts)[0]

    @property
    def host_rank(self) -> int:
        return sorted(self.hosts).index(self.current_host)


def read_resource_config(paths: SageMakerPaths) -> ResourceConfig | None:
    if not paths.resource_config_file.exists():
        return None
    raw = _read_json(paths.resource_config_file, "resource config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{paths.resource_config_file} must hold a JSON object")
    try:
        hosts = tuple(str(h) for h in raw["hosts"])
        current = str(raw["current_host"])
    except KeyError as err:
        raise ConfigError(f"{paths.resource_config_file} lacks field {err.args[0]!r}") from None
    if current not in hosts:
        raise ConfigError(f"resourceconfig.json: current_host {current!r} is not among hosts {list(hosts)}")
    interface = raw.get("network_interface_name")
    interfaces = _host_interfaces()
    if interface and interfaces is not None and interface not in interfaces:
        # SDK 3's local mode writes "ethwe", the name on SageMaker's own hosts, into
        # containers that only have eth0: pinning sockets to it would fail, so the
        # name counts only where this host has that interface.
        interface = None
    return ResourceConfig(current, hosts, interface)


def _host_interfaces() -> set[str] | None:
    """This host's network interface names; None where the OS cannot list them."""
    try:
        return {name for _, name in socket.if_nameindex()}
    except OSError:
        return None


def write_failure(paths: SageMakerPaths, message: str) -> None:
    """Write the reason SageMaker shows as FailureReason. Never raises: it runs while
    something else has already gone wrong."""
    text = message.strip() or "training failed without a message"
    if len(text) > FAILURE_REASON_LIMIT:
        text = text[: FAILURE_REASON_LIMIT - 3] + "..."
    try:
        paths.output_dir.mkdir(parents=True, exist_ok=True)
        paths.failure_file.write_text(text + "\n")
    except OSError:
        pass


def cpu_count() -> int:
    """CPUs this container may use: its CPU affinity, capped by a cgroup (v2 or v1) quota
    (`docker run --cpus`, ECS/Kubernetes limits), which os.cpu_count() ignores."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
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

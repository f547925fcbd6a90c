"""What this machine gives a server process, asked once at start-up: the device, its
share of the CPUs, the container's memory (container.Machine), and whether torch is
installed at all (the torch-free image, `docker/build.sh --cpu`, has none).
ServeConfig.resolve turns these facts into settings.

torch is imported inside the functions that need it, and only when it is installed, so
importing this module stays cheap for tools that only read the config and works in the
torch-free image.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from container import ConfigError, ServeConfig, cpu_count
from container.serving import Machine

log = logging.getLogger("serve")


FULL_IMAGE = "the full sagemaker-vision image (docker/build.sh without --cpu)"


def has_torch() -> bool:
    """Whether torch is installed: False in the torch-free serving image."""
    return importlib.util.find_spec("torch") is not None


def torch_missing(reason: str) -> ConfigError:
    """The load failure of a model this torch-free image cannot serve: /ping names it."""
    return ConfigError(f"this is the torch-free serving image, and {reason}: that needs torch; serve this model with {FULL_IMAGE}")


def probe(config: ServeConfig, processes: int = 1, worker_index: int = 0, gpu: int | None = None) -> Machine:
    """This process's machine. `processes` server processes share it; worker `worker_index`
    of them takes GPU worker_index mod the GPU count (or `gpu` when the caller was given
    one, as MMS gives each worker)."""
    from vision.devices import nvidia_devices_present, select_device

    cpus = max(1, cpu_count() // processes)
    if not has_torch() and config.device not in ("auto", "cpu"):
        raise ConfigError(f"SM_VISION_DEVICE={config.device}: the torch-free image serves on the CPU only; use {FULL_IMAGE} for GPUs")
    if not has_torch() or config.device == "cpu" or (config.device == "auto" and gpu is None and not nvidia_devices_present()):
        # No GPU to find: torch is not imported for that (a model served by ONNX Runtime never imports it).
        return Machine(device="cpu", cpus=cpus, memory_bytes=container_memory_bytes(), processes=processes)
    import torch

    if gpu is not None and torch.cuda.is_available():
        device = torch.device("cuda", gpu)
    else:
        device = select_device(config.device)
        if device.type == "cuda" and processes > 1 and torch.cuda.device_count() > 1:
            device = torch.device("cuda", worker_index % torch.cuda.device_count())  # one GPU per worker, round robin
    return Machine(device=str(device), cpus=cpus, memory_bytes=container_memory_bytes(), processes=processes)


def share_cores(device: str, threads: int) -> None:
    """On CPU each concurrent forward gets its share of the cores (`threads`, the resolved
    ServeConfig.threads), so they
    do not oversubscribe (forwards scale better across requests than across intra-op
    threads, which stall whenever decoding takes a core from one of them). torch's pool
    is process-wide: this runs when a torch model is loaded, never in a process that
    serves ONNX Runtime alone (which then does not import torch at all)."""
    if device == "cpu" and threads:
        import torch

        torch.set_num_threads(threads)


def container_memory_bytes() -> int:
    """The container's memory: its cgroup limit (v2 or v1), else physical memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(path).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 reports "no limit" as a huge number
            return int(limit)
        break
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

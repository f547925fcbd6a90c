"""Pick the compute device, and say loudly when GPUs exist but torch cannot use them.

The image's torch is a CUDA 12.8 build: it needs NVIDIA driver >= 525 (570+ for
every feature). On a host with an older driver torch.cuda.is_available() is simply
False, and a job would crawl on the CPU without a word; this module turns that into
an explicit message with the driver version found and what to do about it.

torch is imported by the functions that ask it, so a CPU-only server can learn that
there is no GPU here (`nvidia_devices_present`) without importing torch.
"""

from __future__ import annotations

import glob
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

MIN_DRIVER = 525
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")


def nvidia_devices_present() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def driver_version() -> str | None:
    try:
        text = DRIVER_VERSION_FILE.read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9]+(?:\.[0-9]+)+)", text)
    return match.group(1) if match else None


def gpu_unusable_reason() -> str | None:
    """None when there are no NVIDIA devices or torch can use them; else the reason."""
    if not nvidia_devices_present():
        return None
    import torch

    if torch.cuda.is_available():
        return None
    found = driver_version()
    cuda = torch.version.cuda or "none (CPU build of torch)"
    parts = [
        "NVIDIA devices are present but torch cannot use them; running on CPU.",
        f"torch {torch.__version__} is built for CUDA {cuda} and needs NVIDIA driver >= {MIN_DRIVER}",
        f"found driver {found}."
        if found
        else "found no driver version (is the NVIDIA container toolkit installed and --gpus all passed?).",
    ]
    if found and int(found.split(".")[0]) < MIN_DRIVER:
        parts.append(
            "On SageMaker endpoints pick a newer driver with the production variant's "
            "InferenceAmiVersion (e.g. al2-ami-sagemaker-inference-gpu-3-1); on EC2 use "
            "a Deep Learning AMI or install a newer driver; or rebuild the image with "
            "--build-arg TORCH_VERSION/TORCHVISION_VERSION for an older CUDA."
        )
    return " ".join(parts)


def select_device(requested: str = "auto", warn: bool = True):
    """'auto' -> cuda when usable, else cpu (with a warning if GPUs are being wasted;
    `warn=False` for the non-main processes of a job, so it is said once): a torch.device."""
    import torch

    if requested not in {"auto", "cpu", "cuda"} and not requested.startswith("cuda:"):
        raise ValueError(f"device={requested!r}: expected auto, cpu, cuda or cuda:N")
    reason = gpu_unusable_reason()
    if reason and warn:
        log.warning(reason)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(reason or f"device={requested} requested but CUDA is not available")
    return torch.device(requested)

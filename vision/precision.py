"""Which reduced precision the torch engine runs on this device.

bf16 autocast halves ResNet-50's CPU latency on processors with AMX or AVX-512 BF16
(Sapphire Rapids and later: SageMaker's m7i/c7i/r7i), but processors without them
emulate bf16 and get *slower*, so the choice is made from the CPU's own flags
(vision.cpu), never assumed. On CUDA, bf16 needs compute capability 8.0 (A100, A10G,
L4, H100); fp16 tensor cores exist from 7.0 (V100, T4).

Serving uses `choose` for the torch engine and checks the choice with vision.guard; the
trainer's `amp=auto` asks `cpu_has_native_bf16` on a CPU, so both sides agree on what
"native" means there.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from vision.cpu import cpu_has_native_bf16

log = logging.getLogger(__name__)

CHOICES = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cuda_native_dtype(capability: tuple[int, int]) -> torch.dtype | None:
    if capability >= (8, 0):
        return torch.bfloat16
    if capability >= (7, 0):
        return torch.float16
    return None


def autocast_dtype(device: torch.device, flags: frozenset[str] | None = None, capability: tuple[int, int] | None = None):
    """The reduced precision this device runs natively, or None for fp32."""
    if device.type == "cuda":
        return cuda_native_dtype(capability or torch.cuda.get_device_capability(device))
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16(flags) else None
    return None


@dataclass(frozen=True)
class Precision:
    name: str  # fp32, bf16 or fp16
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES.get(self.name)

    def autocast(self):
        """The context the forward pass runs in: autocast for bf16/fp16, nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def choose(
    requested: str, device: torch.device, flags: frozenset[str] | None = None, capability: tuple[int, int] | None = None
) -> Precision:
    """`auto` picks what the device runs natively; an explicit choice is honoured, with a
    warning when the device would emulate it."""
    if requested not in CHOICES:
        raise ValueError(f"precision={requested!r}: choose one of {', '.join(CHOICES)}")
    native = autocast_dtype(device, flags, capability)
    if requested == "auto":
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(native, "fp32")
        return Precision(name, device.type)
    if requested != "fp32" and DTYPES[requested] is not native:
        log.warning(
            "precision=%s on %s: this device has no native %s support, expect it to be slower than fp32", requested, device, requested
        )
    return Precision(requested, device.type)

"""Which reduced precision runs natively on this device, and a check that it is accurate.

bf16 autocast halves ResNet-50's CPU latency on processors with AMX or AVX-512 BF16
(Sapphire Rapids and later: SageMaker's m7i/c7i/r7i), but processors without them
emulate bf16 and get *slower*, so the choice is made from the CPU's own flags, never
assumed. On CUDA, bf16 needs compute capability 8.0 (A100, A10G, L4, H100); fp16
tensor cores exist from 7.0 (V100, T4).

Serving uses `choose` + `guard` for the built-in classifier; the trainer's `amp=auto`
asks `cpu_has_native_bf16` on a CPU, so both sides agree on what "native" means there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CHOICES = ("auto", "fp32", "bf16", "fp16")
CPU_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The feature flags of the first processor in /proc/cpuinfo (empty if unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in CPU_NATIVE_BF16_FLAGS)


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


@dataclass(frozen=True)
class GuardResult:
    precision: Precision  # what will be served: the chosen precision, or fp32 after a fallback
    max_probability_diff: float
    top1_disagreements: int
    bound: float

    @property
    def fell_back(self) -> bool:
        return self.top1_disagreements > 0 or self.max_probability_diff > self.bound


# bf16 keeps 8 significant bits: a trained model's logits of magnitude ~10 move by ~0.05,
# which shifts a probability near 0.5 by ~0.01-0.02 without changing any answer. A broken
# reduced-precision forward (overflow, lost resolution) moves them far more.
GUARD_BOUND = 0.05


def guard(
    probabilities: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, chosen: Precision, bound: float = GUARD_BOUND
) -> GuardResult:
    """Run `batch` in fp32 and in `chosen`; keep `chosen` only if no probability moves by
    more than `bound` and top-1 agrees. A top-1 flip between two classes whose fp32
    probabilities are within `bound` of each other is a tie, not a disagreement: on such
    inputs fp32 itself is arbitrary."""
    if chosen.dtype is None:
        return GuardResult(chosen, 0.0, 0, bound)
    with torch.inference_mode():
        reference = probabilities(batch).float()
        with chosen.autocast():
            reduced = probabilities(batch).float()
    diff = float((reference - reduced).abs().max())
    top2 = reference.topk(min(2, reference.shape[1]), dim=1).values
    decisive = (top2[:, 0] - top2[:, -1]) > bound if top2.shape[1] > 1 else torch.ones(len(reference), dtype=torch.bool)
    flips = int(((reference.argmax(1) != reduced.argmax(1)) & decisive).sum())
    result = GuardResult(chosen, diff, flips, bound)
    if result.fell_back:
        log.warning(
            "precision guard: %s moved probabilities by up to %.4f (bound %.4f) and flipped %d of %d top-1 answers; serving fp32",
            chosen.name,
            diff,
            bound,
            flips,
            len(reference),
        )
        return GuardResult(Precision("fp32", chosen.device_type), diff, flips, bound)
    log.info("precision guard: %s kept (largest probability difference %.5f, bound %.4f, top-1 agrees)", chosen.name, diff, bound)
    return result

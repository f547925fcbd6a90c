"""What this CPU runs natively, from its own flags (/proc/cpuinfo), and what that means
for the engine `auto` serves our classifier with. No torch: the torch-free serving image
reads it too.

CPU classes, best first (the first whose flags the CPU has):

    AMX            amx_bf16 (Sapphire/Emerald/Granite Rapids: m7i/c7i/r7i, m8i)
    AVX-512 BF16   avx512_bf16 (Zen 4: m7a/c7a/r7a; Cooper Lake)
    AVX-512 VNNI   avx512_vnni (Cascade Lake, Ice Lake: m5/c5 2nd gen, m6i/c6i/r6i)
    AVX-512        avx512f (Skylake-SP: first m5/c5)
    AVX2 + AVX-VNNI  avx_vnni (Alder Lake and later clients)
    AVX2           avx2 (Zen 1-3: m5a/c5a, m6a/c6a; Haswell to Skylake clients)
    other          none of these (pre-AVX2 x86, or not x86)

`AUTO_ENGINE` is the evidence of benchmarks/engines (docs/benchmarks.md): ONNX Runtime's
int8 model was 4.0-6.1x torch fp32 and 1.9-3.5x torch bf16 at one thread on AVX-512
BF16 + VNNI, with accuracy within 0.3 points of fp32 on the digits; its reduce_range
recipe kept AVX2 kernels (no VNNI) from saturating, measured under emulation. AMX stays
on torch bf16 (oneDNN's AMX path) until the two are measured there; `other` stays on
torch, where nothing was measured.
"""

from __future__ import annotations

from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
CPU_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_CLASSES = (
    ("AMX", "amx_bf16"),
    ("AVX-512 BF16", "avx512_bf16"),
    ("AVX-512 VNNI", "avx512_vnni"),
    ("AVX-512", "avx512f"),
    ("AVX2 + AVX-VNNI", "avx_vnni"),
    ("AVX2", "avx2"),
)
OTHER = "other"

# The engine `auto` serves our classifier with on a CPU of each class (SM_VISION_ENGINE=auto).
AUTO_ENGINE = {
    "AMX": "torch",
    "AVX-512 BF16": "onnxruntime",
    "AVX-512 VNNI": "onnxruntime",
    "AVX-512": "onnxruntime",
    "AVX2 + AVX-VNNI": "onnxruntime",
    "AVX2": "onnxruntime",
    OTHER: "torch",
}


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


def cpu_class(flags: frozenset[str] | None = None) -> str:
    """The class of this CPU (or of `flags`): one of CPU_CLASSES' names, else OTHER."""
    flags = cpu_flags() if flags is None else flags
    return next((name for name, flag in CPU_CLASSES if flag in flags), OTHER)

"""What CPU this is: its model and the vector features that decide which kernels ONNX Runtime and BLAS run.

Quantised kernels differ per feature set (AVX2 without VNNI saturates 16-bit sums that AVX-512 VNNI does not),
so an int8 graph checked on one CPU is re-checked on another, and every benchmark prints this line first.
"""

import os
import platform
from functools import cache
from pathlib import Path

# /proc/cpuinfo flag names (x86 "flags", ARM "Features") of the features that change the kernels run.
VECTOR_FEATURES = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_int8": "AMX",
    "asimd": "NEON",
    "asimddp": "NEON-dotprod",
    "i8mm": "I8MM",
    "sve": "SVE",
}
BF16_FLAGS = frozenset(("avx512_bf16", "amx_bf16"))


@cache
def cpu_model() -> str:
    """The CPU's model name, e.g. 'AMD EPYC 9B45' ('unknown CPU' where the system does not say)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or "unknown CPU"


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (x86 "flags", ARM "Features")."""
    cpuinfo = Path("/proc/cpuinfo")
    flags: set[str] = set()
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                flags.update(value.split())
                break
    elif platform.machine() in ("arm64", "aarch64"):  # macOS on Apple silicon: NEON and dot product always
        flags.update(("asimd", "asimddp"))
    return frozenset(flags)


def cpu_features() -> tuple[str, ...]:
    """The vector features of VECTOR_FEATURES this CPU has, by their usual names."""
    flags = cpu_flags()
    return tuple(name for flag, name in VECTOR_FEATURES.items() if flag in flags)


def native_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX): where a bf16 runtime can pay.
    Elsewhere a runtime asked for bf16 emulates it or quietly runs fp32."""
    return bool(cpu_flags() & BF16_FLAGS)


def cpu_id() -> str:
    """One string naming this CPU and its vector features: what a quantised graph's check is valid for."""
    return f"{cpu_model()} [{' '.join(cpu_features())}] {platform.machine()}"


def cpu_line() -> str:
    """The line every benchmark prints first: CPU model, features, cores this process may use, OS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    features = ", ".join(cpu_features()) or "no vector features detected"
    return f"CPU: {cpu_model()} ({features}), {cores} cores, {platform.system()} {platform.machine()}"

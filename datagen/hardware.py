"""Which floating-point type model weights use: ``auto`` follows the hardware they run on.

bfloat16 is fast only where the hardware computes it natively: CUDA GPUs from Ampere on, and CPUs
with AMX or AVX512-BF16 (measured on a 2-core AMD EPYC with AVX512-BF16: a 2048² matmul 114 GFLOPS in
float32, 369 in bfloat16; on an Intel CPU with AMX 224 vs 2,503). On a CPU without those
instructions bfloat16 is emulated and about 5x slower than float32, so ``auto`` never pins a value:
it is resolved where the weights live (the engine actor, the training worker), not on the driver,
whose hardware may differ from a worker's.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class Dtype(NamedTuple):
    name: str  # torch's name: "float32", "bfloat16" or "float16"
    reason: str  # why it was chosen, for the stage's log line

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def pick_dtype(requested: str, *, gpu: bool, cpu_flags: frozenset[str], gpu_bf16: bool = False) -> Dtype:
    """Resolve ``requested`` ("auto" or a dtype, torch's or TRL's short name) for one device.

    ``auto`` is bfloat16 on a GPU that supports it and on a CPU with one of ``BF16_CPU_FLAGS``,
    float32 everywhere else. Pure: the probing is in :func:`resolve_dtype`.
    """
    if requested != "auto":
        name = _ALIASES.get(requested, requested)
        if name not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"unknown dtype {requested!r}: auto, float32, bfloat16 or float16")
        return Dtype(name, "set in the config")
    if gpu:
        if gpu_bf16:
            return Dtype("bfloat16", "auto: the GPU supports bfloat16")
        return Dtype("float32", "auto: the GPU has no bfloat16")
    found = [f for f in BF16_CPU_FLAGS if f in cpu_flags]
    if found:
        return Dtype("bfloat16", f"auto: the CPU has {'+'.join(found)}")
    return Dtype("float32", "auto: the CPU has no amx_bf16/avx512_bf16 (bfloat16 would be emulated)")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def resolve_dtype(requested: str, *, gpu: bool) -> Dtype:
    """:func:`pick_dtype` for this process's hardware; call it where the weights are loaded."""
    gpu_bf16 = False
    if gpu and requested == "auto":
        import torch

        gpu_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return pick_dtype(requested, gpu=gpu, cpu_flags=cpu_flags(), gpu_bf16=gpu_bf16)

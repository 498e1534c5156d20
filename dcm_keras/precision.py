"""The dtype policy that `auto` precision picks on a machine, one rule for the scripts and the
benchmarks: mixed float16 with a GPU, mixed bfloat16 on a CPU with bf16 matmul hardware, else
float32.

Pure Python, importing nothing of Keras or TensorFlow, so that `benchmarks.machine` can load it
without starting either.
"""

from __future__ import annotations

from typing import Iterable, Set

# CPU flags (as /proc/cpuinfo names them) of bf16 matmul hardware: AVX512-BF16 and AMX-BF16.
# Without them oneDNN emulates bfloat16 at a fraction of the float32 rate.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def auto_policy(gpus: int, cpu_flags: Iterable[str]) -> str:
    """The Keras dtype policy `auto` resolves to on a machine with `gpus` GPUs and `cpu_flags`.

    `mixed_float16` with a GPU (its tensor cores), `mixed_bfloat16` on a CPU with AVX512-BF16 or
    AMX-BF16, else `float32`.
    """
    if gpus:
        return "mixed_float16"
    if BF16_CPU_FLAGS.intersection(cpu_flags):
        return "mixed_bfloat16"
    return "float32"


def cpu_flags(path: str = "/proc/cpuinfo") -> Set[str]:
    """This machine's CPU feature flags, from the `flags` lines of `path` (an empty set where it
    cannot be read, e.g. off Linux)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return set()
    found: Set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            found.update(value.split())
    return found

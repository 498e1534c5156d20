"""The figures the benchmarks' phases and reports share: medians that skip missing values, the
matmul peak MFU is measured against, and how a figure (or its absence) is written."""

from __future__ import annotations

import statistics
from typing import Dict, Iterable, Optional


def median(values: Iterable[Optional[float]]) -> Optional[float]:
    """The median of the values that are not None (None where none is)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: Optional[float], spec: str = ".1f", suffix: str = "") -> str:
    """`value` in the format `spec`, then `suffix`; "-" for a figure that is missing."""
    return "-" if value is None else f"{value:{spec}}{suffix}"


def peak_dtype(precision: str) -> str:
    """The dtype of the matmuls of a step in the Keras dtype policy `precision`."""
    return {"float32": "float32", "mixed_bfloat16": "bfloat16",
            "mixed_float16": "float16"}.get(precision, "float32")


def mfu_peak(peaks: Dict[str, Optional[float]], precision: str) -> Optional[float]:
    """The matmul peak (GFLOP/s) that a step of `precision` is measured against.

    The higher of the precision's dtype and float32: on a CPU without bf16 hardware oneDNN
    emulates bfloat16 matmuls at a fraction of the float32 rate, while a mixed-precision step
    still runs much of its work in float32, so the bf16 peak alone is no ceiling (MFU above
    100 % was reported that way). Where bf16 is native its peak is the higher one anyway.
    """
    candidates = [peaks.get(peak_dtype(precision)), peaks.get("float32")]
    candidates = [p for p in candidates if p]
    return max(candidates) if candidates else None

"""MFU's denominator: a mixed-precision step is never measured against a slower emulated peak."""

import pytest

from benchmarks import figures


def test_emulated_bf16_uses_the_float32_peak():
    # The 2026-12-02 Intel machine without bf16 hardware: bf16 matmul 62 GFLOP/s, float32 301.
    peaks = {"float32": 301.0, "bfloat16": 62.0}
    assert figures.mfu_peak(peaks, "mixed_bfloat16") == 301.0
    assert figures.mfu_peak(peaks, "float32") == 301.0


def test_native_bf16_uses_the_bf16_peak():
    peaks = {"float32": 197.0, "bfloat16": 393.0}
    assert figures.mfu_peak(peaks, "mixed_bfloat16") == 393.0
    assert figures.mfu_peak(peaks, "float32") == 197.0


@pytest.mark.parametrize("peaks", [{}, {"float32": None, "bfloat16": None}])
def test_no_peak_gives_no_mfu(peaks):
    assert figures.mfu_peak(peaks, "mixed_bfloat16") is None


def test_mfu_never_exceeds_one_at_the_float32_rate():
    # A step doing float32-rate work: images/s x FLOP/image equal to the float32 peak.
    peaks = {"float32": 300.0, "bfloat16": 60.0}
    gflop_per_image, images_per_s = 1.5, 200.0
    assert gflop_per_image * images_per_s / figures.mfu_peak(peaks, "mixed_bfloat16") <= 1.0

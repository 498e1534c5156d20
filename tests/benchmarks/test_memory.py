"""benchmarks/memory.py: RSS per phase of a real (tiny) DCM fit."""

import sys

import pytest

from benchmarks import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")


def test_phases_in_order_with_the_peak_never_below_rss():
    rows = memory.measure("wrn_10_1", batch=4, steps=3, report_every=5)
    assert [r["phase"] for r in rows] == [
        "python", "import tensorflow", "import keras, dcm_keras", "build and compile the pair",
        "after step 0", "after step 1", "after step 2"]
    for row in rows:
        assert 0 < row["RssAnon"] <= row["VmRSS"] <= row["VmHWM"]
    peaks = [r["VmHWM"] for r in rows]
    assert peaks == sorted(peaks)  # a high-water mark never falls
    assert "| after step 2 |" in memory.markdown(rows)

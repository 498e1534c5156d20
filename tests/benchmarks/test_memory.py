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


def test_runs_as_a_script_and_never_overwrites(tmp_path):
    import json
    import os
    import subprocess

    out = tmp_path / "memory.json"
    argv = [sys.executable, "-m", "benchmarks.memory", "--net=wrn_10_1", "--batch_size=2",
            "--steps=2", f"--output={out}"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| after step 1 |" in result.stdout
    assert json.loads(out.read_text())["rows"][-1]["phase"] == "after step 1"
    again = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "never overwritten" in again.stderr
    assert "after step" not in again.stdout  # refused before measuring

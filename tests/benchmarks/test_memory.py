"""benchmarks/memory.py: RSS per phase of a real (tiny) DCM fit, run as a user runs it."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import memory

pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's"),
]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_phases_in_order_and_earlier_results_never_overwritten(tmp_path):
    out = tmp_path / "memory.json"
    argv = [sys.executable, "-m", "benchmarks.memory", "--net=wrn_10_1", "--batch_size=2",
            "--steps=3", f"--output={out}"]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["phase"] for r in rows] == [
        "python", "import tensorflow", "import keras, dcm_keras", "build and compile the pair",
        "after step 0", "after step 1", "after step 2"]
    for row in rows:
        assert 0 < row["RssAnon"] <= row["VmRSS"] <= row["VmHWM"]
    peaks = [r["VmHWM"] for r in rows]
    assert peaks == sorted(peaks)  # a high-water mark never falls
    assert rows[1]["VmRSS"] > rows[0]["VmRSS"] + 100  # TensorFlow's import is hundreds of MiB
    assert memory.markdown(rows) in result.stdout

    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "never overwritten" in again.stderr
    assert "after step" not in again.stdout  # refused before measuring

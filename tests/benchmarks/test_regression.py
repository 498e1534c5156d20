"""benchmarks/regression.py: the float32 targets checked on fabricated reports, the refusals made
before measuring, and the memory-above-import arithmetic of the peer comparison.

No end-to-end run: one (tiny net, stand-in peer) takes about 1.5 minutes on a shared 2-core
machine, three TensorFlow workers; tests/benchmarks/test_throughput.py runs that machinery.
"""

import json
import os
import subprocess
import sys

import pytest
from absl import app

from benchmarks import memory, regression
from benchmarks.report import memory_lines

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AMD = "AMD EPYC (avx512_bf16)"


def report(ratio=1.06, mfu=0.85, kind=AMD, images=50.8, ours_above=1200.0, peer_above=1500.0,
           date="2026-12-03 12:00 UTC", net="wrn_16_2", batch=128, bf16=False):
    """A `benchmarks.throughput --peer` report as far as the checks read it."""
    ours = [{"precision": "float32", "ratio_vs_peer": ratio, "mfu": mfu, "images_per_s": images,
             "images_per_cpu_s": images / 2, "best_peer_mode": "fp32+cl", "gflop_per_image": 1.0,
             "paired_ratios": [ratio], "rss_mb": 800.0 + ours_above, "import_rss_mb": 800.0,
             "rss_above_import_mb": ours_above}]
    modes = {"fp32": {"images_per_s": 40.0, "rss_mb": 1900.0, "import_rss_mb": 250.0,
                      "rss_above_import_mb": 1650.0},
             "fp32+cl": {"images_per_s": 100.0, "rss_mb": 250.0 + peer_above,
                         "import_rss_mb": 250.0, "rss_above_import_mb": peer_above}}
    if bf16:
        ours.append({**ours[0], "precision": "mixed_bfloat16", "best_peer_mode": "bf16+cl",
                     "rss_above_import_mb": 900.0})
        modes["bf16+cl"] = {"images_per_s": 90.0, "rss_mb": 1139.0, "import_rss_mb": 250.0,
                            "rss_above_import_mb": 889.0}
    peer = {"modes": modes, "ours": ours}
    peer["memory_above_import"] = memory.compare_above_import(peer)
    return {"date": date, "machine": {"cpu_kind": kind}, "peak_gflops": {"float32": 125.0},
            "flags": {"net": net, "batch_size": batch, "num_classes": 100, "image_size": 32},
            "peer": peer}


def test_targets_met_pass_with_no_failure_line():
    result = regression.check(report())
    assert result["failures"] == [] and result["cpu_kind"] == AMD
    text = "\n".join(result["lines"])
    assert "1.060x (target >= 1.00x): pass" in text and "85.0 % (peer 80.0 %" in text
    assert text.endswith("all targets met.") and AMD in result["lines"][0]


@pytest.mark.parametrize("ratio,mfu,failed", [
    (0.93, 0.85, ["ours / peer 0.930x < 1.00x"]),
    (1.06, 0.70, ["MFU 70.0 % < 80 %"]),
    (0.93, 0.70, ["ours / peer 0.930x < 1.00x", "MFU 70.0 % < 80 %"]),
    (None, None, ["ours / peer - < 1.00x", "MFU - < 80 %"]),  # not measured fails too
])
def test_each_failed_target_is_one_line_naming_the_machine_kind(ratio, mfu, failed):
    result = regression.check(report(ratio=ratio, mfu=mfu))
    assert len(result["failures"]) == len(failed)
    for line, what in zip(result["failures"], failed):
        assert line.startswith(f"FAILED on {AMD}: ") and what in line


def test_thresholds_are_inclusive_and_come_from_the_caller():
    assert regression.check(report(ratio=1.0, mfu=0.8))["failures"] == []
    assert regression.check(report(ratio=1.06, mfu=0.85), min_ratio=1.1)["failures"] == [
        f"FAILED on {AMD}: float32 ours / peer 1.060x < 1.10x (paired median against fp32+cl)"]
    assert len(regression.check(report(mfu=0.85), min_mfu=0.9)["failures"]) == 1
    assert regression.check(report(ratio=0.93, mfu=0.7), min_ratio=0.9, min_mfu=0.5)[
        "failures"] == []


def test_a_report_without_the_peer_phase_fails_once():
    bare = report()
    bare["peer"] = None
    (line,) = regression.check(bare)["failures"]
    assert "no float32 comparison with the peer" in line


def test_memory_above_import_is_reported_and_a_target_only_when_asked():
    over = report(ours_above=1600.0, peer_above=1500.0)
    assert regression.check(over)["failures"] == []
    assert any("float32: ours 1600 MiB, peer (fp32+cl) 1500 MiB: ours exceeds the peer's" in line
               for line in regression.check(over)["lines"])
    (line,) = regression.check(over, check_memory=True)["failures"]
    assert "float32 peak RSS above import: ours 1600 MiB, peer 1500 MiB" in line
    assert regression.check(report(), check_memory=True)["failures"] == []
    # bf16 is compared too (goal 3: both precisions): 900 > 889 MiB.
    (line,) = regression.check(report(bf16=True), check_memory=True)["failures"]
    assert "mixed_bfloat16 peak RSS above import: ours 900 MiB, peer 889 MiB" in line


def test_the_baseline_change_is_reported_and_a_drop_fails_only_on_the_same_kind():
    before = report(ratio=1.06, mfu=0.85, images=50.0, date="before")
    result = regression.check(report(ratio=1.03, mfu=0.84, images=49.0), baseline=before)
    assert result["failures"] == []  # -2.8 %: within the 5 % allowed
    assert result["baseline"]["ratio_vs_peer"]["change"] == pytest.approx(1.03 / 1.06 - 1)
    text = "\n".join(result["lines"])
    assert "ours / peer: 1.060x -> 1.030x (-2.8 %)" in text
    assert "images/s: 50.0 -> 49.0 (-2.0 %)" in text and "MFU: 85.0 % -> 84.0 %" in text

    slower = report(ratio=1.00, mfu=0.85)
    (line,) = regression.check(slower, baseline=before)["failures"]
    assert line.startswith(f"FAILED on {AMD}: float32 ours / peer fell 5.7 %")
    assert regression.check(slower, baseline=before, max_ratio_drop=0.1)["failures"] == []
    assert regression.check(slower, baseline=before, max_ratio_drop=None)["failures"] == []

    other_kind = report(ratio=1.06, kind="Intel", date="before")
    result = regression.check(slower, baseline=other_kind)
    assert result["failures"] == [] and result["baseline"]["not_comparable"] == [
        f"machine kind Intel then {AMD}"]
    assert "not comparable: machine kind Intel then" in "\n".join(result["lines"])
    other_batch = report(ratio=1.06, batch=64)
    assert regression.check(slower, baseline=other_batch)["failures"] == []


def test_an_existing_throughput_peer_result_serves_as_baseline():
    path = os.path.join(REPO, "benchmarks", "results", "peer_intel_noamx_2026-12-02.json")
    baseline = regression.load_baseline(path)
    result = regression.check(report(kind="Intel"), baseline=baseline)
    assert result["baseline"]["ratio_vs_peer"]["before"] == pytest.approx(1.154, abs=1e-3)
    assert result["baseline"]["not_comparable"] == []


def test_a_baseline_without_a_peer_comparison_is_refused(tmp_path):
    path = tmp_path / "memory.json"
    path.write_text(json.dumps({"rows": []}))
    with pytest.raises(app.UsageError, match="no float32 comparison"):
        regression.load_baseline(str(path))
    with pytest.raises(app.UsageError, match="--baseline="):
        regression.load_baseline(str(tmp_path / "missing.json"))


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "benchmarks.regression", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.large
def test_an_existing_output_or_a_bad_baseline_is_refused_before_measuring(tmp_path):
    out = tmp_path / "before.json"
    out.write_text("{}")
    proc = _run(f"--output={out}")
    assert proc.returncode == 1 and "never overwritten" in proc.stderr
    assert "matmul peak GFLOP/s" not in proc.stderr and out.read_text() == "{}"

    new = tmp_path / "after.json"
    proc = _run(f"--output={new}", f"--baseline={out}")  # "{}": no peer comparison in it
    assert proc.returncode == 1 and "no float32 comparison" in proc.stderr
    assert "matmul peak GFLOP/s" not in proc.stderr and not new.exists()
    proc = _run(f"--output={new}", "--net=resnet_32")
    assert proc.returncode == 1 and "only implements WRN-D-K" in proc.stderr


def test_memory_above_import_arithmetic():
    assert memory.above_import(2021.0, 811.0) == pytest.approx(1210.0)
    assert memory.above_import(None, 811.0) is None and memory.above_import(2021.0, None) is None
    peer = {"modes": {"fp32+cl": {"rss_above_import_mb": 1570.0},
                      "bf16+cl": {"rss_above_import_mb": 889.0}},
            "ours": [{"precision": "float32", "best_peer_mode": "fp32+cl",
                      "rss_above_import_mb": 1210.0},
                     {"precision": "mixed_bfloat16", "best_peer_mode": "bf16+cl",
                      "rss_above_import_mb": 771.0 + 200.0},
                     {"precision": "mixed_float16", "best_peer_mode": None,
                      "rss_above_import_mb": 700.0}]}
    assert memory.compare_above_import(peer) == [
        {"precision": "float32", "ours_mb": 1210.0, "peer_mode": "fp32+cl", "peer_mb": 1570.0,
         "ours_exceeds_peer": False},
        {"precision": "mixed_bfloat16", "ours_mb": 971.0, "peer_mode": "bf16+cl",
         "peer_mb": 889.0, "ours_exceeds_peer": True},
        {"precision": "mixed_float16", "ours_mb": 700.0, "peer_mode": None, "peer_mb": None,
         "ours_exceeds_peer": None}]
    lines = memory_lines({**peer, "peer_import": "import torch"})
    assert "ours: TensorFlow+Keras, - MiB; peer: `import torch`, - MiB" in lines[0]
    assert lines[1:] == [
        "- float32: ours 1210 MiB, peer (fp32+cl) 1570 MiB: ours does not exceed the peer's.",
        "- mixed_bfloat16: ours 971 MiB, peer (bf16+cl) 889 MiB: **ours exceeds the peer's**.",
        "- mixed_float16: ours 700 MiB, peer (-) - MiB: not compared."]


@pytest.mark.large
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux's")
def test_the_import_probe_measures_a_process_that_only_imports():
    small = memory.import_peak_rss_mb(sys.executable, "pass")
    big = memory.import_peak_rss_mb(sys.executable, "b = bytearray(200 * 2**20); b[::4096] = "
                                    "b'x' * len(b[::4096])")
    assert 0 < small < big and big - small > 150
    with pytest.raises(RuntimeError, match="failed"):
        memory.import_peak_rss_mb(sys.executable, "import no_such_module_here")

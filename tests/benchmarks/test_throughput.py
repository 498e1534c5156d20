"""Smoke test of benchmarks/throughput.py's plumbing: a tiny net, one window, a stand-in peer.

No timing is asserted: only that every phase runs end to end and reports what it should.
"""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import throughput
from benchmarks.peer import best_peer_mode
from benchmarks.workers import forward_flops
from dcm_keras.networks import list_networks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_resolve_precision():
    assert throughput.resolve_precision("float32", {}) == "float32"
    assert throughput.resolve_precision("best", {"gpus": ["/gpu:0"]}) == "mixed_float16"
    assert throughput.resolve_precision("auto", {"cpu_flags": ["avx512_bf16"]}) == "mixed_bfloat16"
    assert throughput.resolve_precision("best", {"cpu_flags": ["avx2"]}) == "float32"


def test_forward_flops_counts_convolutions_and_dense():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)  # 2*8*8*3*3*3*4
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)  # 2*4*5
    model = keras.Model(inputs, outputs)
    assert forward_flops(model) == 2 * 8 * 8 * 27 * 4 + 2 * 4 * 5


@pytest.mark.large
def test_an_unknown_net_is_one_usage_error_naming_valid_networks_before_measuring(tmp_path):
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "benchmarks.throughput", "--net=nope", "--matmul_size=16",
               f"--output_json={out}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "--net=nope: Unknown network 'nope'. Valid names: " + ", ".join(list_networks()) + ".")
    assert "matmul peak" not in proc.stderr and not out.exists()


@pytest.mark.large
def test_tiny_end_to_end(tmp_path):
    peer = tmp_path / "fake_peer.py"
    # Stands in for torch_dcm_ref.py: prints a line, then images/s last, a different rate per mode
    # (its 5th argument) so that the best mode of each precision is known.
    peer.write_text("import sys\nprint('warm-up done')\n"
                    "rate = {'fp32': 10, 'fp32+cl': 15, 'bf16': 20, 'bf16+cl': 25}[sys.argv[5]]\n"
                    "print(f'{rate * int(sys.argv[3]):.2f}')\n")
    out = tmp_path / "result.json"
    command = [
        sys.executable, "-m", "benchmarks.throughput", "--net=wrn_10_1", "--num_classes=10",
        "--image_size=16", "--batch_size=4", "--windows=1", "--steps_per_window=1", "--warmup=1",
        "--precisions=float32", "--xla=off", "--configs=ce_pair,dcm,eval,data",
        "--data_examples=64", "--data_batches=2", "--data_real=", "--matmul_size=64",
        "--matmul_repeats=1", "--loss_cost_repeats=1", "--peer", f"--peer_python={sys.executable}",
        f"--peer_script={peer}", "--peer_rounds=1", "--peer_steps=1", f"--output_json={out}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())

    assert report["machine"]["tensorflow"] and report["machine"]["keras"]
    assert set(report["peak_gflops"]) >= {"float32"}
    rows = {r["config"]: r for r in report["results"]}
    assert set(rows) == {"ce_pair", "dcm", "eval"}
    for row in rows.values():
        assert row["images_per_s"] > 0 and row["rss_mb"] > 0 and row["gflop_per_image"] > 0
        assert len(row["windows"]) == 1
    # The pair with heads runs 3x the forward FLOPs of two networks with heads; eval is one plain
    # network's forward pass, so much less.
    assert rows["dcm"]["gflop_per_image"] == rows["ce_pair"]["gflop_per_image"]
    assert rows["eval"]["gflop_per_image"] < rows["dcm"]["gflop_per_image"] / 6
    assert rows["dcm"]["loss_graph_ms"] > 0
    (distill,) = report["distillation"]
    assert distill["dcm_vs_ce_step_time"] is not None
    assert report["data"]["synthetic"]["images_per_s"] > 0

    peer = report["peer"]
    assert {mode: [r["images_per_s"] for r in m["runs"]] for mode, m in peer["modes"].items()} == {
        "fp32": [40.0, 40.0], "fp32+cl": [60.0, 60.0], "bf16": [80.0, 80.0], "bf16+cl": [100.0, 100.0]}
    (ours,) = peer["ours"]
    # Ours in float32 is compared with the fastest float32 mode, not the default NCHW one.
    assert ours["precision"] == "float32" and ours["best_peer_mode"] == "fp32+cl"
    assert ours["ratio_vs_peer"] == pytest.approx(ours["images_per_s"] / 60.0)
    assert ours["ratio_vs_naive_peer"] == pytest.approx(ours["images_per_s"] / 40.0)
    assert "fp32+cl (best)" in proc.stdout and "bf16+cl (best)" in proc.stdout
    assert not peer["comparable"]  # 10 classes at 16x16: flagged, not silently compared
    assert "| dcm |" in proc.stdout and "PyTorch peer" in proc.stdout


def test_cpu_kind_names_both_machine_kinds():
    from benchmarks.machine import cpu_kind

    assert "Sapphire Rapids" in cpu_kind("GenuineIntel", {"amx_bf16", "avx512_bf16"})
    assert cpu_kind("AuthenticAMD", {"avx512_bf16"}) == "AMD EPYC (avx512_bf16)"
    assert cpu_kind("GenuineIntel", set()) == "Intel"


def test_best_peer_mode_is_per_precision():
    modes = {"fp32": {"images_per_s": 50.0}, "fp32+cl": {"images_per_s": 45.0},
             "bf16": {"images_per_s": 70.0}, "bf16+cl": {"images_per_s": 90.0}}
    assert best_peer_mode(modes, "float32") == "fp32"
    assert best_peer_mode(modes, "mixed_bfloat16") == "bf16+cl"
    assert best_peer_mode({"fp32": modes["fp32"]}, "mixed_bfloat16") is None

"""benchmarks/grouped_conv.py: the shapes come from the real network, and both variants run."""

import pytest

from benchmarks import grouped_conv

needs_grouped_gradients = pytest.mark.skipif(
    not grouped_conv.grouped_gradients_supported(),
    reason="TensorFlow cannot differentiate grouped convolutions on this CPU (no oneDNN kernel)")


def test_shapes_are_the_networks_convolutions():
    shapes = grouped_conv.conv_shapes("wrn_10_1", 32)
    # WRN-10-1: the stem, one block per stage (two 3x3 and a 1x1 projection), heads' copies.
    assert shapes[(32, 32, 3, 16, 3, 1, "SAME")] == 1
    assert sum(shapes.values()) >= 1 + 3 * 3
    for (h, w, cin, cout, k, s, padding), count in shapes.items():
        assert h <= 32 and cin >= 3 and cout >= 16 and k in (1, 3) and s in (1, 2) and count >= 1


@needs_grouped_gradients
def test_both_variants_compute_and_the_table_weights_by_count():
    separate, grouped = grouped_conv.time_shape((8, 8, 4, 8, 3, 2, "SAME"), batch=2, reps=1)
    assert separate > 0 and grouped > 0
    rows = [{"shape": [8, 8, 4, 8, 3, 1, "SAME"], "count": 3, "separate_ms": 2.0,
             "grouped_ms": 1.0},
            {"shape": [4, 4, 8, 8, 1, 1, "SAME"], "count": 1, "separate_ms": 2.0,
             "grouped_ms": 4.0}]
    text = grouped_conv.markdown({"cpu_kind": "AMD EPYC", "usable_cpus": 2}, "2026-12-02",
                                 "wrn_10_1", 2, rows)
    assert "| 8x8 | 4 -> 8 | 3x3 / 1 | 3 | 2.0 | 1.0 | 0.50 |" in text
    assert "| 4 | 8 | 7 | **0.88** |" in text  # (3 * 1 + 4) / (3 * 2 + 2)
    assert "AMD EPYC" in text


def test_the_grouped_convolution_is_the_two_networks_convolutions():
    """The lever's premise: one groups=2 call computes both networks' outputs exactly."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((2, 8, 8, 4)).astype("float32") for _ in range(2))
    w1, w2 = (rng.standard_normal((3, 3, 4, 8)).astype("float32") for _ in range(2))
    grouped = tf.nn.conv2d(np.concatenate([x1, x2], -1), np.concatenate([w1, w2], -1), 1, "SAME")
    separate = tf.concat([tf.nn.conv2d(x1, w1, 1, "SAME"), tf.nn.conv2d(x2, w2, 1, "SAME")], -1)
    np.testing.assert_allclose(grouped, separate, rtol=1e-4, atol=1e-4)


@pytest.mark.large
@needs_grouped_gradients
def test_runs_as_a_script(tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.grouped_conv", "--net=wrn_10_1", "--batch_size=2",
         "--image_size=8", "--reps=1"], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| all, weighted by count |" in result.stdout

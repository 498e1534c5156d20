"""benchmarks/profile_step.py: the op buckets, the overlap and idle arithmetic, and a real trace."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import profile_step

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name, op_type, expected", [
    ("StatefulPartitionedCall/dcm_1/wrn_16_2_3/stage1_block1_conv1_1/convolution",
     "_MklNativeConv2D", "conv forward"),
    ("StatefulPartitionedCall/gradient_tape/dcm_1/wrn_16_2_1/stage3_block1_conv1_1/convolution/"
     "Conv2DBackpropFilter", "_MklNativeConv2DBackpropFilter", "conv backward"),
    ("StatefulPartitionedCall/gradient_tape/dcm_1/wrn_16_2_1/logits_bn_1/FusedBatchNormGradV3",
     "_MklNativeFusedBatchNormGradV3", "batch norm"),
    ("StatefulPartitionedCall/dcm_1/wrn_16_2_3/stage1_block2_bn1_1/mul_1", "Mul", "batch norm"),
    ("StatefulPartitionedCall/gradient_tape/dcm_1/wrn_16_2_1/logits_relu_1/ReluGrad", "ReluGrad",
     "elementwise (networks)"),
    ("StatefulPartitionedCall/sgd/Mul_334", "Mul", "optimizer update"),
    ("StatefulPartitionedCall/LogSoftmax", "LogSoftmax", "loss, metrics, weight decay"),
    ("StatefulPartitionedCall/AddN", "AddN", "loss, metrics, weight decay"),
    ("StatefulPartitionedCall/dcm_1/wrn_16_2_3/aux1_1/BiasAdd", "_MklNativeFusedMatMul", "dense"),
    ("StatefulPartitionedCall/Cast_187", "Cast", "layout and casts"),
    ("IteratorGetNext", "IteratorGetNext", "input"),
])
def test_bucket(name, op_type, expected):
    assert profile_step.bucket(name, op_type) == expected


def test_breakdown_counts_overlap_and_idle():
    ps = 10**9  # 1 ms in picoseconds
    ops = [("dcm/net/conv/convolution", "Conv2D", 0, 4 * ps),      # 0-4 ms
           ("dcm/net/conv_bn/FusedBatchNormV3", "FusedBatchNormV3", 2 * ps, 4 * ps),  # 2-6 ms
           ("sgd/Mul", "Mul", 8 * ps, 1 * ps)]                    # 8-9 ms
    result = profile_step.breakdown(ops, steps=1, wall_s=0.010)
    assert result["buckets_ms"]["conv forward"] == pytest.approx(4)
    assert result["buckets_ms"]["batch norm"] == pytest.approx(4)
    assert result["buckets_ms"]["optimizer update"] == pytest.approx(1)
    assert result["overlap"] == pytest.approx(9 / 7)       # 9 ms of ops in 7 busy ms
    assert result["idle_share"] == pytest.approx(0.3)      # 3 of 10 ms without an op
    assert sum(result["shares"].values()) == pytest.approx(1)


@pytest.mark.large
def test_profiles_a_real_step(tmp_path):
    out = tmp_path / "profile.json"
    command = [sys.executable, "-m", "benchmarks.profile_step", "--net=wrn_10_1",
               "--num_classes=10", "--image_size=16", "--batch_size=4", "--profile_steps=1", "--warmup=1",
               "--precisions=float32", f"--output_json={out}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = json.loads(out.read_text())["results"]
    ms = result["buckets_ms"]
    # A training step runs convolutions both ways, BN, the optimizer and the loss.
    for name in ("conv forward", "conv backward", "batch norm", "optimizer update",
                 "loss, metrics, weight decay"):
        assert ms[name] > 0, (name, ms)
    assert 0 <= result["idle_share"] < 1 and result["overlap"] >= 1
    assert "| conv backward |" in proc.stdout


def test_the_peer_profile_uses_the_same_buckets():
    """benchmarks/peer_profile.py runs in the peer's venv (no absl, no TensorFlow), so it keeps
    its own copy of the bucket names: they must stay those of profile_step for the README's
    side-by-side table."""
    from benchmarks import peer_profile

    assert peer_profile.BUCKETS == profile_step.BUCKETS
    assert peer_profile.bucket("aten::convolution_backward") == "conv backward"
    assert peer_profile.bucket("aten::mkldnn_convolution") == "conv forward"
    assert peer_profile.bucket("aten::native_batch_norm_backward") == "batch norm"
    assert peer_profile.bucket("aten::_foreach_add_") == "optimizer update"
    assert peer_profile.bucket("aten::_log_softmax") == "loss, metrics, weight decay"
    assert peer_profile.bucket("aten::threshold_backward") == "elementwise (networks)"

"""Wide ResNet: WRN-28-10's parameter counts and the DCM head structure (WRN-16-2's counts and
the contract every family honours are in test_contract.py)."""

import numpy as np
import pytest

from dcm_keras import networks
from dcm_keras.networks.wrn import WideResNet


def _trainable(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.fixture(scope="module")
def wrn_28_10():
    """The big one, built once per form: (with heads, without heads)."""
    return (networks.build("wrn_28_10", num_classes=100),
            networks.build("wrn_28_10", num_classes=100, aux_heads=False))


@pytest.mark.large  # builds WRN-28-10 twice (WRN-16-2's counts are in the fast loop)
def test_wrn_28_10_param_counts(wrn_28_10):
    with_heads, without = wrn_28_10
    assert _trainable(without) == 36_536_884
    assert _trainable(with_heads) == 164_146_364


@pytest.mark.large
def test_wrn_28_10_head_structure(wrn_28_10):
    model = wrn_28_10[0]
    assert model.name == "wrn_28_10" and (model.depth, model.width) == (28, 10)
    # n = 4: aux1 runs 4 blocks of stage 2 and n // 2 = 2 of stage 3, aux2 4 blocks at 128K.
    assert model.get_layer("aux1_stage2_block4_add").output.shape == (None, 16, 16, 320)
    assert model.get_layer("aux1_stage3_block2_add").output.shape == (None, 8, 8, 640)
    assert "aux1_stage3_block3_add" not in {layer.name for layer in model.layers}
    assert model.get_layer("aux2_stage3_block4_add").output.shape == (None, 8, 8, 1280)
    assert model.get_layer("stage3_block4_add").output.shape == (None, 8, 8, 640)
    for prefix in ["aux1", "aux2", "logits"]:
        assert model.get_layer(f"{prefix}_bn") is not None  # pre-activation classifier
        assert model.get_layer(prefix).units == 100


@pytest.mark.parametrize("depth", [9, 15, 23, 0, 28.0])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        WideResNet(depth=depth, width=1, num_classes=10)


def test_bad_width():
    with pytest.raises(ValueError, match="width"):
        WideResNet(depth=10, width=0, num_classes=10)

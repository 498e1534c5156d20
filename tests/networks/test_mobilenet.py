"""CIFAR MobileNet: the DCM head structure (the released model's parameter counts and the
contract every family honours are in test_contract.py)."""

import keras
import numpy as np
import pytest

from dcm_keras.networks.mobilenet import MobileNet


INPUT = (16, 16, 3)  # as test_contract.py, which shares these builds


@pytest.fixture
def mobilenet(built_network):
    """(with heads, without heads), 100 classes."""
    return (built_network("mobilenet", 100, INPUT), built_network("mobilenet", 100, INPUT, False))


def test_registered_class_and_name(mobilenet):
    model = mobilenet[0]
    assert isinstance(model, MobileNet) and model.name == "mobilenet"


def _block_outputs(model, prefix):
    """(height, channels) at the end of every block of `prefix`, in order."""
    shapes, i = [], 1
    names = {layer.name for layer in model.layers}
    while f"{prefix}_block{i}_pwrelu" in names:
        shape = model.get_layer(f"{prefix}_block{i}_pwrelu").output.shape
        shapes.append((shape[1], shape[3]))
        i += 1
    return shapes


def test_block_layout(mobilenet):
    model = mobilenet[0]
    assert _block_outputs(model, "layer1") == [(16, 64), (16, 128), (16, 128), (16, 256),
                                               (16, 256)]
    assert _block_outputs(model, "layer2") == [(8, 512)] * 6
    assert _block_outputs(model, "layer3") == [(4, 1024)] * 2
    assert _block_outputs(model, "aux1") == [(8, 512)] * 4 + [(4, 1024)] * 2
    assert _block_outputs(model, "aux2") == [(4, 2048)] * 2


def test_block_is_depthwise_then_pointwise(mobilenet):
    model = mobilenet[0]
    dw = model.get_layer("layer2_block1_dwconv")
    assert isinstance(dw, keras.layers.DepthwiseConv2D)
    assert dw.kernel_size == (3, 3) and dw.strides == (2, 2)
    pw = model.get_layer("layer2_block1_pwconv")
    assert pw.kernel_size == (1, 1) and pw.strides == (1, 1) and pw.filters == 512
    stem = model.get_layer("stem_conv")
    assert stem.kernel_size == (3, 3) and stem.strides == (1, 1) and stem.filters == 32


def test_classifiers_pool_without_extra_bn(mobilenet):
    model = mobilenet[0]
    names = {layer.name for layer in model.layers}
    for prefix in ["aux1", "aux2", "logits"]:
        assert f"{prefix}_bn" not in names
        assert isinstance(model.get_layer(f"{prefix}_pool"), keras.layers.GlobalAveragePooling2D)
        assert model.get_layer(prefix).units == 100


def test_untrained_logits_do_not_vanish(mobilenet):
    # Depthwise kernels need a fan-in of 9; Keras's default He-normal would give ~1e-16 logits.
    dw = mobilenet[0].get_layer("layer3_block1_dwconv")
    assert np.std(keras.ops.convert_to_numpy(dw.kernel)) == pytest.approx(np.sqrt(2 / 9), rel=0.1)
    x = np.random.default_rng(0).normal(size=(4,) + INPUT).astype("float32")
    out = mobilenet[1](x, training=False)
    assert np.std(keras.ops.convert_to_numpy(out["logits"])) > 1e-2

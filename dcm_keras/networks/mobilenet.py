"""CIFAR MobileNet (the variant in the DCM paper's released code) with its auxiliary heads.

Main path: 3x3 stem conv to 32 channels (stride 1), BN, ReLU; then three layers of depthwise-separable
blocks, then global average pooling and a dense layer. A block is a 3x3 depthwise conv (stride s),
BN, ReLU, a 1x1 conv, BN, ReLU; convolutions have no bias. Depthwise kernels are He-normal with
PyTorch's fan-in of 9 (see `Layers.depthwise_conv`), the other kernels He-normal as everywhere.
- layer 1: blocks of 64, 128, 128, 256, 256 channels, all stride 1;
- layer 2: 512 (stride 2), then five more of 512;
- layer 3: 1024 (stride 2), 1024.
Blocks end in BN-ReLU, so the classifiers pool the last block's output directly (no extra BN).

Auxiliary heads, exactly as in the paper's released code:
- `aux1` branches after layer 1 and runs blocks 512 (stride 2), 512, 512, 512, then 1024 (stride 2),
  1024, then pooling and a dense layer;
- `aux2` branches after layer 2 and runs blocks 2048 (stride 2), 2048, then pooling and a dense layer.

With 100 classes the network has 3,309,476 trainable parameters (11,431,276 with heads), the released
model's counts.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import keras

from dcm_keras.networks.common import (Backbone, DEFAULT_WEIGHT_DECAY, Layers,
                                       check_common_args)
from dcm_keras.networks.registry import register_network

STEM_FILTERS = 32
# (filters, strides) of each block.
LAYER1: Tuple[Tuple[int, int], ...] = ((64, 1), (128, 1), (128, 1), (256, 1), (256, 1))
LAYER2: Tuple[Tuple[int, int], ...] = ((512, 2),) + ((512, 1),) * 5
LAYER3: Tuple[Tuple[int, int], ...] = ((1024, 2), (1024, 1))
AUX1: Tuple[Tuple[int, int], ...] = ((512, 2), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
AUX2: Tuple[Tuple[int, int], ...] = ((2048, 2), (2048, 1))


def _block(layers: Layers, x, filters: int, strides: int, prefix: str):
    x = layers.depthwise_conv(3, strides, name=f"{prefix}_dwconv")(x)
    x = layers.bn(f"{prefix}_dwbn")(x)
    x = layers.relu(f"{prefix}_dwrelu")(x)
    x = layers.conv(filters, 1, 1, name=f"{prefix}_pwconv")(x)
    x = layers.bn(f"{prefix}_pwbn")(x)
    return layers.relu(f"{prefix}_pwrelu")(x)


def _layer(layers: Layers, x, spec: Sequence[Tuple[int, int]], prefix: str):
    for i, (filters, strides) in enumerate(spec):
        x = _block(layers, x, filters, strides, f"{prefix}_block{i + 1}")
    return x


@keras.saving.register_keras_serializable(package="dcm_keras")
class MobileNet(Backbone):
    """The DCM code's CIFAR MobileNet, optionally with the DCM auxiliary heads.

    Args:
        num_classes: classes of every head.
        input_shape: (height, width, channels).
        aux_heads: attach `aux1` and `aux2` (see module docstring).
        weight_decay: coupled L2 coefficient on every trainable weight.
        synchronized_bn: cross-replica batch statistics under tf.distribute.
    """

    def __init__(self, num_classes: int = 100, input_shape=(32, 32, 3), aux_heads: bool = True,
                 weight_decay: float = DEFAULT_WEIGHT_DECAY, synchronized_bn: bool = False,
                 **kwargs):
        input_shape = check_common_args(num_classes, input_shape)
        layers = Layers(weight_decay, synchronized_bn, dtype=kwargs.get("dtype"))

        # === Functional Model ===
        inputs = keras.Input(shape=input_shape, name="images")
        x = layers.conv(STEM_FILTERS, 3, 1, name="stem_conv")(inputs)
        x = layers.bn("stem_bn")(x)
        x = layers.relu("stem_relu")(x)
        layer1 = _layer(layers, x, LAYER1, "layer1")
        layer2 = _layer(layers, layer1, LAYER2, "layer2")
        layer3 = _layer(layers, layer2, LAYER3, "layer3")
        outputs = {}
        if aux_heads:
            h = _layer(layers, layer1, AUX1, "aux1")
            outputs["aux1"] = layers.classifier(h, num_classes, "aux1", pre_activate=False)
            h = _layer(layers, layer2, AUX2, "aux2")
            outputs["aux2"] = layers.classifier(h, num_classes, "aux2", pre_activate=False)
        outputs["logits"] = layers.classifier(layer3, num_classes, "logits", pre_activate=False)
        kwargs.setdefault("name", "mobilenet")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self._keep_common_config(num_classes, input_shape, aux_heads, weight_decay,
                                 synchronized_bn)


@register_network("mobilenet", family="mobilenet")
def mobilenet(**kwargs) -> MobileNet:
    """The DCM paper's CIFAR MobileNet."""
    return MobileNet(**kwargs)

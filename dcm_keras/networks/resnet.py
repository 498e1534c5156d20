"""Post-activation ResNets (He et al., 2016) for CIFAR and ImageNet, with DCM-style auxiliary heads.

CIFAR ResNet-D (`CifarResNet`; resnet20/32/56/110): 3x3 stem conv to 16 channels, BN, ReLU, three
stages of n = (D - 2) / 6 basic blocks at widths 16, 32, 64 (stages 2 and 3 stride 2 in their first
block), then global average pooling and a dense layer. A basic block is 3x3 conv (stride s), BN, ReLU,
3x3 conv, BN, added to the shortcut, then ReLU. The shortcut is the identity or, when the shape
changes, a 1x1 conv (stride s) followed by BN: the paper's option B (the CIFAR paper itself used the
parameter-free option A, zero-padded identity, so counts are slightly higher than its table).

ImageNet ResNet (`ResNet`; resnet18/34 with basic blocks, resnet50 with bottleneck blocks): 7x7 stem
conv to 64 channels (stride 2), BN, ReLU, 3x3 max pool (stride 2), four stages at widths 64, 128, 256,
512 with [2, 2, 2, 2], [3, 4, 6, 3] and [3, 4, 6, 3] blocks (stages 2-4 stride 2 in their first
block), then global average pooling and a dense layer. A bottleneck block is 1x1 conv, BN, ReLU, 3x3
conv (stride s), BN, ReLU, 1x1 conv to 4x the width, BN, added to the shortcut, then ReLU; the stride
sits on the 3x3 conv as in torchvision ("ResNet v1.5"). Projection shortcuts are 1x1 conv + BN.
With 1000 classes and no heads the trainable parameter counts equal torchvision's: resnet18
11,689,512, resnet34 21,797,672, resnet50 25,557,032. Every convolution uses "same" padding, so on
even input sizes a strided conv pads one more row/column at the bottom/right than torchvision's
symmetric padding does; output sizes and parameter counts are unchanged. Any input size works.

Convolutions have no bias. Blocks end in ReLU, so every classifier pools the last block's output
directly (no extra BN).

Auxiliary heads, in the same stage-replica spirit as the paper's WRN heads (each head is a copy of the
rest of the network from its branch point on; these heads are this project's design, the paper's
released code has none for ResNets):
- CIFAR: `aux1` branches after stage 1 and runs its own stage 2 (n blocks, 32 wide) and its own
  stage 3 with max(n // 2, 1) blocks (64 wide); `aux2` branches after stage 2 and runs its own
  stage 3 at twice the width (n blocks, 128 wide).
- ImageNet: `aux1` branches after stage 2 and runs its own stage 3 (all its blocks) and its own
  stage 4 with max(blocks // 2, 1) blocks; `aux2` branches after stage 3 and runs its own stage 4
  (all its blocks) at the same width, since the last stage is already wide.
Each head ends like the main path: global average pooling and a dense layer.
"""

from __future__ import annotations

from typing import Sequence

import keras

from dcm_keras.errors import UserError
from dcm_keras.networks.common import (Backbone, DEFAULT_WEIGHT_DECAY, Layers,
                                       check_common_args)
from dcm_keras.networks.registry import register_network

BOTTLENECK_EXPANSION = 4
CIFAR_WIDTHS = (16, 32, 64)
IMAGENET_WIDTHS = (64, 128, 256, 512)
IMAGENET_BLOCK_COUNTS = {
    "resnet18": ((2, 2, 2, 2), False),
    "resnet34": ((3, 4, 6, 3), False),
    "resnet50": ((3, 4, 6, 3), True),
}


def _shortcut(layers: Layers, x, filters: int, strides: int, prefix: str):
    if x.shape[-1] == filters and strides == 1:
        return x
    s = layers.conv(filters, 1, strides, name=f"{prefix}_shortcut_conv")(x)
    return layers.bn(f"{prefix}_shortcut_bn")(s)


def _basic_block(layers: Layers, x, width: int, strides: int, prefix: str):
    y = layers.conv(width, 3, strides, name=f"{prefix}_conv1")(x)
    y = layers.bn(f"{prefix}_bn1")(y)
    y = layers.relu(f"{prefix}_relu1")(y)
    y = layers.conv(width, 3, 1, name=f"{prefix}_conv2")(y)
    y = layers.bn(f"{prefix}_bn2")(y)
    shortcut = _shortcut(layers, x, width, strides, prefix)
    y = keras.layers.Add(name=f"{prefix}_add", dtype=layers.dtype)([y, shortcut])
    return layers.relu(f"{prefix}_out")(y)


def _bottleneck_block(layers: Layers, x, width: int, strides: int, prefix: str):
    filters = width * BOTTLENECK_EXPANSION
    y = layers.conv(width, 1, 1, name=f"{prefix}_conv1")(x)
    y = layers.bn(f"{prefix}_bn1")(y)
    y = layers.relu(f"{prefix}_relu1")(y)
    y = layers.conv(width, 3, strides, name=f"{prefix}_conv2")(y)
    y = layers.bn(f"{prefix}_bn2")(y)
    y = layers.relu(f"{prefix}_relu2")(y)
    y = layers.conv(filters, 1, 1, name=f"{prefix}_conv3")(y)
    y = layers.bn(f"{prefix}_bn3")(y)
    shortcut = _shortcut(layers, x, filters, strides, prefix)
    y = keras.layers.Add(name=f"{prefix}_add", dtype=layers.dtype)([y, shortcut])
    return layers.relu(f"{prefix}_out")(y)


def _stage(layers: Layers, x, width: int, blocks: int, strides: int, prefix: str,
           bottleneck: bool = False):
    block = _bottleneck_block if bottleneck else _basic_block
    for i in range(blocks):
        x = block(layers, x, width, strides if i == 0 else 1, f"{prefix}_block{i + 1}")
    return x


def _stem(layers: Layers, x, filters: int, kernel_size: int, strides: int):
    x = layers.conv(filters, kernel_size, strides, name="stem_conv")(x)
    x = layers.bn("stem_bn")(x)
    return layers.relu("stem_relu")(x)


@keras.saving.register_keras_serializable(package="dcm_keras")
class CifarResNet(Backbone):
    """ResNet-`depth` for small images (He et al. 2016, Sec. 4.2), optionally with aux heads.

    Args:
        depth: total depth D = 6n + 2 (20, 32, 56, 110, ...).
        num_classes: classes of every head.
        input_shape: (height, width, channels).
        aux_heads: attach `aux1` and `aux2` (see module docstring).
        weight_decay: coupled L2 coefficient on every trainable weight.
        synchronized_bn: cross-replica batch statistics under tf.distribute.
    """

    def __init__(self, depth: int = 56, num_classes: int = 100, input_shape=(32, 32, 3),
                 aux_heads: bool = True, weight_decay: float = DEFAULT_WEIGHT_DECAY,
                 synchronized_bn: bool = False, **kwargs):
        input_shape = check_common_args(num_classes, input_shape)
        if (not isinstance(depth, int) or isinstance(depth, bool) or depth < 8
                or (depth - 2) % 6):
            raise UserError(
                f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (8, 20, 32, 56, 110, ...), "
                f"got {depth!r}.")
        n = (depth - 2) // 6
        widths = CIFAR_WIDTHS
        layers = Layers(weight_decay, synchronized_bn, dtype=kwargs.get("dtype"))

        # === Functional Model ===
        inputs = keras.Input(shape=input_shape, name="images")
        x = _stem(layers, inputs, widths[0], 3, 1)
        stage1 = _stage(layers, x, widths[0], n, 1, "stage1")
        stage2 = _stage(layers, stage1, widths[1], n, 2, "stage2")
        stage3 = _stage(layers, stage2, widths[2], n, 2, "stage3")
        outputs = {}
        if aux_heads:
            h = _stage(layers, stage1, widths[1], n, 2, "aux1_stage2")
            h = _stage(layers, h, widths[2], max(n // 2, 1), 2, "aux1_stage3")
            outputs["aux1"] = layers.classifier(h, num_classes, "aux1", pre_activate=False)
            h = _stage(layers, stage2, 2 * widths[2], n, 2, "aux2_stage3")
            outputs["aux2"] = layers.classifier(h, num_classes, "aux2", pre_activate=False)
        outputs["logits"] = layers.classifier(stage3, num_classes, "logits", pre_activate=False)
        kwargs.setdefault("name", f"resnet{depth}")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.depth = depth
        self._keep_common_config(num_classes, input_shape, aux_heads, weight_decay,
                                 synchronized_bn)

    def get_config(self):
        return {
            **super().get_config(),
            "depth": self.depth,
        }


@keras.saving.register_keras_serializable(package="dcm_keras")
class ResNet(Backbone):
    """ImageNet-style ResNet (7x7 stem, max pool, four stages), optionally with aux heads.

    Args:
        block_counts: blocks in each of the four stages, e.g. (3, 4, 6, 3).
        bottleneck: bottleneck blocks (expansion 4) instead of basic blocks.
        num_classes: classes of every head.
        input_shape: (height, width, channels); any spatial size works.
        aux_heads: attach `aux1` and `aux2` (see module docstring).
        weight_decay: coupled L2 coefficient on every trainable weight.
        synchronized_bn: cross-replica batch statistics under tf.distribute.
    """

    def __init__(self, block_counts: Sequence[int] = (2, 2, 2, 2), bottleneck: bool = False,
                 num_classes: int = 1000, input_shape=(224, 224, 3), aux_heads: bool = True,
                 weight_decay: float = DEFAULT_WEIGHT_DECAY, synchronized_bn: bool = False,
                 **kwargs):
        input_shape = check_common_args(num_classes, input_shape)
        block_counts = tuple(block_counts)
        if len(block_counts) != 4 or not all(
                isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in block_counts):
            raise UserError(
                f"block_counts must be four positive integers, got {block_counts!r}.")
        widths = IMAGENET_WIDTHS
        layers = Layers(weight_decay, synchronized_bn, dtype=kwargs.get("dtype"))

        def stage(x, index: int, blocks: int, prefix: str, width_scale: int = 1):
            return _stage(layers, x, widths[index] * width_scale, blocks, 1 if index == 0 else 2,
                          prefix, bottleneck)

        # === Functional Model ===
        inputs = keras.Input(shape=input_shape, name="images")
        x = _stem(layers, inputs, widths[0], 7, 2)
        x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool",
                                      dtype=layers.dtype)(x)
        stage1 = stage(x, 0, block_counts[0], "stage1")
        stage2 = stage(stage1, 1, block_counts[1], "stage2")
        stage3 = stage(stage2, 2, block_counts[2], "stage3")
        stage4 = stage(stage3, 3, block_counts[3], "stage4")
        outputs = {}
        if aux_heads:
            h = stage(stage2, 2, block_counts[2], "aux1_stage3")
            h = stage(h, 3, max(block_counts[3] // 2, 1), "aux1_stage4")
            outputs["aux1"] = layers.classifier(h, num_classes, "aux1", pre_activate=False)
            h = stage(stage3, 3, block_counts[3], "aux2_stage4")
            outputs["aux2"] = layers.classifier(h, num_classes, "aux2", pre_activate=False)
        outputs["logits"] = layers.classifier(stage4, num_classes, "logits", pre_activate=False)
        depth = (3 if bottleneck else 2) * sum(block_counts) + 2
        kwargs.setdefault("name", f"resnet{depth}")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.block_counts = block_counts
        self.bottleneck = bottleneck
        self._keep_common_config(num_classes, input_shape, aux_heads, weight_decay,
                                 synchronized_bn)

    def get_config(self):
        return {
            **super().get_config(),
            "block_counts": list(self.block_counts),
            "bottleneck": self.bottleneck,
        }


# Named builders, smallest first in each family (the registry's representative is the first).
@register_network("resnet20", family="cifar_resnet")
def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 for small images (n = 3 blocks per stage)."""
    return CifarResNet(depth=20, **kwargs)


@register_network("resnet32", family="cifar_resnet")
def resnet32(**kwargs) -> CifarResNet:
    """ResNet-32 for small images (n = 5 blocks per stage)."""
    return CifarResNet(depth=32, **kwargs)


@register_network("resnet56", family="cifar_resnet")
def resnet56(**kwargs) -> CifarResNet:
    """ResNet-56 for small images (n = 9 blocks per stage)."""
    return CifarResNet(depth=56, **kwargs)


@register_network("resnet110", family="cifar_resnet")
def resnet110(**kwargs) -> CifarResNet:
    """ResNet-110 for small images (n = 18 blocks per stage)."""
    return CifarResNet(depth=110, **kwargs)


@register_network("resnet18", family="resnet")
def resnet18(**kwargs) -> ResNet:
    """ImageNet ResNet-18: basic blocks, (2, 2, 2, 2)."""
    return ResNet(*IMAGENET_BLOCK_COUNTS["resnet18"], **kwargs)


@register_network("resnet34", family="resnet")
def resnet34(**kwargs) -> ResNet:
    """ImageNet ResNet-34: basic blocks, (3, 4, 6, 3)."""
    return ResNet(*IMAGENET_BLOCK_COUNTS["resnet34"], **kwargs)


@register_network("resnet50", family="resnet")
def resnet50(**kwargs) -> ResNet:
    """ImageNet ResNet-50: bottleneck blocks, (3, 4, 6, 3)."""
    return ResNet(*IMAGENET_BLOCK_COUNTS["resnet50"], **kwargs)

"""Pre-activation Wide ResNet (WRN-D-K) with the DCM paper's auxiliary heads.

Main path (Zagoruyko & Komodakis): 3x3 stem conv to 16 channels, three stages of n = (D - 4) / 6
pre-activation blocks at widths 16K, 32K, 64K (stages 2 and 3 stride 2 in their first block), then
BN-ReLU, global average pooling and a dense layer. A block is BN-ReLU, 3x3 conv (stride s), BN-ReLU,
3x3 conv; its shortcut is the identity or, when the width changes, a 1x1 conv (stride s) applied to
the pre-activated input. Convolutions have no bias.

Auxiliary heads, exactly as in the paper's released code:
- `aux1` branches after stage 1 and runs its own stage 2 (n blocks, 32K) and its own stage 3 with
  n // 2 blocks (64K), then BN-ReLU, pooling and a dense layer;
- `aux2` branches after stage 2 and runs its own stage 3 at twice the width (n blocks, 128K), then
  BN-ReLU, pooling and a dense layer.

With 100 classes WRN-28-10 has 36,536,884 trainable parameters (164,146,364 with heads) and
WRN-16-2 has 703,284 (3,038,908), the released models' counts.
"""

from __future__ import annotations

import keras

from dcm_keras.errors import UserError
from dcm_keras.networks.common import (Backbone, DEFAULT_WEIGHT_DECAY, Layers,
                                       check_common_args)
from dcm_keras.networks.registry import register_network


def _block(layers: Layers, x, filters: int, strides: int, prefix: str):
    in_filters = x.shape[-1]
    o = layers.bn(f"{prefix}_bn1")(x)
    o = layers.relu(f"{prefix}_relu1")(o)
    y = layers.conv(filters, 3, strides, name=f"{prefix}_conv1")(o)
    y = layers.bn(f"{prefix}_bn2")(y)
    y = layers.relu(f"{prefix}_relu2")(y)
    y = layers.conv(filters, 3, 1, name=f"{prefix}_conv2")(y)
    if in_filters != filters or strides != 1:
        shortcut = layers.conv(filters, 1, strides, name=f"{prefix}_shortcut")(o)
    else:
        shortcut = x
    return keras.layers.Add(name=f"{prefix}_add", dtype=layers.dtype)([y, shortcut])


def _stage(layers: Layers, x, filters: int, blocks: int, strides: int, prefix: str):
    for i in range(blocks):
        x = _block(layers, x, filters, strides if i == 0 else 1, f"{prefix}_block{i + 1}")
    return x


@keras.saving.register_keras_serializable(package="dcm_keras")
class WideResNet(Backbone):
    """WRN-`depth`-`width` for small images, optionally with the DCM auxiliary heads.

    Args:
        depth: total depth D = 6n + 4 (16, 28, 40, ...).
        width: widening factor K.
        num_classes: classes of every head.
        input_shape: (height, width, channels).
        aux_heads: attach `aux1` and `aux2` (see module docstring).
        weight_decay: coupled L2 coefficient on every trainable weight.
        synchronized_bn: cross-replica batch statistics under tf.distribute.
    """

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 100,
                 input_shape=(32, 32, 3), aux_heads: bool = True,
                 weight_decay: float = DEFAULT_WEIGHT_DECAY, synchronized_bn: bool = False,
                 **kwargs):
        input_shape = check_common_args(num_classes, input_shape)
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise UserError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 28, 40, ...), got {depth!r}.")
        if not isinstance(width, int) or width < 1:
            raise UserError(f"WRN width must be a positive integer, got {width!r}.")
        n = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        layers = Layers(weight_decay, synchronized_bn, dtype=kwargs.get("dtype"))

        # === Functional Model ===
        inputs = keras.Input(shape=input_shape, name="images")
        x = layers.conv(16, 3, 1, name="stem_conv")(inputs)
        stage1 = _stage(layers, x, widths[0], n, 1, "stage1")
        stage2 = _stage(layers, stage1, widths[1], n, 2, "stage2")
        stage3 = _stage(layers, stage2, widths[2], n, 2, "stage3")
        outputs = {}
        if aux_heads:
            h = _stage(layers, stage1, widths[1], n, 2, "aux1_stage2")
            h = _stage(layers, h, widths[2], max(n // 2, 1), 2, "aux1_stage3")
            outputs["aux1"] = layers.classifier(h, num_classes, "aux1")
            h = _stage(layers, stage2, 2 * widths[2], n, 2, "aux2_stage3")
            outputs["aux2"] = layers.classifier(h, num_classes, "aux2")
        outputs["logits"] = layers.classifier(stage3, num_classes, "logits")
        kwargs.setdefault("name", f"wrn_{depth}_{width}")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.depth = depth
        self.width = width
        self._keep_common_config(num_classes, input_shape, aux_heads, weight_decay,
                                 synchronized_bn)

    def get_config(self):
        return {
            **super().get_config(),
            "depth": self.depth,
            "width": self.width,
        }


@register_network("wrn_D_K", family="wrn", regex=r"wrn_(\d+)_(\d+)", example="wrn_10_1")
def wide_resnet(match, **kwargs) -> WideResNet:
    """`wrn_D_K`: WRN-D-K, e.g. "wrn_28_10" (the paper's) or "wrn_10_1" (the smallest)."""
    return WideResNet(depth=int(match.group(1)), width=int(match.group(2)), **kwargs)

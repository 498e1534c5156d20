"""Layer conventions shared by every network family.

The paper's released code is PyTorch, so the defaults here reproduce PyTorch's training semantics:
BatchNormalization momentum 0.9 (PyTorch's 0.1) and epsilon 1e-5, He-normal (fan-in) kernels for
convolutions and dense layers, and coupled L2 weight decay on every trainable weight (kernels, biases
and BN gamma/beta alike).

Weight decay is added as `keras.regularizers.L2(weight_decay / 2)` on each weight: its gradient is
`weight_decay * w`, exactly what `torch.optim.SGD(weight_decay=...)` adds to the gradient before
momentum. Keras's own optimizer `weight_decay` argument is decoupled (AdamW-style) and is *not*
equivalent under momentum, which is why it is not used.
"""

from __future__ import annotations

from typing import Optional

import keras

from dcm_keras.errors import UserError

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
DEFAULT_WEIGHT_DECAY = 5e-4


# cuDNN refuses batch-norm epsilons below this; TensorFlow's own fused_batch_norm clamps to it.
_CUDNN_MIN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="dcm_keras")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization`, computed by TensorFlow's fused batch-norm kernel.

    The same layer (same arguments, weights and config) and the same maths: training normalises
    with the biased batch variance and updates the moving averages with the batch mean and the
    *biased* batch variance, inference uses the moving statistics. Keras 3 builds BN on the
    TensorFlow backend from separate ops (moments, then a multiply-add, all in float32 even under
    mixed precision) and differentiates each of them; `FusedBatchNormV3` does the forward pass in
    one kernel and the backward pass in one more, reads bfloat16/float16 activations directly
    (statistics still in float32) and lets oneDNN fuse the following ReLU. The kernel's batch
    variance has Bessel's correction, which is undone before the moving-average update.

    Falls back to Keras's own computation on other backends and wherever the fused kernel does
    not apply: masks, synchronised or renormalised BN, no scale or center, inputs that are not
    4-D channels-last float32/bfloat16/float16, and a GPU with epsilon below cuDNN's minimum.
    """

    def _fusable(self, inputs, mask) -> bool:
        if (keras.backend.backend() != "tensorflow" or mask is not None or self.synchronized
                or self.renorm or not (self.scale and self.center)):
            return False
        if len(inputs.shape) != 4 or self.axis not in (-1, 3):
            return False
        if keras.backend.standardize_dtype(inputs.dtype) not in ("float32", "bfloat16", "float16"):
            return False
        if any(keras.backend.standardize_dtype(v.dtype) != "float32" for v in
               (self.gamma, self.beta, self.moving_mean, self.moving_variance)):
            return False
        if self.epsilon < _CUDNN_MIN_EPSILON:
            import tensorflow as tf

            return not tf.config.list_logical_devices("GPU")
        return True

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        scale = tf.convert_to_tensor(self.gamma)
        offset = tf.convert_to_tensor(self.beta)
        if training and self.trainable:
            outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=scale, offset=offset, mean=tf.constant([], tf.float32),
                variance=tf.constant([], tf.float32), epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
            variance = tf.where(count > 1.0, variance * ((count - 1.0) / count), 0.0)
            momentum = self.momentum
            self.moving_mean.assign(
                tf.convert_to_tensor(self.moving_mean) * momentum + mean * (1.0 - momentum))
            self.moving_variance.assign(
                tf.convert_to_tensor(self.moving_variance) * momentum
                + variance * (1.0 - momentum))
        else:
            outputs, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=scale, offset=offset,
                mean=tf.convert_to_tensor(self.moving_mean),
                variance=tf.convert_to_tensor(self.moving_variance), epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=False)
        return tf.cast(outputs, self.compute_dtype)


def l2_regularizer(weight_decay: float) -> Optional[keras.regularizers.Regularizer]:
    """Returns the L2 regularizer whose gradient is `weight_decay * w` (None when 0)."""
    if weight_decay < 0:
        raise UserError(f"weight_decay must be >= 0, got {weight_decay}.")
    return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


class Layers:
    """Factory for the conv / BN / dense layers of one network, with its shared settings.

    Args:
        weight_decay: coupled L2 coefficient applied to every trainable weight.
        synchronized_bn: use cross-replica (synchronised) batch statistics under tf.distribute.
            TensorFlow only: Keras refuses `synchronized=True` on other backends, and under
            JAX's `keras.distribution.DataParallel` BatchNormalization already computes its
            statistics over the global batch, so there the flag is recorded but not applied.
        dtype: optional dtype policy for every layer (None follows the global policy).
    """

    def __init__(self, weight_decay: float = DEFAULT_WEIGHT_DECAY, synchronized_bn: bool = False,
                 dtype=None):
        self.weight_decay = weight_decay
        self.synchronized_bn = synchronized_bn
        self.dtype = dtype
        self._reg = l2_regularizer(weight_decay)

    def conv(self, filters: int, kernel_size: int, strides: int = 1, name: str = None,
             use_bias: bool = False) -> keras.layers.Conv2D:
        return keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", use_bias=use_bias,
            kernel_initializer="he_normal", kernel_regularizer=self._reg,
            bias_regularizer=self._reg if use_bias else None, name=name, dtype=self.dtype)

    def depthwise_conv(self, kernel_size: int, strides: int = 1, name: str = None
                       ) -> keras.layers.DepthwiseConv2D:
        # Keras's "he_normal" takes the fan-in of a (k, k, C, 1) depthwise kernel as k*k*C, which
        # shrinks every depthwise layer by sqrt(C) until activations vanish. Each output sees k*k
        # inputs (PyTorch's fan-in), which is Keras's fan-out for this kernel shape.
        return keras.layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding="same", use_bias=False,
            depthwise_initializer=keras.initializers.VarianceScaling(
                2.0, "fan_out", "truncated_normal"),
            depthwise_regularizer=self._reg, name=name, dtype=self.dtype)

    def bn(self, name: str = None) -> keras.layers.BatchNormalization:
        return BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
            synchronized=self.synchronized_bn and keras.backend.backend() == "tensorflow",
            beta_regularizer=self._reg, gamma_regularizer=self._reg, name=name, dtype=self.dtype)

    def dense(self, units: int, name: str = None) -> keras.layers.Dense:
        return keras.layers.Dense(
            units, kernel_initializer="he_normal", kernel_regularizer=self._reg,
            bias_regularizer=self._reg, name=name, dtype=self.dtype)

    def relu(self, name: str = None) -> keras.layers.ReLU:
        return keras.layers.ReLU(name=name, dtype=self.dtype)

    def classifier(self, x, num_classes: int, prefix: str, pre_activate: bool = True):
        """BN-ReLU (optional), global average pooling and a dense layer named `prefix`."""
        if pre_activate:
            x = self.bn(f"{prefix}_bn")(x)
            x = self.relu(f"{prefix}_relu")(x)
        x = keras.layers.GlobalAveragePooling2D(name=f"{prefix}_pool", dtype=self.dtype)(x)
        return self.dense(num_classes, name=prefix)(x)


def check_common_args(num_classes: int, input_shape) -> tuple:
    """Validates the arguments every builder shares and returns `input_shape` as a tuple."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise UserError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise UserError(
            f"input_shape must be (height, width, channels), got {input_shape!r}.")
    return input_shape


class Backbone(keras.Model):
    """Base of the registered families: the constructor arguments every family shares.

    Subclasses build their functional graph in `__init__`, call `super().__init__(inputs=...,
    outputs=...)`, then `_keep_common_config(...)`, and add their own arguments to `get_config`.
    """

    def _keep_common_config(self, num_classes: int, input_shape: tuple, aux_heads: bool,
                            weight_decay: float, synchronized_bn: bool) -> None:
        # `input_shape` is not stored: Keras's own `input_shape` property already holds it (with
        # the batch axis), so the constructor argument and the attribute share one name.
        del input_shape
        self.num_classes = num_classes
        self.aux_heads = aux_heads
        self.weight_decay = weight_decay
        self.synchronized_bn = synchronized_bn

    @property
    def image_shape(self) -> tuple:
        """`(height, width, channels)`: `input_shape` without its batch axis (an older name)."""
        return tuple(self.input_shape[1:])

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "num_classes": self.num_classes,
            "input_shape": tuple(self.input_shape[1:]),
            "aux_heads": self.aux_heads,
            "weight_decay": self.weight_decay,
            "synchronized_bn": self.synchronized_bn,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

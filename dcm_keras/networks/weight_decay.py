"""Coupled L2 weight decay on every trainable weight of any functional model, kept in its config.

Setting `variable.regularizer` by hand works until the model is saved: the regularizer is not part
of any config, so a reloaded (or cloned) model trains without it. `with_weight_decay` instead
rebuilds the model with `keras.models.clone_model`, writing the regularizer into each layer's
config (`kernel_regularizer`, `gamma_regularizer`, ...). A layer that offers no such argument for
some trainable weight (e.g. ConvNeXt's `LayerScale`) is wrapped in `WeightDecay`, a registered
wrapper whose config holds the coefficient. The regularizer is `L2(weight_decay / 2)`: its
gradient is `weight_decay * w`, as `torch.optim.SGD(weight_decay=...)`.
"""

from __future__ import annotations

from typing import Optional

import keras

from dcm_keras._keras_compat import Functional
from dcm_keras.errors import UserError
from dcm_keras.networks.common import l2_regularizer


def l2_config(weight_decay: Optional[float]):
    """The regularizer for `weight_decay` (None when None or 0)."""
    return l2_regularizer(weight_decay) if weight_decay else None


@keras.saving.register_keras_serializable(package="dcm_keras")
class WeightDecay(keras.layers.Wrapper):
    """Adds coupled L2 decay to trainable weights of `layer` that its own config cannot regularize.

    Weights that already carry a regularizer (from the layer's config) keep it.
    """

    def __init__(self, layer: keras.layers.Layer, weight_decay: float, **kwargs):
        kwargs.setdefault("name", layer.name)
        super().__init__(layer, **kwargs)
        self.weight_decay = float(weight_decay)

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        self._decay()
        self.built = True

    def _decay(self) -> None:
        for variable in self.layer.trainable_weights:
            if variable.regularizer is None:
                variable.regularizer = l2_config(self.weight_decay)

    def call(self, *args, **kwargs):
        return self.layer(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "weight_decay": self.weight_decay}


def _configured(layer: keras.layers.Layer, weight_decay: float) -> keras.layers.Layer:
    """A new `layer` (no weights yet) with the regularizer in every `*_regularizer` argument."""
    if isinstance(layer, WeightDecay):
        layer = layer.layer
    config = layer.get_config()
    reg = l2_config(weight_decay)
    for key in config:
        if key.endswith("_regularizer") and key != "activity_regularizer":
            config[key] = keras.saving.serialize_keras_object(reg) if reg else None
    return type(layer).from_config(config)


def with_weight_decay(model: keras.Model, weight_decay: float) -> keras.Model:
    """A copy of `model` (same weights) with coupled L2 decay on every trainable weight.

    The decay is part of the layer configs, so it survives `.keras` save/load and
    `keras.models.clone_model`. `weight_decay=0` removes every weight regularizer. Works on any
    functional model, nested ones included, and on a `HeadedModel` (which stays one).
    """
    if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool) \
            or weight_decay < 0:
        raise UserError(f"weight_decay must be a number >= 0, got {weight_decay!r}.")
    # A model that owns its weight-decay setting (HeadedModel) rebuilds itself; asked by method,
    # not by type, because heads.py imports this module.
    rebuild = getattr(model, "with_weight_decay", None)
    if callable(rebuild):
        clone = rebuild(weight_decay)
    elif isinstance(model, Functional):
        clone = _clone(model, weight_decay)
    else:
        raise UserError(f"with_weight_decay needs a functional model; {model.name!r} is "
                        f"{type(model).__name__} (subclassed models have no layer graph).")
    clone.set_weights(model.get_weights())
    return clone


def _clone(model: keras.Model, weight_decay: float) -> keras.Model:
    def clone_layer(layer):
        if isinstance(layer, Functional):
            return _clone(layer, weight_decay)
        if not isinstance(layer, keras.layers.Layer) or not layer.weights:
            return type(layer).from_config(layer.get_config())
        fresh = _configured(layer, weight_decay)
        # Built now (it would be at its first call anyway) to see which weights the config missed.
        fresh.build_from_config(layer.get_build_config())
        if weight_decay and any(v.regularizer is None for v in fresh.trainable_weights):
            return WeightDecay(fresh, weight_decay)
        return fresh

    return keras.models.clone_model(model, clone_function=clone_layer)

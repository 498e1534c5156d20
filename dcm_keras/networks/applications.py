"""`keras.applications` classifiers in the registry: `networks.build("keras:MobileNetV3Small", 10)`.

Built with `weights=None` (nothing is downloaded), the given input shape and classes, logits
output (`classifier_activation=None`) and no built-in preprocessing (`include_preprocessing=False`
where the model offers it; EfficientNet's fixed `Rescaling`/`Normalization` layers become
identities), so the data pipeline's normalisation is the only one, as for our own networks.
Images smaller than the applications' 32x32 minimum (Fashion-MNIST's 28x28) are zero-padded to
32x32 by the network's first layer.
With `aux_heads=True` the network gets `attach_heads(..., "auto", "replica")`.

Pretrained weights cannot be downloaded here. With ImageNet weights at hand, build the model
yourself (`keras.applications.ResNet50V2(weights="path/to/weights.h5", ...)`) and pass it to
`attach_heads`: the main path keeps those weights.
"""

from __future__ import annotations

import inspect
from typing import List

import keras

from dcm_keras import networks
from dcm_keras.networks.common import DEFAULT_WEIGHT_DECAY, check_common_args
from dcm_keras.networks.heads import attach_heads


def application_names() -> List[str]:
    """The classifier builders of `keras.applications` (ResNet50V2, MobileNetV3Small, ...)."""
    return sorted(name for name, fn in vars(keras.applications).items()
                  if name[:1].isupper() and callable(fn)
                  and "classifier_activation" in inspect.signature(fn).parameters)


def _without_preprocessing(model: keras.Model) -> keras.Model:
    fixed = (keras.layers.Rescaling, keras.layers.Normalization)
    if not any(isinstance(layer, fixed) for layer in model.layers):
        return model

    def identity(layer):
        if isinstance(layer, fixed):
            return keras.layers.Identity(name=layer.name)
        return type(layer).from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=identity)
    for layer in clone.layers:  # fresh weights anyway, but keep the clone's init = the model's
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return clone


def build_application(name: str, num_classes: int, input_shape=(32, 32, 3),
                      aux_heads: bool = True, weight_decay: float = DEFAULT_WEIGHT_DECAY,
                      synchronized_bn: bool = False, **kwargs) -> keras.Model:
    """A `keras.applications` classifier from scratch, with `{"aux1", "aux2", "logits"}` outputs.

    Without heads the output is `{"logits": ...}`, as for every registered network.
    """
    input_shape = check_common_args(num_classes, input_shape)
    valid = application_names()
    if name not in valid:
        raise ValueError(f"Unknown keras.applications model {name!r}. Valid names: "
                         f"{', '.join('keras:' + n for n in valid)}.")
    if synchronized_bn:
        raise ValueError("synchronized_bn is not supported for keras.applications models; "
                         "train them on one device.")
    fn = getattr(keras.applications, name)
    options = {"include_preprocessing": False} \
        if "include_preprocessing" in inspect.signature(fn).parameters else {}
    inputs = x = keras.Input(input_shape, name="images")
    pad = [max(0, 32 - size) for size in input_shape[:2]]
    if any(pad):  # the applications refuse inputs below 32x32
        x = keras.layers.ZeroPadding2D(tuple((p // 2, p - p // 2) for p in pad), name="pad")(x)
    model = fn(weights=None, input_tensor=x, classes=num_classes,
               classifier_activation=None, **options, **kwargs)
    model = _without_preprocessing(model)
    return attach_heads(model, "auto" if aux_heads else [], "replica", weight_decay,
                        name=name.lower())


networks.register_pattern(r"keras:(\w+)", "keras:NAME",
                          lambda match, **kwargs: build_application(match.group(1), **kwargs))

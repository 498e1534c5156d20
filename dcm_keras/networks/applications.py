"""`keras.applications` classifiers in the registry: `networks.build("keras:MobileNetV3Small", 10)`.

Built with `weights=None` (nothing is downloaded), the given input shape and classes, logits
output (`classifier_activation=None`) and no built-in preprocessing (`include_preprocessing=False`
where the model offers it; EfficientNet's fixed `Rescaling`/`Normalization` layers become
identities), so the data pipeline's normalisation is the only one, as for our own networks.
Images smaller than the applications' 32x32 minimum (Fashion-MNIST's 28x28) are zero-padded to
32x32 by the network's first layer. BatchNormalization gets our momentum, 0.9 (PyTorch's 0.1, the
paper's): with MobileNetV3's 0.999 the moving statistics are still 85% their initial values after
160 steps, and a short run evaluates near chance. Measured (DCM pair of keras:MobileNetV3Small,
Fashion-MNIST, 256 images x 40 epochs, batch 64, seed 0, 2,000 test images; this 2-core CPU,
2026-12-02): 90.60 / 81.95% test error with 0.999, 32.25 / 32.60% with 0.9.
With `aux_heads=True` the network gets `attach_heads(..., "auto", "replica")`.

Pretrained weights cannot be downloaded here. With ImageNet weights at hand, build the model
yourself (`keras.applications.ResNet50V2(weights="path/to/weights.h5", ...)`) and pass it to
`attach_heads`: the main path keeps those weights.
"""

from __future__ import annotations

import inspect
from typing import List

import keras

from dcm_keras.errors import UserError
from dcm_keras.networks.common import BN_MOMENTUM, DEFAULT_WEIGHT_DECAY, check_common_args
from dcm_keras.networks.heads import attach_heads
from dcm_keras.networks.registry import register_network


def application_names() -> List[str]:
    """The classifier builders of `keras.applications` (ResNet50V2, MobileNetV3Small, ...)."""
    return sorted(name for name, fn in vars(keras.applications).items()
                  if name[:1].isupper() and callable(fn)
                  and "classifier_activation" in inspect.signature(fn).parameters)


def training_conventions(model: keras.Model) -> keras.Model:
    """`model` as `keras:NAME` builds it: BN momentum 0.9, fixed preprocessing layers removed.

    Every BatchNormalization gets our (the paper's) momentum, 0.9; every fixed `Rescaling` and
    `Normalization` layer becomes an identity, since `dcm_keras.data` already normalises the
    images (a backbone that normalises them again, such as EfficientNet, would do it twice).
    Same layer names and weights (pretrained ones included); use it before `attach_heads`.
    """
    fixed = (keras.layers.Rescaling, keras.layers.Normalization)

    def convert(layer):
        if isinstance(layer, fixed):
            return keras.layers.Identity(name=layer.name)
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config["momentum"] = BN_MOMENTUM
        return type(layer).from_config(config)

    clone = keras.models.clone_model(model, clone_function=convert)
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
        raise UserError(f"Unknown keras.applications model {name!r}. Valid names: "
                        f"{', '.join('keras:' + n for n in valid)}.")
    if synchronized_bn:
        raise UserError("synchronized_bn is not supported for keras.applications models; "
                        "train them on one device.")
    fn = getattr(keras.applications, name)
    options = {"include_preprocessing": False} \
        if "include_preprocessing" in inspect.signature(fn).parameters else {}
    inputs = x = keras.Input(input_shape, name="images")
    pad = [max(0, 32 - size) for size in input_shape[:2]]
    if any(pad):  # the applications refuse inputs below 32x32
        x = keras.layers.ZeroPadding2D(tuple((p // 2, p - p // 2) for p in pad), name="pad")(x)
    try:
        model = fn(weights=None, input_tensor=x, classes=num_classes,
                   classifier_activation=None, **options, **kwargs)
    except ValueError as e:  # e.g. InceptionV3 at 32x32: "Computed output size would be zero"
        raise UserError(f"keras:{name} cannot be built for {input_shape} images: "
                        f"{str(e).splitlines()[0] if str(e) else e}") from e
    model = training_conventions(model)
    return attach_heads(model, "auto" if aux_heads else [], "replica", weight_decay,
                        name=name.lower())


# The example is the application quickest to build (165 layers; MobileNetV3Small has 348).
@register_network("keras:NAME", family="keras", regex=r"keras:(\w+)", example="keras:MobileNet")
def keras_application(match, **kwargs) -> keras.Model:
    """`keras:NAME`: the `keras.applications` classifier NAME (see `build_application`)."""
    return build_application(match.group(1), **kwargs)

"""Networks by name, one builder per network (the timm pattern; the registry is `registry.py`).

    net = dcm_keras.networks.build("wrn_16_2", num_classes=100)

Every builder returns a functional `keras.Model` whose output is a dict of logits ordered from
the shallowest head to the deepest: `{"aux1": ..., "aux2": ..., "logits": ...}`, or only
`{"logits": ...}` with `aux_heads=False`. Main-path layer names do not depend on `aux_heads`, so
`transfer_weights` moves trained weights between the two forms.
"""

from __future__ import annotations

import keras

from dcm_keras.errors import UserError
from dcm_keras.networks.common import BN_EPSILON, BN_MOMENTUM, DEFAULT_WEIGHT_DECAY
from dcm_keras.networks.registry import (build, family_of, list_families, list_networks,
                                         register, register_network, register_pattern,
                                         representative)
# Importing the families registers them; they import `registry`, never this package's namespace.
from dcm_keras.networks import wrn  # noqa: F401
from dcm_keras.networks import mobilenet  # noqa: F401
from dcm_keras.networks import resnet  # noqa: F401
from dcm_keras.networks import applications  # noqa: F401  ("keras:NAME")
from dcm_keras.networks.applications import training_conventions
from dcm_keras.networks.heads import HeadedModel, attach_heads
from dcm_keras.networks.weight_decay import WeightDecay, with_weight_decay


def transfer_weights(source: keras.Model, target: keras.Model) -> int:
    """Copies weights between layers of the same name (e.g. with and without aux heads).

    Returns the number of layers copied. Raises if a weighted layer of `target` has no
    counterpart in `source`, so a silent partial copy cannot happen.
    """
    by_name = {layer.name: layer for layer in source.layers}
    copied = 0
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name not in by_name:
            raise UserError(
                f"Layer {layer.name!r} of {target.name!r} has no counterpart in {source.name!r}.")
        layer.set_weights(by_name[layer.name].get_weights())
        copied += 1
    return copied


__all__ = ["build", "list_networks", "list_families", "family_of", "representative", "register",
           "register_network", "register_pattern", "transfer_weights", "attach_heads",
           "training_conventions",
           "with_weight_decay", "HeadedModel", "WeightDecay", "BN_MOMENTUM", "BN_EPSILON",
           "DEFAULT_WEIGHT_DECAY"]

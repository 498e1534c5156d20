"""A registry of networks by name, one builder per family (the timm pattern).

    net = dcm_keras.networks.build("wrn_16_2", num_classes=100)

Every builder returns a functional `keras.Model` whose output is a dict of logits ordered from
the shallowest head to the deepest: `{"aux1": ..., "aux2": ..., "logits": ...}`, or only
`{"logits": ...}` with `aux_heads=False`. Main-path layer names do not depend on `aux_heads`, so
`transfer_weights` moves trained weights between the two forms.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Tuple

import keras

from dcm_keras.networks.common import BN_EPSILON, BN_MOMENTUM, DEFAULT_WEIGHT_DECAY

# name -> builder(num_classes, input_shape, aux_heads, **kwargs)
_EXACT: Dict[str, Callable] = {}
# (regex, human-readable pattern, builder(match, num_classes, input_shape, aux_heads, **kwargs))
_PATTERNS: List[Tuple[re.Pattern, str, Callable]] = []


def register(name: str, builder: Callable) -> None:
    """Registers `builder` under an exact network name."""
    _EXACT[name] = builder


def register_pattern(regex: str, pattern: str, builder: Callable) -> None:
    """Registers a parametrised family, e.g. `wrn_(\\d+)_(\\d+)` shown as `wrn_D_K`."""
    _PATTERNS.append((re.compile(regex + r"\Z"), pattern, builder))


def list_networks() -> List[str]:
    """Names accepted by `build`, exact names first, then parametrised families."""
    return sorted(_EXACT) + [p for _, p, _ in _PATTERNS]


def build(name: str, num_classes: int, input_shape=(32, 32, 3), aux_heads: bool = True,
          **kwargs) -> keras.Model:
    """Builds a registered network.

    Args:
        name: a name from `list_networks()`, e.g. "wrn_28_10", "mobilenet", "resnet56".
        num_classes: number of classes of every classifier head.
        input_shape: (height, width, channels).
        aux_heads: attach the family's auxiliary classifier heads (the DCM design).
        **kwargs: family options, e.g. `weight_decay=5e-4`, `synchronized_bn=False`.

    Returns:
        A functional `keras.Model` with a dict output of logits, shallow to deep.
    """
    if not isinstance(name, str):
        raise TypeError(f"Network name must be a string, got {type(name).__name__}.")
    if name in _EXACT:
        return _EXACT[name](num_classes=num_classes, input_shape=input_shape,
                            aux_heads=aux_heads, **kwargs)
    for regex, _, builder in _PATTERNS:
        match = regex.match(name)
        if match:
            return builder(match, num_classes=num_classes, input_shape=input_shape,
                           aux_heads=aux_heads, **kwargs)
    raise ValueError(
        f"Unknown network {name!r}. Valid names: {', '.join(list_networks())}.")


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
            raise ValueError(
                f"Layer {layer.name!r} of {target.name!r} has no counterpart in {source.name!r}.")
        layer.set_weights(by_name[layer.name].get_weights())
        copied += 1
    return copied


# Importing the families registers them.
from dcm_keras.networks import wrn  # noqa: E402,F401
from dcm_keras.networks import mobilenet  # noqa: E402,F401
from dcm_keras.networks import resnet  # noqa: E402,F401
from dcm_keras.networks import applications  # noqa: E402,F401  ("keras:NAME")
from dcm_keras.networks.heads import HeadedModel, attach_heads  # noqa: E402
from dcm_keras.networks.weight_decay import WeightDecay, with_weight_decay  # noqa: E402

__all__ = ["build", "list_networks", "register", "register_pattern", "transfer_weights",
           "attach_heads", "with_weight_decay", "HeadedModel", "WeightDecay",
           "BN_MOMENTUM", "BN_EPSILON", "DEFAULT_WEIGHT_DECAY"]

"""Shared fixture of the network tests: each configuration built once per session."""

import keras
import pytest

from dcm_keras import networks

SMALL_INPUT = (16, 16, 3)  # what most network tests build at (parameter counts do not depend on it)


@pytest.fixture(scope="session")
def built_network():
    """`get(name, num_classes, input_shape=SMALL_INPUT, aux_heads=True)`, built once per session
    (per xdist worker): building dominates the time of these tests. The models are shared between
    test files, so a test must not change them, except that `transfer_weights` may overwrite a
    headless model with its headed twin's (still untrained) weights: no test relies on a headless
    model's own initial weights.
    """
    cache = {}

    def get(name: str, num_classes: int, input_shape=SMALL_INPUT,
            aux_heads: bool = True) -> keras.Model:
        key = (name, num_classes, tuple(input_shape), aux_heads)
        if key not in cache:
            cache[key] = networks.build(name, num_classes, input_shape, aux_heads=aux_heads)
        return cache[key]

    return get

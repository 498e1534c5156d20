"""Shared test configuration: the `core` and `requires_tensorflow` markers.

The core tests (files with `pytestmark = pytest.mark.core`) run under every Keras backend that
`make test` covers: the whole suite under TensorFlow, then `-m core` under JAX. A core test
that exercises a TensorFlow-only feature (SavedModel export, tf.distribute, a comparison against
the TensorFlow backend) is marked `@pytest.mark.requires_tensorflow("why")` and is skipped, with
that reason, under any other backend.
"""

import keras
import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "core: a core library test, also run under JAX (`make test` runs -m core)")
    config.addinivalue_line(
        "markers", "requires_tensorflow(reason): skip unless KERAS_BACKEND is tensorflow")


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    for item in items:
        marker = item.get_closest_marker("requires_tensorflow")
        if marker is not None:
            why = marker.args[0] if marker.args else "uses a TensorFlow-only feature"
            item.add_marker(pytest.mark.skip(
                reason=f"TensorFlow backend only ({why}); running under {backend}"))

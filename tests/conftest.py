"""Shared test configuration: the `requires_tensorflow` marker.

The core tests run under every Keras backend that `make test` covers (TensorFlow and JAX). A test
that exercises a TensorFlow-only feature (SavedModel export, tf.distribute, a comparison against
the TensorFlow backend) is marked `@pytest.mark.requires_tensorflow("why")` and is skipped, with
that reason, under any other backend.
"""

import keras
import pytest


def pytest_configure(config):
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

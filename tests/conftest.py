"""Shared test configuration: the `core`, `large` and `requires_tensorflow` markers.

The core tests (files with `pytestmark = pytest.mark.core`) run under every Keras backend and
kernel set that `make test` covers: the whole suite under TensorFlow with oneDNN on, then the
core tests of the fast tier (`-m "core and not large"`) with oneDNN off and under JAX. A core test
that exercises a TensorFlow-only feature (SavedModel export, tf.distribute, a comparison against
the TensorFlow backend) is marked `@pytest.mark.requires_tensorflow("why")` and is skipped, with
that reason, under any other backend.

The large tests (`pytest.mark.large`, on a file, a test or a parametrisation) are the costly
ones: they start the scripts or TensorFlow in subprocesses and train tiny runs, build the big
networks (the keras.applications models other than MobileNetV3Small, WRN-28-10), or repeat with
more work what a fast test checks (the mixed_bfloat16 twins in tests/test_shipping.py).
`make test-fast` (`pytest -m "not large"`) leaves them out for a loop of minutes; `make test`,
what CI runs, runs everything.

Files are handed to the pytest-xdist workers (`--dist loadscope --no-loadscope-reorder`: each
file whole to one worker, in collection order) longest first as far as markers tell: the files
holding large tests, then the others by their number of tests (xdist's own order). A long file
handed out last keeps one worker busy while the other has nothing left to do; xdist's order
alone (most tests first) left the one-test multi-minute files of the large tier to the end.
"""

import collections

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "core: a core library test, also run with oneDNN off and under JAX unless large")
    config.addinivalue_line(
        "markers", "large: subprocesses or big networks, left out by `make test-fast`")
    config.addinivalue_line(
        "markers", "requires_tensorflow(reason): skip unless KERAS_BACKEND is tensorflow")


def pytest_collection_modifyitems(config, items):
    import keras  # here, not at the top: the xdist controller, which collects nothing, skips it

    large_files = {item.path for item in items if item.get_closest_marker("large")}
    counts = collections.Counter(item.path for item in items)
    items.sort(key=lambda item: (item.path not in large_files, -counts[item.path]))  # stable
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    for item in items:
        marker = item.get_closest_marker("requires_tensorflow")
        if marker is not None:
            why = marker.args[0] if marker.args else "uses a TensorFlow-only feature"
            item.add_marker(pytest.mark.skip(
                reason=f"TensorFlow backend only ({why}); running under {backend}"))

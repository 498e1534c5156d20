"""TensorFlow as an optional dependency of the data package.

`load_arrays` serves Fashion-MNIST's IDX files without TensorFlow (e.g. on JAX-only machines), so
every module here imports `tf` from this one and calls `require_tensorflow` before using it.
"""

from __future__ import annotations

try:
    import tensorflow as tf
except ImportError:
    tf = None

AUTOTUNE = -1  # tf.data.AUTOTUNE's value, defined without importing TensorFlow


def require_tensorflow(what: str) -> None:
    """Raises a RuntimeError naming `what` when TensorFlow is not installed."""
    if tf is None:
        raise RuntimeError(f"{what} and needs TensorFlow, which is not installed; "
                           "`pip install tensorflow`, or use load_arrays() with Fashion-MNIST's "
                           "IDX files.")

"""Backend-neutral helpers for the core tests, which run under TensorFlow and under JAX."""

import keras
import numpy as np


def to_numpy(x):
    """A backend tensor (or a structure of them) as NumPy."""
    return keras.tree.map_structure(keras.ops.convert_to_numpy, x)


def gradients(fn, values):
    """Gradients of the scalar `fn(tensors)` with respect to `values` (a dict or list of arrays).

    Returns NumPy arrays in the structure of `values`; an input `fn` does not depend on gets zeros.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        variables = keras.tree.map_structure(lambda v: tf.Variable(np.asarray(v)), values)
        with tf.GradientTape() as tape:
            out = fn(variables)
        grads = tape.gradient(out, variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    elif backend == "jax":
        import jax

        grads = jax.grad(fn)(keras.tree.map_structure(jax.numpy.asarray, values))
    else:
        raise NotImplementedError(f"No gradient helper for the {backend} backend.")
    return to_numpy(grads)


def variable_gradients(fn, variables):
    """Gradients of the scalar `fn()` with respect to Keras `variables`, as a list of NumPy arrays.

    Under JAX, `fn` runs in a `StatelessScope` that maps each variable to a traced value, so
    whatever reads the variables (layer regularisers, `model.losses`) is differentiated.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            out = fn()
        grads = tape.gradient(out, variables)
    elif backend == "jax":
        import jax

        def stateless(values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn()

        grads = jax.grad(stateless)([v.value for v in variables])
    else:
        raise NotImplementedError(f"No gradient helper for the {backend} backend.")
    return [keras.ops.convert_to_numpy(g) for g in grads]

"""Backend-neutral helpers for the core tests, which run under TensorFlow and under JAX."""

import contextlib

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


@contextlib.contextmanager
def xla_optimised():
    """Under JAX, compiles with XLA's optimisations even in `make test`'s JAX pass, which turns
    most of them off (JAX_DISABLE_MOST_OPTIMIZATIONS=1: most core tests compile far more than they
    run). For a test that runs many steps: unoptimised, a 12-step fit of a WRN-10-1 pair took
    twice as long (docs/layout.md). Does nothing under other backends."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)

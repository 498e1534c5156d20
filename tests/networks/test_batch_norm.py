"""The fused BatchNormalization of `networks.common` computes what Keras's own layer computes.

Same outputs, gradients (input, gamma, beta) and moving statistics as `keras.layers.
BatchNormalization` with the same weights, in float32 and under mixed_bfloat16, eagerly and inside
a `tf.function` (where oneDNN rewrites the ops), up to float rounding.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dcm_keras import networks
from dcm_keras.networks.common import BN_EPSILON, BN_MOMENTUM, BatchNormalization


@pytest.fixture
def policy(request):
    old = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(old)


def _pair(channels):
    kwargs = dict(momentum=BN_MOMENTUM, epsilon=BN_EPSILON)
    fused, reference = BatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    for layer in (fused, reference):
        layer.build((None, 5, 6, channels))
    rng = np.random.RandomState(1)
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels),
               rng.normal(size=channels), rng.uniform(0.5, 2.0, channels)]
    for layer in (fused, reference):
        layer.set_weights([w.astype("float32") for w in weights])
    return fused, reference


def _step(layer, x, upstream, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    grads = tape.gradient(loss, [x, layer.gamma.value, layer.beta.value])
    return y, grads


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_matches_keras_batch_normalization(policy, graph, training):
    channels = 7
    fused, reference = _pair(channels)
    rng = np.random.RandomState(0)
    x = tf.constant(rng.normal(2.0, 3.0, (4, 5, 6, channels)), fused.compute_dtype)
    upstream = tf.constant(rng.normal(size=(4, 5, 6, channels)), tf.float32)
    results = []
    for layer in (fused, reference):
        step = tf.function(_step, reduce_retracing=True) if graph else _step
        results.append(step(layer, x, upstream, training))
    (y1, g1), (y2, g2) = results
    assert y1.dtype == y2.dtype == tf.as_dtype(fused.compute_dtype)
    # bfloat16 outputs may differ by one rounding step of the last bit.
    tol = dict(rtol=1e-5, atol=1e-5) if policy == "float32" else dict(rtol=1e-2, atol=2e-2)
    np.testing.assert_allclose(tf.cast(y1, tf.float32), tf.cast(y2, tf.float32), **tol)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(tf.cast(a, tf.float32), tf.cast(b, tf.float32), **tol)
    for a, b in zip(fused.weights, reference.weights):  # moving statistics after the update
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_networks_use_it_with_unchanged_config(tmp_path):
    model = networks.build("wrn_10_1", num_classes=10, input_shape=(16, 16, 3))
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(isinstance(layer, BatchNormalization) for layer in bns)
    config = bns[0].get_config()
    assert (config["momentum"], config["epsilon"]) == (BN_MOMENTUM, BN_EPSILON)
    path = str(tmp_path / "net.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)  # the registered class round-trips
    assert type(loaded.get_layer(bns[0].name)) is BatchNormalization


def test_falls_back_where_the_kernel_does_not_apply():
    layer = BatchNormalization(axis=1)  # channels-first: Keras's own path
    x = tf.constant(np.random.RandomState(0).normal(size=(3, 4, 5, 6)), tf.float32)
    reference = keras.layers.BatchNormalization(axis=1)
    np.testing.assert_allclose(layer(x, training=True), reference(x, training=True),
                               rtol=1e-5, atol=1e-5)

"""The library under `KERAS_BACKEND=jax`, fed by the tf.data pipeline of `dcm_keras.data`.

Each JAX run happens in a subprocess (the backend is fixed when Keras is imported), so these tests
also run in the TensorFlow pass of `make test`:

* a WRN DCM pair is trained, evaluated and exported under JAX on a Fashion-MNIST subset read by
  `dcm_keras.data.load`: the loss falls, the metrics have the names they have under TensorFlow,
  `.keras` files reload with `safe_mode=True` (under JAX and in this process) and predict the
  same, SavedModel export refuses;
* the same weights (a `.keras` file saved by this process) and batch give the same evaluation,
  the same training loss and the same weights after one SGD step under JAX as under TensorFlow;
* `keras.distribution.DataParallel` over 2 virtual CPU devices trains to the weights of a
  single-device run, with BatchNormalization statistics taken over the global batch.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from backend_helpers import to_numpy

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.large,  # drives the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                       reason="jax is not installed (pip install -e '.[test]')"),
    pytest.mark.skipif(not os.path.exists(os.path.join(FASHION_MNIST, "train-images-idx3-ubyte.gz")),
                       reason="dataset-fashion-mnist not installed"),
]

IMAGE = (28, 28, 1)
CLASSES = 10
HEADS = [f"net{k}_{h}" for k in (1, 2) for h in ("aux1", "aux2", "logits")]
LOSSES = ("loss", "ce_loss", "kd_loss", "wd_loss", "net1_loss", "net2_loss")
EXPECTED_METRICS = set(LOSSES) | {f"{h}_acc" for h in HEADS}


def run_jax(script: str, out_dir, devices: int = 1, timeout: int = 480,
            optimised: bool = True) -> dict:
    """Runs `script` under KERAS_BACKEND=jax with `out_dir` as argv[1]; returns its result.json.

    `optimised`: XLA compiles as users' runs do; otherwise with `JAX_DISABLE_MOST_OPTIMIZATIONS`
    (a cheaper compile), for a check that compares JAX only with JAX.
    """
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0" if optimised else "1"
    if devices > 1:
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(out_dir)],
                            cwd=str(out_dir), env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads((pathlib.Path(out_dir) / "result.json").read_text())


def fashion_batch(n=32):
    from dcm_keras import data

    x, y = next(iter(data.load("fashion_mnist", "test", batch_size=n, max_examples=n)))
    return x.numpy(), y.numpy()


# --- one JAX run, shared by the tests below ------------------------------------------------

JAX_RUN = r"""
import json, pathlib, sys, time
import numpy as np
import keras
import dcm_keras
from dcm_keras import data

start = time.time()
out = pathlib.Path(sys.argv[1])
result = {"backend": keras.backend.backend()}

# 1. The parent's model (TensorFlow weights, one network with synchronized_bn=True) and batch.
dcm = dcm_keras.load_network(str(out / "initial.keras"))
batch = np.load(out / "batch.npz")
x, y = batch["x"], batch["y"]
result["jit_compile"] = dcm.jit_compile  # saved as "auto": JAX jits
result["same_evaluate"] = dcm.evaluate(x, y, batch_size=len(y), verbose=0, return_dict=True)
result["same_train_step"] = dcm.train_on_batch(x, y, return_dict=True)
np.savez(out / "jax_after.npz", *dcm.get_weights())

result["seconds_same"] = time.time() - start

# 2. Go on training that model under JAX, fed by the tf.data pipeline (batches of 32 as above,
# so the functions jitted above are reused), then evaluate and export it. Two epochs of 4 steps
# (3 of 8 took 13 s more CPU): the mean loss fell by 8 % between them (2026-12-07).
train = data.load("fashion_mnist", "train", batch_size=32, max_examples=128, seed=0)
test = data.load("fashion_mnist", "test", batch_size=32, max_examples=64)
result["history"] = dcm.fit(train, validation_data=test, epochs=2, verbose=0).history
result["evaluate"] = dcm.evaluate(test, verbose=0, return_dict=True)
result["seconds_fit"] = time.time() - start

images = next(iter(test))[0].numpy()
outputs = {k: keras.ops.convert_to_numpy(v) for k, v in dcm(images, training=False).items()}
np.savez(out / "jax_outputs.npz", images=images, **outputs)
result["export_diff"] = {}
for k in (0, 1):
    exported = dcm.export_network(k)
    path = dcm_keras.save_network(exported, str(out / f"net{k + 1}.keras"))
    loaded = dcm_keras.load_network(path)
    got = keras.ops.convert_to_numpy(loaded(images, training=False))
    result["export_diff"][f"net{k + 1}"] = float(np.abs(got - outputs[f"net{k + 1}_logits"]).max())
    result[f"net{k + 1}_type"] = type(loaded).__name__
dcm.save(str(out / "dcm.keras"))
again = dcm_keras.load_network(str(out / "dcm.keras"))  # safe_mode=True
result["reloaded_type"] = type(again).__name__
result["reloaded_diff"] = max(
    float(np.abs(keras.ops.convert_to_numpy(v) - outputs[k]).max())
    for k, v in again(images, training=False).items())
try:
    dcm_keras.export_saved_model(dcm.export_network(0), str(out / "saved_model"))
    result["saved_model_error"] = None
except RuntimeError as error:
    result["saved_model_error"] = str(error)
result["saved_model_written"] = (out / "saved_model").exists()
result["seconds"] = time.time() - start
(out / "result.json").write_text(json.dumps(result, default=float))
"""


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    """Saves a TensorFlow-side (or current-backend) DCM and batch, runs JAX_RUN on them."""
    from dcm_keras import DCM, networks

    out = tmp_path_factory.mktemp("jax_run")
    keras.utils.set_random_seed(0)
    nets = [networks.build("wrn_10_1", CLASSES, input_shape=IMAGE, synchronized_bn=True),
            networks.build("wrn_10_1", CLASSES, input_shape=IMAGE)]
    dcm = DCM(nets, temperature=2.0)
    dcm.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = fashion_batch()
    np.savez(out / "batch.npz", x=x, y=y)
    dcm.save(str(out / "initial.keras"))
    reference = {
        "backend": keras.backend.backend(),
        "before": dcm.get_weights(),
        "evaluate": dcm.evaluate(x, y, batch_size=len(y), verbose=0, return_dict=True),
        "train_step": dcm.train_on_batch(x, y, return_dict=True),
        "after": dcm.get_weights(),
        "paths": [w.path for w in dcm.weights],
    }
    result = run_jax(JAX_RUN, out)
    with np.load(out / "jax_after.npz") as after:
        result["after"] = [after[f"arr_{i}"] for i in range(len(after.files))]
    return reference, result, out


def test_fit_evaluate_and_export_under_jax(jax_run):
    _, result, out = jax_run
    assert result["backend"] == "jax"
    history = result["history"]
    assert set(history) == EXPECTED_METRICS | {f"val_{m}" for m in EXPECTED_METRICS}
    assert history["loss"][-1] < history["loss"][0], history["loss"]
    assert history["ce_loss"][-1] < history["ce_loss"][0], history["ce_loss"]
    assert all(v > 0 for v in history["kd_loss"] + history["wd_loss"])
    assert len(history["loss"]) == 2
    for epoch in range(2):  # the loss is the sum of its parts, as under TensorFlow
        parts = sum(history[k][epoch] for k in ("ce_loss", "kd_loss", "wd_loss"))
        assert history["loss"][epoch] == pytest.approx(parts, rel=1e-5)
    assert set(result["evaluate"]) == EXPECTED_METRICS
    # Reloaded (safe_mode=True) files predict what the trained model does.
    assert result["net1_type"] == result["net2_type"] == "Functional"
    assert max(result["export_diff"].values()) < 1e-6, result["export_diff"]
    assert result["reloaded_type"] == "DCM" and result["reloaded_diff"] < 1e-6
    assert result["jit_compile"] is True  # a DCM saved under TensorFlow jits under JAX
    # ... and so do they in this process (TensorFlow in the first pass of `make test`).
    import dcm_keras

    with np.load(out / "jax_outputs.npz") as saved:
        images = saved["images"]
        for k in (1, 2):
            net = dcm_keras.load_network(str(out / f"net{k}.keras"))
            np.testing.assert_allclose(to_numpy(net(images, training=False)),
                                       saved[f"net{k}_logits"], atol=1e-4, rtol=1e-5)
        again = dcm_keras.load_network(str(out / "dcm.keras"))
        for head, value in again(images, training=False).items():
            np.testing.assert_allclose(to_numpy(value), saved[head], atol=1e-4, rtol=1e-5,
                                       err_msg=head)
    # SavedModel export is TensorFlow-only and says so, leaving nothing behind.
    assert "needs the TensorFlow backend (current backend: jax)" in result["saved_model_error"]
    assert not result["saved_model_written"]


@pytest.mark.requires_tensorflow("compares JAX in a subprocess with TensorFlow in this process")
def test_same_weights_and_batch_give_the_tensorflow_results(jax_run):
    reference, result, _ = jax_run
    assert reference["backend"] == "tensorflow"
    evaluate, jax_evaluate = reference["evaluate"], result["same_evaluate"]
    assert set(jax_evaluate) == set(evaluate) == EXPECTED_METRICS  # metric names as under TF
    for name in LOSSES:
        assert jax_evaluate[name] == pytest.approx(evaluate[name], rel=1e-5), name
        assert result["same_train_step"][name] == pytest.approx(
            reference["train_step"][name], rel=1e-5), name
    for name in EXPECTED_METRICS - set(LOSSES):
        assert jax_evaluate[name] == evaluate[name], name
        assert result["same_train_step"][name] == reference["train_step"][name], name
    assert evaluate["kd_loss"] > 1e-3 and evaluate["wd_loss"] > 1e-3  # every part is exercised
    # One SGD step from the same weights: the gradients (through the detached teachers, the T^2
    # scaling and the coupled weight decay) and the BN moving statistics agree. The heads see the
    # loss's gradient directly and agree to ~1e-6 of their step; deeper gradients pass back
    # through train-mode BatchNormalization, which amplifies float32 rounding: there TensorFlow
    # with and without oneDNN already differs by up to ~0.3% of the step, and JAX by ~0.5%.
    assert len(result["after"]) == len(reference["after"])
    for path, before, tf_after, jax_after in zip(reference["paths"], reference["before"],
                                                 reference["after"], result["after"]):
        np.testing.assert_allclose(jax_after, tf_after, atol=1e-4, rtol=0, err_msg=path)
        step = np.linalg.norm(tf_after - before)
        if step == 0:  # kd_scale, which no step changes
            np.testing.assert_array_equal(jax_after, tf_after, err_msg=path)
            continue
        relative = np.linalg.norm(jax_after - tf_after) / step
        head = path.split("/")[0] in ("aux1", "aux2", "logits")
        assert relative < (1e-4 if head else 2e-2), (path, relative)


# --- keras.distribution.DataParallel over 2 virtual CPU devices -----------------------------

DATA_PARALLEL_RUN = r"""
import json, pathlib, sys
import jax
import numpy as np
import keras
import keras.src.backend.jax.trainer as jax_trainer  # only to spy on how batches are placed
from dcm_keras import DCM, data

out = pathlib.Path(sys.argv[1])
result = {"devices": len(jax.devices())}


def net(name):
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(8, 3, strides=2, name=f"{name}_conv")(inputs)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    hidden = keras.layers.Dense(16, activation="relu", name=f"{name}_hidden")(x)
    return keras.Model(inputs, {"aux1": keras.layers.Dense(10, name=f"{name}_aux1")(x),
                                "logits": keras.layers.Dense(10, name=f"{name}_logits")(hidden)},
                       name=name)


def make():
    keras.utils.set_random_seed(0)
    dcm = DCM([net("a"), net("b")])
    dcm.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return dcm


def train():
    return data.load("fashion_mnist", "train", batch_size=32, max_examples=256, seed=0)


# A batch whose halves (one per device under DataParallel) have very different statistics.
x, y = next(iter(train()))
x = x.numpy()
x[16:] = 4.0 * x[16:] + 3.0
y = y.numpy()

# Single device: no distribution set yet.
single = make()
init = single.get_weights()
result["single_history"] = single.fit(train(), epochs=2, verbose=0).history
single_after = single.get_weights()
single.set_weights(init)
result["skewed_loss_single"] = float(single.train_on_batch(x, y)[0])
local = []
for half in (slice(0, 16), slice(16, 32)):  # what per-device batch statistics would give
    single.set_weights(init)
    local.append(float(single.train_on_batch(x[half], y[half])[0]))
result["skewed_loss_local_statistics"] = sum(local) / 2

keras.distribution.set_distribution(keras.distribution.DataParallel())
parallel = make()
parallel.set_weights(init)
result["variable_sharding"] = str(parallel.trainable_variables[0].value.sharding)
placed = []
distribute = jax_trainer._distribute_data


def spy(batch, *args, **kwargs):
    batch = distribute(batch, *args, **kwargs)
    images = batch[0]
    placed.append({"spec": [str(axis) for axis in images.sharding.spec],
                   "devices": len(images.sharding.device_set)})
    return batch


jax_trainer._distribute_data = spy
result["parallel_history"] = parallel.fit(train(), epochs=2, verbose=0).history
result["batch_sharding"] = placed[0] if placed else None
parallel_after = parallel.get_weights()
parallel.set_weights(init)
result["skewed_loss_parallel"] = float(parallel.train_on_batch(x, y)[0])
jax_trainer._distribute_data = distribute
result["max_weight_diff"] = max(float(np.abs(a - b).max())
                                for a, b in zip(single_after, parallel_after))
result["max_weight_change"] = max(float(np.abs(a - b).max()) for a, b in zip(init, single_after))
result["paths"] = [w.path for w in parallel.weights]
(out / "result.json").write_text(json.dumps(result, default=float))
"""


def test_data_parallel_matches_a_single_device_run(tmp_path):
    result = run_jax(DATA_PARALLEL_RUN, tmp_path, devices=2, optimised=False)
    assert result["devices"] == 2
    # Variables are replicated over a 2-device "batch" mesh, and every batch is split over it.
    assert "'batch': 2" in result["variable_sharding"], result["variable_sharding"]
    assert result["batch_sharding"] == {"spec": ["batch", "None", "None", "None"], "devices": 2}, \
        result["batch_sharding"]
    assert result["max_weight_change"] > 1e-2  # training did move the weights
    # Float32 sums in another order (two devices' halves, then an all-reduce) drift apart over
    # 16 momentum steps: 2.4e-5 measured on a 2-core AMD EPYC without AVX-512 (2026-12-03), under
    # 1e-5 on an Intel Xeon. A wrong reduction (summed instead of averaged gradients, or a
    # replica's half left out) moves the weights by the order of the training itself (> 1e-2).
    assert result["max_weight_diff"] < 1e-4, result["max_weight_diff"]
    for name, values in result["single_history"].items():
        np.testing.assert_allclose(result["parallel_history"][name], values, rtol=1e-5,
                                   err_msg=name)
    # BatchNormalization under DataParallel normalises with the statistics of the global batch,
    # not of each device's half: the loss is the single-device one, not the per-half one.
    assert result["skewed_loss_parallel"] == pytest.approx(result["skewed_loss_single"], rel=1e-5)
    assert abs(result["skewed_loss_local_statistics"] - result["skewed_loss_single"]) > 1e-2

"""What runs inside a worker process of `benchmarks.throughput`: one measurement per process.

The parent (`benchmarks.worker_client.Worker`) starts `python -m benchmarks.throughput
--worker=SPEC`, whose main hands the JSON spec to `worker_main`. A worker speaks JSON lines:
commands on stdin, events on stdout, each prefixed with `PREFIX` so that whatever else a library
prints there is skipped. TensorFlow, Keras and dcm_keras are imported inside the functions: the
parent process imports none of them.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Optional

PREFIX = "@@bench "

# name -> (networks, auxiliary heads, connections, description)
TRAIN_CONFIGS = {
    "plain": (1, False, "none", "one network"),
    "heads": (1, True, "none", "one network + heads (deep supervision)"),
    "pair": (2, False, "none", "independent pair (compare.py's baseline)"),
    "dml": (2, False, "final", "DML pair (final logits KD)"),
    "ce_pair": (2, True, "none", "pair + heads, cross-entropy only"),
    "dcm": (2, True, "dense", "DCM pair (heads, dense KD)"),
}


def _emit(event: str, **payload) -> None:
    sys.stdout.write(PREFIX + json.dumps({"event": event, **payload}) + "\n")
    sys.stdout.flush()


def forward_flops(model) -> int:
    """Forward FLOPs per image of the convolutions and dense layers (2 x multiply-adds)."""
    import keras
    import numpy as np

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            k, out = layer.kernel.shape, layer.output.shape
            total += 2 * out[1] * out[2] * int(np.prod(k))
        elif isinstance(layer, keras.layers.Conv2D):
            k, out = layer.kernel.shape, layer.output.shape
            total += 2 * out[1] * out[2] * int(np.prod(k))
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return int(total)


def _cpu_seconds() -> float:
    """CPU time (user + system, all threads) this process has used so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _set_threads(spec) -> None:
    import tensorflow as tf

    if spec.get("inter_op_threads"):
        tf.config.threading.set_inter_op_parallelism_threads(spec["inter_op_threads"])
    if spec.get("intra_op_threads"):
        tf.config.threading.set_intra_op_parallelism_threads(spec["intra_op_threads"])


def _gpu_peak_mb() -> Optional[float]:
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def _batch(spec):
    import numpy as np

    rng = np.random.RandomState(0)
    size, batch = spec["image_size"], spec["batch_size"]
    x = rng.standard_normal((batch, size, size, 3)).astype("float32")
    y = rng.randint(0, spec["num_classes"], (batch,)).astype("int32")
    return x, y


def _peak_worker(spec) -> None:
    """Machine facts and the matmul peak of each dtype (GFLOP/s, best of several).

    The first one builds `--net` once before measuring (the parent imports no TensorFlow): a
    network that cannot be built is reported as a usage error before anything is measured.
    """
    import keras
    import tensorflow as tf

    from dcm_keras import UserError, networks

    size = spec["image_size"]
    try:
        if spec.get("check_net"):
            networks.build(spec["net"], spec["num_classes"], input_shape=(size, size, 3))
            keras.backend.clear_session()
    except UserError as error:
        _emit("usage", error=f"--net={spec['net']}: {error}")
        return
    gpus = tf.config.list_physical_devices("GPU")
    info = {"tensorflow": tf.__version__, "keras": keras.__version__,
            "gpus": [g.name for g in gpus], "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "onednn_enabled": _onednn_enabled()}
    if gpus:
        try:
            details = tf.config.experimental.get_device_details(gpus[0])
            info["gpu_name"] = details.get("device_name")
        except Exception:  # pragma: no cover - depends on the driver
            pass
    dtypes = ["float32", "bfloat16"] + (["float16"] if gpus else [])
    n, peaks = spec["matmul_size"], {}
    for dtype in dtypes:
        a = tf.random.normal((n, n), dtype=dtype)
        b = tf.random.normal((n, n), dtype=dtype)
        matmul = tf.function(lambda a, b: tf.reduce_sum(tf.linalg.matmul(a, b)[:1, :1]))
        try:
            matmul(a, b).numpy()
        except Exception as error:  # dtype not supported on this device
            peaks[dtype] = None
            info[f"matmul_{dtype}_error"] = str(error).splitlines()[0][:200]
            continue
        best = 0.0
        for _ in range(spec["matmul_repeats"]):
            start = time.perf_counter()
            matmul(a, b).numpy()
            best = max(best, 2 * n ** 3 / (time.perf_counter() - start))
        peaks[dtype] = best / 1e9
    _emit("peak", info=info, peak_gflops=peaks)


def _data_worker(spec) -> None:
    """Images/s of the input pipeline: synthetic CIFAR-shaped data through dcm_keras.data's
    augmentation (reflect-pad 4, random crop, flip, normalise; per example, AUTOTUNE map,
    deterministic), and `dcm_keras.data.load` on a real dataset."""
    import numpy as np
    import tensorflow as tf

    try:
        from dcm_keras import data as data_lib
    except ImportError as error:
        _emit("data", error=f"dcm_keras.data is not available: {error}")
        return
    _set_threads(spec)
    batch, size, n = spec["batch_size"], spec["image_size"], spec["data_examples"]

    def rate(ds) -> float:
        it = iter(ds)
        for _ in range(5):  # warm-up: fills the prefetch buffers and the cache
            next(it)
        start = time.perf_counter()
        for _ in range(spec["data_batches"]):
            next(it)
        return spec["data_batches"] * batch / (time.perf_counter() - start)

    results = {}
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = rng.randint(0, spec["num_classes"], (n,)).astype("int32")
    mean = getattr(data_lib, "CIFAR_MEAN", (0.5, 0.5, 0.5))
    std = getattr(data_lib, "CIFAR_STD", (0.25, 0.25, 0.25))
    key = tf.constant([0, 1], tf.int64)

    def augment(i, xy):
        example_key = tf.random.experimental.stateless_fold_in(key, i)
        image = data_lib.pad_crop_flip(xy[0], example_key, 4)
        return data_lib.normalize(image, mean, std), xy[1]

    options = tf.data.Options()
    options.deterministic = True
    synthetic = (tf.data.Dataset.from_tensor_slices((images, labels)).cache().repeat()
                 .enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=True)
                 .batch(batch, drop_remainder=True).with_options(options)
                 .prefetch(tf.data.AUTOTUNE))
    results["synthetic"] = {"images_per_s": rate(synthetic),
                            "what": f"synthetic {size}x{size}x3 uint8 in memory, n={n}, "
                                    "dcm_keras.data.pad_crop_flip + normalize"}
    if spec.get("data_real"):
        try:
            real = data_lib.load(spec["data_real"], "train", batch_size=batch, repeat=True,
                                 seed=0)
            results["real"] = {"images_per_s": rate(real),
                               "what": f"dcm_keras.data.load({spec['data_real']!r}, 'train')"}
        except Exception as error:  # dataset not available on this machine
            results["real"] = {"error": f"{type(error).__name__}: {error}"[:300]}
    _emit("data", results=results)


class _Timer:
    """Keras callback timing the batches of one fit/predict call (first begin -> last end)."""

    def __new__(cls):
        import keras
        import numpy as np

        class Timer(keras.callbacks.Callback):
            def reset(self):
                self.start = None
                self.end = None
                self.batches = 0

            def _begin(self, batch, logs=None):
                if self.start is None:
                    self.start = time.perf_counter()

            def _end(self, batch, logs=None):
                # Materialise the step's outputs so the time covers the whole computation.
                keras.tree.map_structure(np.asarray, logs or {})
                self.end = time.perf_counter()
                self.batches += 1

            on_train_batch_begin = on_predict_batch_begin = _begin
            on_train_batch_end = on_predict_batch_end = _end

        timer = Timer()
        timer.reset()
        return timer


def _accuracy_worker(spec) -> None:
    """A short real-data DCM run (same seed, data order and initial weights in every precision):
    test accuracy of each network's final head, to show mixed precision does not change it."""
    import keras

    from dcm_keras import DCM, data as data_lib, networks

    _set_threads(spec)
    keras.mixed_precision.set_global_policy(spec["precision"])
    keras.utils.set_random_seed(spec["seed"])
    name, batch = spec["dataset"], spec["batch_size"]
    info = data_lib.get_info(name)
    train = data_lib.load(name, "train", batch_size=batch, max_examples=spec["examples"],
                          seed=spec["seed"])
    test = data_lib.load(name, "test", batch_size=500)
    nets = [networks.build(spec["net"], info.num_classes, input_shape=info.image_shape)
            for _ in range(2)]
    model = DCM(nets, connections="dense")
    # Linear decay to 0 over the run, so the weights and BN statistics settle by its end.
    schedule = keras.optimizers.schedules.PolynomialDecay(
        spec["lr"], decay_steps=spec["epochs"] * (min(spec["examples"], info.num_train) // batch),
        end_learning_rate=0.0)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9))
    start = time.perf_counter()
    history = model.fit(train, epochs=spec["epochs"], verbose=0)
    train_s = time.perf_counter() - start
    results = model.evaluate(test, verbose=0, return_dict=True)
    _emit("accuracy", train_seconds=train_s, seed=spec["seed"],
          final_train_loss=float(history.history["loss"][-1]),
          test={k: float(v) for k, v in results.items() if k.endswith("_acc") or k == "loss"},
          dataset=name, examples=int(spec["examples"]), epochs=spec["epochs"])


def _model_worker(spec) -> None:
    """Builds one configuration, warms it up, then times a window per `window` command."""
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks.memory import peak_rss_self_mb

    import_rss_mb = peak_rss_self_mb()  # TensorFlow and Keras imported, nothing built yet
    from dcm_keras import DCM, networks

    _set_threads(spec)
    keras.mixed_precision.set_global_policy(spec["precision"])
    keras.utils.set_random_seed(0)
    config = spec["config"]
    if spec.get("bn") == "keras":  # before/after comparisons: Keras's own BN layer
        from dcm_keras.networks import common

        common.BatchNormalization = keras.layers.BatchNormalization
    shape = (spec["image_size"], spec["image_size"], 3)
    x, y = _batch(spec)
    timer = _Timer()
    xla = bool(spec["xla"])
    build_start = time.perf_counter()
    loss_step = None
    if config == "eval":
        net = networks.build(spec["net"], spec["num_classes"], input_shape=shape, aux_heads=True)
        model = DCM([net]).export_network(0)
        model.compile(jit_compile=xla)
        flops = forward_flops(model)
        dataset = tf.data.Dataset.from_tensors(x).repeat().prefetch(2)

        def run(steps):
            model.predict(dataset, steps=steps, verbose=0, callbacks=[timer])
    else:
        count, heads, connections, _ = TRAIN_CONFIGS[config]
        nets = [networks.build(spec["net"], spec["num_classes"], input_shape=shape,
                               aux_heads=heads) for _ in range(count)]
        model = DCM(nets, connections=connections)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=xla)
        flops = 3 * forward_flops(model)
        dataset = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)

        def run(steps):
            model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])

    if config != "eval" and spec.get("loss_cost", True):
        # The loss + metrics graph alone (forward and backward, weight decay included), on logits
        # of the dtype the networks produce: what the step spends outside the networks, less the
        # optimizer update.
        y_pred = {k: tf.constant(v) for k, v in model(x, training=False).items()}
        y_true = tf.constant(y)

        @tf.function(jit_compile=xla)
        def loss_step(y_pred, y_true):
            with tf.GradientTape() as tape:
                tape.watch(y_pred)
                loss = model.compute_loss(y=y_true, y_pred=y_pred, training=True)
            grads = tape.gradient(loss, [y_pred, model.trainable_variables],
                                  unconnected_gradients="zero")
            model.compute_metrics(None, y_true, y_pred)
            return loss, grads

        keras.tree.map_structure(np.asarray, loss_step(y_pred, y_true))
    params = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
    timer.reset()
    run(spec["warmup"])
    _emit("ready", flops_per_image=flops, params=params,
          startup_s=time.perf_counter() - build_start, import_rss_mb=import_rss_mb)

    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        steps = int(command.get("steps") or spec["steps_per_window"])
        timer.reset()
        cpu_start = _cpu_seconds()
        run(steps)
        cpu = _cpu_seconds() - cpu_start
        seconds = timer.end - timer.start
        result = {"seconds": seconds, "steps": steps, "cpu_seconds": cpu,
                  "images_per_s": steps * spec["batch_size"] / seconds}
        if loss_step is not None:
            times = []
            for _ in range(spec["loss_cost_repeats"]):
                start = time.perf_counter()
                keras.tree.map_structure(np.asarray, loss_step(y_pred, y_true))
                times.append(time.perf_counter() - start)
            result["loss_graph_s"] = statistics.median(times)
        _emit("window", **result)
    import resource

    _emit("done", rss_self_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          gpu_peak_mb=_gpu_peak_mb())


def _onednn_enabled() -> Optional[bool]:
    """Whether TensorFlow runs its oneDNN kernels in this process (None where it cannot say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # pragma: no cover - depends on the TensorFlow build
        return None


def worker_main(spec: dict) -> None:
    """Runs the measurement `spec["kind"]` names (a model configuration by default); an error is
    reported to the parent as an `error` event, and the process exits with status 1."""
    try:
        {"peak": _peak_worker, "data": _data_worker, "accuracy": _accuracy_worker}.get(
            spec["kind"], _model_worker)(spec)
    except Exception as error:  # reported to the parent, which shows the log tail
        import traceback

        traceback.print_exc()
        _emit("error", error=f"{type(error).__name__}: {error}"[:2000])
        sys.exit(1)

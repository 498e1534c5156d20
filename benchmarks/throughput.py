r"""Training and evaluation throughput of dcm_keras, measured side by side with the PyTorch peer.

    python -m benchmarks.throughput                                    # everything, no peer
    python -m benchmarks.throughput --peer --output_json=throughput.json
    python -m benchmarks.throughput --configs=dcm,ce_pair --precisions=best --xla=off --peer

What is measured (all through Keras's own `fit` / `predict`, i.e. the real `train_function` /
`predict_function` that `model.fit` builds, on one in-memory batch repeated by `tf.data`):

    plain    one network without heads, cross-entropy only            (DCM([net], "none"))
    heads    one network with its auxiliary heads (deep supervision)  (DCM([net], "none"))
    dml      two networks without heads, KD between final logits      (DCM(2 nets, "final"))
    ce_pair  two networks with heads, cross-entropy only              (DCM(2 nets, "none"))
    dcm      two networks with heads, dense cross-layer KD            (DCM(2 nets, "dense"))
    eval     an exported network (`DCM.export_network`) in `predict`
    data     the `dcm_keras.data` input pipeline (augmentation included), no model

Every figure is the median of `--windows` timed windows of `--steps_per_window` steps, after
`--warmup` steps (which include tracing and XLA compilation). Each configuration runs in its own
worker process, so its peak RSS (`ru_maxrss`, from `os.wait4`) is its own; the workers of one
(precision, XLA) group are alive together and take their windows in turn, so they see the same
machine load. Shared machines drift a lot, so compare figures *within* one run: ratios are formed
from windows taken next to each other (DCM vs CE-only: same round; ours vs peer: the peer's runs
just before and after our window).

Model FLOPs utilisation = training FLOPs per image (3 x the forward FLOPs of every convolution and
dense layer, counted from the layer shapes; BN, activations, the loss and the optimizer are not
counted) x images/s / the peak FLOP/s of a large dense matmul in the same dtype, measured in this
run (best of several). `best` / `auto` precision is mixed_float16 with a GPU, mixed_bfloat16 on a
CPU with AVX512-BF16 or AMX-BF16, else float32.

`--peer` runs the PyTorch reference step (`torch_dcm_ref.py DEPTH WIDTH BATCH STEPS`, see its
README) with `--peer_python`, interleaved with our DCM pair in float32 and in the best precision:
peer, ours fp32, ours best, peer, ... Each of our windows is divided by the mean of the peer runs
around it; the ratio reported is the median of those. For a like-for-like figure, our windows in
this phase have as many steps as the peer's timed run, and our workers then run nothing else.

Every timed row also reports images per CPU-second (user + system time of all the process's
threads): a measure of the work a step costs that load from other processes barely moves, unlike
images/s. The peer's is taken from its process's rusage less that of a run with 0 timed steps.

The peer phase also reports peak RSS above the framework's import on both sides: our worker's
peak less its peak right after importing TensorFlow and Keras, the peer's less that of a process
that only runs `--peer_import` (`import torch`), and whether ours exceeds the peer's per precision.

`--accuracy` adds a short real-data run (default: Fashion-MNIST, 12,800 examples x 2 epochs) of the
DCM pair in float32 and in the best precision from the same seed, and compares test accuracy.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from absl import app, flags

from benchmarks.machine import (cpu_info, refuse_existing_output, resolve_precision,
                                write_new_json)
from benchmarks.memory import above_import, compare_above_import, import_peak_rss_mb

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PEER_SCRIPT = os.path.normpath(
    os.path.join(REPO_ROOT, "..", "shared", "peer", "torch_dcm_ref.py"))
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
CONFIGS = list(TRAIN_CONFIGS) + ["eval", "data"]

FLAGS = flags.FLAGS
flags.DEFINE_string("net", "wrn_16_2", "Network name (see dcm_keras.networks.list_networks()).")
flags.DEFINE_integer("num_classes", 100, "Classes of every head.", lower_bound=2)
flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
flags.DEFINE_integer("image_size", 32, "Square input size (3 channels).", lower_bound=8)
flags.DEFINE_list("precisions", ["float32", "best"],
                  "Dtype policies: float32, mixed_bfloat16, mixed_float16, best (= auto).")
flags.DEFINE_enum("xla", "both", ["both", "on", "off"], "jit_compile of the train/predict step.")
flags.DEFINE_integer("windows", 5, "Timed windows per configuration (the median is reported).",
                     lower_bound=1)
flags.DEFINE_integer("steps_per_window", 4, "Steps per timed window.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing, XLA compilation).",
                     lower_bound=1)
flags.DEFINE_list("configs", CONFIGS, f"Subset of {', '.join(CONFIGS)}.")
flags.DEFINE_bool("interleave", True,
                  "Keep the workers of a (precision, XLA) group alive together and take their "
                  "windows in turn (fairer under drifting load); else one after the other.")
flags.DEFINE_enum("bn", "fused", ["fused", "keras", "both"],
                  "BatchNormalization of the networks: fused (the library's, "
                  "dcm_keras.networks.common.BatchNormalization), keras (Keras's own composite "
                  "layer, the state before the fused one) or both, every configuration with each "
                  "in the same rounds, for a before/after comparison.")
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: TF's default).",
                     lower_bound=0)
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0: TF's default).",
                     lower_bound=0)
flags.DEFINE_integer("loss_cost_repeats", 20,
                     "Calls of the isolated loss+metrics graph timed after each window.",
                     lower_bound=1)
flags.DEFINE_integer("data_examples", 50_000, "Examples of the synthetic CIFAR-shaped dataset.",
                     lower_bound=1)
flags.DEFINE_integer("data_batches", 100, "Batches timed per input-pipeline measurement.",
                     lower_bound=1)
flags.DEFINE_string("data_real", "fashion_mnist",
                    "Also time `dcm_keras.data.load` on this real dataset ('' to skip).")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square matrices of the peak benchmark.",
                     lower_bound=16)
flags.DEFINE_integer("matmul_repeats", 10, "Matmuls per dtype (the best is kept).", lower_bound=1)
flags.DEFINE_bool("peer", False, "Also run the PyTorch peer, interleaved with our DCM pair.")
PEER_MODES = {"fp32": "float32", "fp32+cl": "float32", "bf16": "mixed_bfloat16",
              "bf16+cl": "mixed_bfloat16"}  # mode -> the precision of ours it is compared with
flags.DEFINE_string("peer_python", "/tmp/peer-venv/bin/python", "Python of the peer's venv.")
flags.DEFINE_string("peer_script", DEFAULT_PEER_SCRIPT, "The peer's torch_dcm_ref.py.")
flags.DEFINE_list("peer_modes", list(PEER_MODES),
                  "Modes of the peer (its 5th argument): fp32 (NCHW), fp32+cl (channels_last), "
                  "bf16 (torch.autocast), bf16+cl. Ours is compared with the best mode of each "
                  "precision.")
flags.DEFINE_string("peer_import", "import torch",
                    "Python statement run alone with --peer_python: its peak RSS is the peer's "
                    "framework import, subtracted from the peer's peak RSS (memory above import).")
flags.DEFINE_integer("peer_steps", 6, "Timed steps of each peer run (and of our windows then).",
                     lower_bound=1)
flags.DEFINE_integer("peer_rounds", 4, "Rounds of (peer, ours float32, ours best), then a "
                     "final peer run.", lower_bound=1)
flags.DEFINE_enum("peer_xla", "auto", ["auto", "on", "off"],
                  "XLA setting of our DCM pair in the peer phase; auto: per precision, the one "
                  "with the higher DCM throughput in this run's table (off without a DCM row).")
flags.DEFINE_bool("accuracy", False,
                  "Also train the DCM pair briefly on real data in float32 and in each other "
                  "precision (same seed) and compare test accuracy.")
flags.DEFINE_string("accuracy_dataset", "fashion_mnist", "Dataset of the accuracy check.")
flags.DEFINE_integer("accuracy_examples", 16_000, "Training examples of the accuracy check.",
                     lower_bound=1)
flags.DEFINE_integer("accuracy_epochs", 2, "Epochs of the accuracy check.", lower_bound=1)
flags.DEFINE_float("accuracy_lr", 0.05,
                   "Initial SGD learning rate of the accuracy check (linear decay to 0).")
flags.DEFINE_string("output_json", None, "Write every result (and the markdown) here.")
flags.DEFINE_string("worker", None, "Internal: run one measurement worker (JSON spec).")


# ==================================================================================================
# Worker side (one configuration per process)


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


def _on_off(value: Optional[bool]) -> str:
    return {True: "on", False: "off"}.get(value, "unknown")


def _onednn_enabled() -> Optional[bool]:
    """Whether TensorFlow runs its oneDNN kernels in this process (None where it cannot say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):  # pragma: no cover - depends on the TensorFlow build
        return None


def worker_main(spec) -> None:
    try:
        {"peak": _peak_worker, "data": _data_worker, "accuracy": _accuracy_worker}.get(
            spec["kind"], _model_worker)(spec)
    except Exception as error:  # reported to the parent, which shows the log tail
        import traceback

        traceback.print_exc()
        _emit("error", error=f"{type(error).__name__}: {error}"[:2000])
        sys.exit(1)


# ==================================================================================================
# Parent side


class WorkerError(RuntimeError):
    pass


class Worker:
    """A worker process speaking JSON lines (commands on stdin, `PREFIX` events on stdout)."""

    def __init__(self, spec: dict, log_dir: str, label: str):
        self.label = label
        self.log_path = os.path.join(log_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", label) + ".log")
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        env.update(spec.get("env") or {})  # settings read at TensorFlow's start (oneDNN, malloc)
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.throughput", "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            cwd=REPO_ROOT, env=env)
        self.rss_mb = None

    def _tail(self) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-25:])

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                message = json.loads(line[len(PREFIX):])
                if message["event"] == "error":
                    raise WorkerError(f"{self.label}: {message['error']}\n{self._tail()}")
                return message
        self.wait()
        raise WorkerError(f"{self.label}: worker exited ({self.proc.returncode}) without a "
                          f"result.\n{self._tail()}")

    def request(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def wait(self) -> None:
        """Reaps the process with its own rusage (peak RSS of this worker only)."""
        if self.proc.returncode is None:
            _, status, usage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.rss_mb = usage.ru_maxrss / 1024
        self._log.close()

    def close(self) -> dict:
        try:
            done = self.request(cmd="quit")
        finally:
            self.proc.stdin.close()
            self.wait()
        return done

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.wait()


def run_peer(python: str, script: str, depth: int, width: int, batch: int, steps: int,
             mode: str = "fp32") -> dict:
    """One run of the peer in `mode`: images/s (its own timing) and the process's peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([python, script, str(depth), str(width), str(batch), str(steps), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.abspath(script)), env=dict(os.environ))
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"peer ({mode}) failed ({proc.returncode}): {err.strip()[-2000:]}")
    numbers = re.findall(r"[-+]?\d+(?:\.\d+)?", out.strip().splitlines()[-1] if out.strip() else "")
    if not numbers:
        raise RuntimeError(f"could not read images/s from the peer's output: {out!r}")
    return {"mode": mode, "images_per_s": float(numbers[-1]), "rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.perf_counter() - start}


def best_peer_mode(modes: Dict[str, dict], precision: str) -> Optional[str]:
    """The peer's fastest mode (by median images/s) among those of `precision`."""
    candidates = [m for m in modes if PEER_MODES.get(m) == precision]
    return max(candidates, key=lambda m: modes[m]["images_per_s"], default=None)


def peak_dtype(precision: str) -> str:
    return {"float32": "float32", "mixed_bfloat16": "bfloat16",
            "mixed_float16": "float16"}.get(precision, "float32")


def mfu_peak(peaks: Dict[str, Optional[float]], precision: str) -> Optional[float]:
    """The matmul peak (GFLOP/s) that a step of `precision` is measured against.

    The higher of the precision's dtype and float32: on a CPU without bf16 hardware oneDNN
    emulates bfloat16 matmuls at a fraction of the float32 rate, while a mixed-precision step
    still runs much of its work in float32, so the bf16 peak alone is no ceiling (MFU above
    100 % was reported that way). Where bf16 is native its peak is the higher one anyway.
    """
    candidates = [peaks.get(peak_dtype(precision)), peaks.get("float32")]
    candidates = [p for p in candidates if p]
    return max(candidates) if candidates else None


def memory_lines(peer: dict) -> List[str]:
    """Peak RSS above the framework's import, ours against the peer's best mode, per precision."""
    ours_import = next((r.get("import_rss_mb") for r in peer["ours"]), None)
    peer_import = next((m.get("import_rss_mb") for m in peer["modes"].values()), None)
    lines = [f"Peak RSS above the framework's import (ours: TensorFlow+Keras, "
             f"{_fmt(ours_import, '.0f')} MiB; peer: `{peer.get('peer_import', 'import torch')}`, "
             f"{_fmt(peer_import, '.0f')} MiB):"]
    for e in peer.get("memory_above_import") or compare_above_import(peer):
        verdict = {True: "**ours exceeds the peer's**", False: "ours does not exceed the peer's",
                   None: "not compared"}[e["ours_exceeds_peer"]]
        lines.append(f"- {e['precision']}: ours {_fmt(e['ours_mb'], '.0f')} MiB, peer "
                     f"({e['peer_mode'] or '-'}) {_fmt(e['peer_mb'], '.0f')} MiB: {verdict}.")
    return lines


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value, spec=".1f", suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


class Benchmark:
    def __init__(self):
        self.log_dir = tempfile.mkdtemp(prefix="dcm_throughput_")
        self.base = {"net": FLAGS.net, "num_classes": FLAGS.num_classes,
                     "batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size,
                     "warmup": FLAGS.warmup, "steps_per_window": FLAGS.steps_per_window,
                     "inter_op_threads": FLAGS.inter_op_threads,
                     "intra_op_threads": FLAGS.intra_op_threads,
                     "loss_cost_repeats": FLAGS.loss_cost_repeats}
        self.machine = cpu_info()
        self.peaks: Dict[str, float] = {}
        self.rows: List[dict] = []
        self.distillation: List[dict] = []
        self.data: Optional[dict] = None
        self.peer: Optional[dict] = None
        self.accuracy: Optional[List[dict]] = None
        self.notes: List[str] = []

    # --- helpers -----------------------------------------------------------------------------
    def _spec(self, **kwargs) -> dict:
        return {**self.base, **kwargs}

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def measure_peak(self) -> None:
        worker = Worker(self._spec(kind="peak", matmul_size=FLAGS.matmul_size,
                                   matmul_repeats=FLAGS.matmul_repeats, check_net=not self.peaks),
                        self.log_dir, "peak")
        try:
            message = worker.read()
        finally:
            worker.proc.stdin.close()
            worker.wait()
        if message["event"] == "usage":
            raise app.UsageError(message["error"])
        self.machine.update(message["info"])
        for dtype, value in message["peak_gflops"].items():
            if value is not None:
                self.peaks[dtype] = max(self.peaks.get(dtype, 0.0), value)
        self.log(f"matmul peak GFLOP/s: { {k: round(v) for k, v in self.peaks.items()} }")

    def start_worker(self, config: str, precision: str, xla: bool, bn: str = "fused",
                     **extra) -> Worker:
        """One worker process for `config`, returned once it is built and warmed up."""
        (worker,) = self.start_workers([dict(config=config, precision=precision, xla=xla, bn=bn,
                                             **extra)])
        return worker

    def start_workers(self, runs: List[dict]) -> List[Worker]:
        """Workers for `runs` (`start_worker`'s arguments), up to one per CPU starting side by side.

        Start-up (imports, building, tracing, warm-up) is not timed, and mostly runs on one
        thread, so starting workers together saves time without touching what is measured: every
        timed window comes after all of them are ready.
        """
        workers: List[Worker] = []
        # On a GPU, cuDNN picks its kernels by timing them during warm-up: one at a time there.
        gpu = self.machine.get("gpus") or glob.glob("/dev/nvidia[0-9]*")
        at_once = 1 if gpu else self.machine.get("usable_cpus") or os.cpu_count() or 1
        try:
            for first in range(0, len(runs), at_once):
                batch = []
                for run in runs[first:first + at_once]:
                    batch.append(self._spawn(**run))
                    workers.append(batch[-1])
                for worker in batch:
                    worker.ready = worker.read()
        except BaseException:  # Ctrl-C too: no worker outlives the benchmark
            for worker in workers:
                worker.kill()
            raise
        return workers

    def _spawn(self, config: str, precision: str, xla: bool, bn: str = "fused",
               **extra) -> Worker:
        label = f"{config}-{precision}-{'xla' if xla else 'noxla'}-{bn}bn" + "".join(
            f"-{key}={value}" for key, value in sorted(extra.items()) if key != "loss_cost")
        self.log(f"starting {label}")
        worker = Worker(self._spec(kind="model", config=config, precision=precision, xla=xla,
                                   bn=bn, **extra), self.log_dir, label)
        worker.config, worker.precision, worker.xla, worker.bn = config, precision, xla, bn
        worker.windows = []
        return worker

    def _row(self, worker: Worker) -> dict:
        rates = [w["images_per_s"] for w in worker.windows]
        median = _median(rates)
        flops = worker.ready["flops_per_image"]
        peak = mfu_peak(self.peaks, worker.precision)
        row = {
            "config": worker.config,
            "what": (TRAIN_CONFIGS[worker.config][3] if worker.config in TRAIN_CONFIGS
                     else "exported network, predict")
            + (" [Keras BN]" if worker.bn == "keras" else ""),
            "bn": worker.bn,
            "precision": worker.precision, "xla": worker.xla,
            "images_per_s": median, "images_per_s_min": min(rates), "images_per_s_max": max(rates),
            "images_per_s_mean": sum(w["steps"] for w in worker.windows) * FLAGS.batch_size
            / sum(w["seconds"] for w in worker.windows),
            "images_per_cpu_s": sum(w["steps"] for w in worker.windows) * FLAGS.batch_size
            / sum(w["cpu_seconds"] for w in worker.windows),
            "windows": rates,
            "step_ms": 1000 * FLAGS.batch_size / median,
            "gflop_per_image": flops / 1e9,
            "mfu": flops * median / (peak * 1e9) if peak else None,
            "params": worker.ready["params"], "startup_s": worker.ready["startup_s"],
            "rss_mb": worker.rss_mb, "gpu_peak_mb": worker.done.get("gpu_peak_mb"),
            "import_rss_mb": worker.ready.get("import_rss_mb"),
            "rss_above_import_mb": above_import(worker.rss_mb, worker.ready.get("import_rss_mb")),
        }
        loss = [w.get("loss_graph_s") for w in worker.windows]
        if any(v is not None for v in loss):
            row["loss_graph_ms"] = 1000 * _median(loss)
            row["loss_graph_share"] = _median(
                [w["loss_graph_s"] / w["seconds"] * w["steps"] for w in worker.windows])
        return row

    # --- phases ------------------------------------------------------------------------------
    def run_group(self, configs: List[str], precision: str, xla: bool) -> List[dict]:
        workers: List[Worker] = []
        variants = ["fused", "keras"] if FLAGS.bn == "both" else [FLAGS.bn]
        runs = [(config, bn) for config in configs for bn in variants]
        try:
            if FLAGS.interleave:
                workers.extend(self.start_workers([
                    dict(config=config, precision=precision, xla=xla, bn=bn)
                    for config, bn in runs]))
                for window in range(FLAGS.windows):
                    for worker in workers:
                        worker.windows.append(worker.request(cmd="window"))
                    self.log(f"{precision} xla={xla} window {window + 1}/{FLAGS.windows}: " +
                             ", ".join(f"{w.config}/{w.bn} {w.windows[-1]['images_per_s']:.1f}"
                                       for w in workers))
                for worker in workers:
                    worker.done = worker.close()
            else:
                for config, bn in runs:
                    worker = self.start_worker(config, precision, xla, bn)
                    workers.append(worker)
                    for _ in range(FLAGS.windows):
                        worker.windows.append(worker.request(cmd="window"))
                    worker.done = worker.close()
        finally:
            for worker in workers:
                worker.kill()
        rows = [self._row(w) for w in workers]
        self.rows.extend(rows)
        by_config = {w.config: (w, r) for w, r in zip(workers, rows) if w.bn == variants[0]}
        if "dcm" in by_config and "ce_pair" in by_config:
            (dcm, dcm_row), (ce, ce_row) = by_config["dcm"], by_config["ce_pair"]
            paired = [d["seconds"] / d["steps"] / (c["seconds"] / c["steps"]) - 1
                      for d, c in zip(dcm.windows, ce.windows)]
            self.distillation.append({
                "precision": precision, "xla": xla,
                "dcm_vs_ce_step_time": _median(paired), "paired_windows": paired,
                "paired": FLAGS.interleave,
                "dcm_loss_graph_ms": dcm_row.get("loss_graph_ms"),
                "ce_loss_graph_ms": ce_row.get("loss_graph_ms"),
                "dcm_loss_graph_share": dcm_row.get("loss_graph_share"),
                "kd_share": (dcm_row["loss_graph_ms"] - ce_row["loss_graph_ms"])
                / dcm_row["step_ms"] if dcm_row.get("loss_graph_ms") is not None else None,
            })
        return rows

    def run_data(self) -> None:
        self.log("timing the input pipeline")
        worker = Worker(self._spec(kind="data", data_examples=FLAGS.data_examples,
                                   data_batches=FLAGS.data_batches, data_real=FLAGS.data_real),
                        self.log_dir, "data")
        try:
            message = worker.read()
        finally:
            worker.proc.stdin.close()
            worker.wait()
        if "error" in message:
            self.data = {"error": message["error"]}
        else:
            self.data = {**message["results"], "rss_mb": worker.rss_mb}

    def run_accuracy(self, precisions: List[str]) -> None:
        """Every precision from seed 0, plus float32 from seed 1 to show how much accuracy moves
        with the seed alone. The runs train at once (accuracy does not depend on speed)."""
        runs = [(precision, 0) for precision in precisions] + [("float32", 1)]
        self.log(f"accuracy check on {FLAGS.accuracy_dataset}: {runs}")
        workers = [Worker(self._spec(kind="accuracy", precision=precision, seed=seed,
                                     dataset=FLAGS.accuracy_dataset,
                                     examples=FLAGS.accuracy_examples,
                                     epochs=FLAGS.accuracy_epochs, lr=FLAGS.accuracy_lr),
                          self.log_dir, f"accuracy-{precision}-seed{seed}")
                   for precision, seed in runs]
        self.accuracy = []
        try:
            for (precision, _), worker in zip(runs, workers):
                message = worker.read()
                worker.proc.stdin.close()
                worker.wait()
                self.accuracy.append({"precision": precision, **{
                    k: v for k, v in message.items() if k != "event"}, "rss_mb": worker.rss_mb})
        finally:
            for worker in workers:
                worker.kill()

    def run_peer(self, precisions: List[str], xla_choice: Dict[str, bool]) -> None:
        match = re.fullmatch(r"wrn_(\d+)_(\d+)", FLAGS.net)
        if not match:
            self.notes.append(f"--peer skipped: the peer only implements WRN-D-K, not {FLAGS.net}.")
            return
        depth, width = int(match.group(1)), int(match.group(2))
        unknown = [m for m in FLAGS.peer_modes if m not in PEER_MODES]
        if unknown:
            raise app.UsageError(f"Unknown --peer_modes {unknown}; valid: {', '.join(PEER_MODES)}.")
        modes = list(dict.fromkeys(FLAGS.peer_modes))
        comparable = FLAGS.num_classes == 100 and FLAGS.image_size == 32
        if not comparable:
            self.notes.append("The peer always uses 100 classes and 32x32 inputs; this run's "
                              "configuration differs, so the peer ratios are not like for like.")
        if not os.path.isfile(FLAGS.peer_script):
            raise FileNotFoundError(f"No peer script at {FLAGS.peer_script}.")
        ours = []
        runs: Dict[str, List[dict]] = {mode: [] for mode in modes}

        def peer(mode: str, steps: int) -> dict:
            return run_peer(FLAGS.peer_python, FLAGS.peer_script, depth, width,
                            FLAGS.batch_size, steps, mode)

        try:
            # Like the peer's process, ours then runs nothing but the training step.
            ours.extend(self.start_workers([
                dict(config="dcm", precision=precision, xla=xla_choice[precision],
                     bn="keras" if FLAGS.bn == "keras" else "fused", loss_cost=False)
                for precision in precisions]))
            # Runs with 0 timed steps: the CPU time of each mode's start-up and 2 warm-up steps,
            # subtracted from the other runs' to get its CPU time per timed step.
            startup = {mode: peer(mode, 0) for mode in modes}
            try:  # the peer's framework alone: its memory above import is measured from here
                peer_import_mb = import_peak_rss_mb(
                    FLAGS.peer_python, FLAGS.peer_import,
                    cwd=os.path.dirname(os.path.abspath(FLAGS.peer_script)))
            except RuntimeError as error:
                peer_import_mb = None
                self.notes.append(f"The peer's import was not measured: {error}")
            # Every round runs each peer mode once, then one window of each of ours, so every
            # window of ours has a run of every peer mode just before and just after it.
            for round_index in range(FLAGS.peer_rounds + 1):
                for mode in modes:
                    runs[mode].append(peer(mode, FLAGS.peer_steps))
                    self.log(f"peer {mode} {runs[mode][-1]['images_per_s']:.1f} img/s, "
                             f"RSS {runs[mode][-1]['rss_mb']:.0f} MiB")
                if round_index == FLAGS.peer_rounds:
                    break
                for worker in ours:
                    worker.windows.append(worker.request(cmd="window", steps=FLAGS.peer_steps))
                    self.log(f"ours {worker.precision} {worker.windows[-1]['images_per_s']:.1f}")
            for worker in ours:
                worker.done = worker.close()
        finally:
            for worker in ours:
                worker.kill()
        per_mode = {}
        for mode in modes:
            timed_cpu = sum(r["cpu_s"] - startup[mode]["cpu_s"] for r in runs[mode])
            per_mode[mode] = {
                "precision": PEER_MODES[mode], "runs": runs[mode], "startup_run": startup[mode],
                "images_per_s": _median([r["images_per_s"] for r in runs[mode]]),
                "images_per_cpu_s": (len(runs[mode]) * FLAGS.peer_steps * FLAGS.batch_size
                                     / timed_cpu) if timed_cpu > 0 else None,
                "rss_mb": max(r["rss_mb"] for r in runs[mode]), "import_rss_mb": peer_import_mb,
                "rss_above_import_mb": above_import(max(r["rss_mb"] for r in runs[mode]),
                                                    peer_import_mb)}
        result = {"depth": depth, "width": width, "steps": FLAGS.peer_steps,
                  "comparable": comparable, "modes": per_mode, "ours": [],
                  "peer_import": FLAGS.peer_import}

        def paired(windows: List[dict], mode: str) -> List[float]:
            rates = [r["images_per_s"] for r in runs[mode]]
            return [w["images_per_s"] / ((rates[i] + rates[i + 1]) / 2)
                    for i, w in enumerate(windows)]

        for worker in ours:
            row = self._row(worker)
            best = best_peer_mode(per_mode, worker.precision)
            naive = "fp32" if "fp32" in per_mode else None
            row["best_peer_mode"] = best
            if best is not None:
                ratios = paired(worker.windows, best)
                row.update({"ratio_vs_peer": _median(ratios), "paired_ratios": ratios,
                            "ratio_of_medians": row["images_per_s"]
                            / per_mode[best]["images_per_s"],
                            "rss_vs_peer": row["rss_mb"] / per_mode[best]["rss_mb"]
                            if row.get("rss_mb") else None,
                            "cpu_work_ratio": row["images_per_cpu_s"]
                            / per_mode[best]["images_per_cpu_s"]
                            if per_mode[best]["images_per_cpu_s"] else None})
            if naive is not None:
                row["ratio_vs_naive_peer"] = _median(paired(worker.windows, naive))
            result["ours"].append(row)
        result["memory_above_import"] = compare_above_import(result)
        self.peer = result

    # --- report ------------------------------------------------------------------------------
    def markdown(self) -> str:
        m = self.machine
        lines = [
            f"Machine: {m.get('cpu_model') or m.get('processor')} (family {m.get('cpu_family')} "
            f"model {m.get('cpu_model_number')}), {m.get('usable_cpus')} usable CPUs, "
            f"{m.get('memory_gib')} GiB; GPUs: {', '.join(m.get('gpus') or []) or 'none'}; "
            f"TensorFlow {m.get('tensorflow')} (oneDNN {_on_off(m.get('onednn_enabled'))}), "
            f"Keras {m.get('keras')}; {self.date}.",
            f"Net {FLAGS.net}, {FLAGS.num_classes} classes, {FLAGS.image_size}x{FLAGS.image_size}"
            f"x3, batch {FLAGS.batch_size}; median of {FLAGS.windows} windows x "
            f"{FLAGS.steps_per_window} steps after {FLAGS.warmup} warm-up steps. Matmul peak "
            "(GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in self.peaks.items()) + ".",
        ]
        if self.rows:
            lines += ["",
                      "| config | what | precision | XLA | images/s | min-max | ms/step "
                      "| images/CPU-s | GFLOP/img | MFU | peak RSS MiB |",
                      "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            memory = _fmt(r["rss_mb"], ".0f")
            if r.get("gpu_peak_mb") is not None:
                memory += f" (GPU {r['gpu_peak_mb']:.0f})"
            lines.append(
                f"| {r['config']} | {r['what']} | {r['precision']} | {'on' if r['xla'] else 'off'} "
                f"| {r['images_per_s']:.1f} | {r['images_per_s_min']:.0f}-"
                f"{r['images_per_s_max']:.0f} | {r['step_ms']:.0f} | {r['images_per_cpu_s']:.1f} "
                f"| {r['gflop_per_image']:.2f} "
                f"| {_fmt(r['mfu'] and 100 * r['mfu'], '.0f', '%')} | {memory} |")
        keras_rows = {(r["config"], r["precision"], r["xla"]): r for r in self.rows
                      if r.get("bn") == "keras"}
        pairs = [(r, keras_rows[(r["config"], r["precision"], r["xla"])]) for r in self.rows
                 if r.get("bn") == "fused" and (r["config"], r["precision"], r["xla"]) in keras_rows]
        if pairs:
            lines += ["", "Fused BatchNormalization (the library's) against Keras's own BN layer, "
                          "same rounds:", "",
                      "| config | precision | XLA | images/s fused / Keras | median of paired "
                      "windows | images/CPU-s fused / Keras | peak RSS MiB fused / Keras |",
                      "|---|---|---|---:|---:|---:|---:|"]
            for fused, plain in pairs:
                paired = _median([f / k for f, k in zip(fused["windows"], plain["windows"])])
                lines.append(
                    f"| {fused['config']} | {fused['precision']} | {'on' if fused['xla'] else 'off'} "
                    f"| {fused['images_per_s']:.1f} / {plain['images_per_s']:.1f} "
                    f"({fused['images_per_s'] / plain['images_per_s']:.2f}x) | {paired:.2f}x "
                    f"| {fused['images_per_cpu_s']:.1f} / {plain['images_per_cpu_s']:.1f} "
                    f"({fused['images_per_cpu_s'] / plain['images_per_cpu_s']:.2f}x) "
                    f"| {_fmt(fused['rss_mb'], '.0f')} / {_fmt(plain['rss_mb'], '.0f')} |")
        if self.distillation:
            lines += ["", "Cost of the distillation machinery (DCM pair vs the same pair with heads "
                          "trained with cross-entropy only):", "",
                      "| precision | XLA | DCM step vs CE-only step | loss+metrics graph (DCM) "
                      "| share of DCM step | KD part (DCM - CE-only graph) |",
                      "|---|---|---:|---:|---:|---:|"]
            for d in self.distillation:
                lines.append(
                    f"| {d['precision']} | {'on' if d['xla'] else 'off'} "
                    f"| {_fmt(d['dcm_vs_ce_step_time'] and 100 * d['dcm_vs_ce_step_time'], '+.1f', '%')} "
                    f"| {_fmt(d['dcm_loss_graph_ms'], '.1f', ' ms')} "
                    f"| {_fmt(d['dcm_loss_graph_share'] and 100 * d['dcm_loss_graph_share'], '.2f', '%')} "
                    f"| {_fmt(d['kd_share'] and 100 * d['kd_share'], '.2f', '%')} |")
        if self.data is not None:
            lines += ["", "Input pipeline (`dcm_keras.data`, standalone):", ""]
            if "error" in self.data:
                lines.append(f"- not measured: {self.data['error']}")
            else:
                best_dcm = max((r["images_per_s"] for r in self.rows if r["config"] == "dcm"),
                               default=None)
                for key in ("synthetic", "real"):
                    entry = self.data.get(key)
                    if not entry:
                        continue
                    if "error" in entry:
                        lines.append(f"- {key}: not measured ({entry['error']})")
                        continue
                    ratio = (f", {entry['images_per_s'] / best_dcm:.1f}x the fastest DCM pair "
                             "training above" if best_dcm else "")
                    lines.append(f"- {entry['what']}: {entry['images_per_s']:.0f} images/s{ratio}")
        if self.peer is not None:
            lines += self._peer_markdown(self.peer)
        if self.accuracy:
            first = self.accuracy[0]
            lines += ["", f"Accuracy check: DCM pair ({FLAGS.net}, dense), "
                          f"{first['dataset']}, {first['examples']} training examples x "
                          f"{first['epochs']} epochs (SGD {FLAGS.accuracy_lr} decaying "
                          "linearly to 0), full test split. Same seed (initial weights, data "
                          "order, augmentation) in every precision; float32 again from another "
                          "seed shows how much accuracy moves with the seed alone:", "",
                      "| precision | seed | net1 test acc | net2 test acc | mean | test loss "
                      "| train loss |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            for a in self.accuracy:
                t = a["test"]
                accs = [t.get("net1_logits_acc"), t.get("net2_logits_acc")]
                mean = statistics.mean([v for v in accs if v is not None] or [0.0])
                lines.append(f"| {a['precision']} | {a['seed']} "
                             f"| {_fmt(accs[0] and 100 * accs[0], '.2f', '%')} "
                             f"| {_fmt(accs[1] and 100 * accs[1], '.2f', '%')} "
                             f"| {100 * mean:.2f}% | {t['loss']:.4f} "
                             f"| {a['final_train_loss']:.4f} |")
        if self.notes:
            lines += [""] + [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _peer_markdown(self, p: dict) -> List[str]:
        modes = p["modes"]
        lines = ["", f"PyTorch peer (torch_dcm_ref.py {p['depth']} {p['width']} "
                     f"{FLAGS.batch_size} {p['steps']} MODE), interleaved with our DCM pair: "
                     f"{FLAGS.peer_rounds} rounds of (every peer mode, every one of ours) and a "
                     f"last peer round; windows of {p['steps']} steps. CPU: "
                     f"{self.machine.get('cpu_kind')}; AMX {self._has('amx_bf16')}, "
                     f"AVX512-BF16 {self._has('avx512_bf16')}.", "",
                 "| | mode / precision | XLA | images/s (median) | vs best peer mode of the "
                 "precision (paired median) | ratio of medians | vs peer fp32 NCHW (naive) "
                 "| images/CPU-s | MFU | peak RSS MiB | above import MiB |",
                 "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for mode, m in modes.items():
            best = best_peer_mode(modes, m["precision"]) == mode
            peak = mfu_peak(self.peaks, m["precision"])
            flops = next((r["gflop_per_image"] for r in p["ours"]), None)
            mfu = flops * m["images_per_s"] / peak if flops and peak else None
            lines.append(f"| peer | {mode}{' (best)' if best else ''} | - | "
                         f"{m['images_per_s']:.1f} | {'1.00' if best else '-'} | - | - "
                         f"| {_fmt(m.get('images_per_cpu_s'))} "
                         f"| {_fmt(mfu and 100 * mfu, '.0f', '%')} | {m['rss_mb']:.0f} "
                         f"| {_fmt(m.get('rss_above_import_mb'), '.0f')} |")
        for r in p["ours"]:
            lines.append(
                f"| ours | {r['precision']} | {'on' if r['xla'] else 'off'} "
                f"| {r['images_per_s']:.1f} | {_fmt(r.get('ratio_vs_peer'), '.2f')} "
                f"(vs {r.get('best_peer_mode') or '-'}) "
                f"| {_fmt(r.get('ratio_of_medians'), '.2f')} "
                f"| {_fmt(r.get('ratio_vs_naive_peer'), '.2f')} | {r['images_per_cpu_s']:.1f} "
                f"| {_fmt(r['mfu'] and 100 * r['mfu'], '.0f', '%')} | {_fmt(r['rss_mb'], '.0f')} "
                f"| {_fmt(r.get('rss_above_import_mb'), '.0f')} |")
        lines += [""] + memory_lines(p)
        lines += ["", "images/CPU-s: images per second of CPU time the process used (all "
                      "threads), a measure of work that load from other processes barely "
                      "moves; the peer's excludes its start-up and warm-up (a 0-step run). "
                      "MFU against the higher of the matmul peaks of the precision's dtype and of "
                      "float32 (a CPU that emulates bf16 has a bf16 peak far below float32's)."]
        return lines

    def _has(self, flag: str) -> str:
        return "yes" if flag in self.machine.get("cpu_flags", []) else "no"

    def run(self) -> dict:
        self.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        configs = [c for c in CONFIGS if c in FLAGS.configs]
        unknown = set(FLAGS.configs) - set(CONFIGS)
        if unknown:
            raise app.UsageError(f"Unknown configs {sorted(unknown)}; valid: {', '.join(CONFIGS)}.")
        self.measure_peak()
        precisions = []
        for name in FLAGS.precisions:
            if name not in ("float32", "mixed_bfloat16", "mixed_float16", "best", "auto"):
                raise app.UsageError(f"Unknown precision {name!r}.")
            resolved = resolve_precision(name, self.machine)
            if resolved not in precisions:
                precisions.append(resolved)
        xla_settings = {"both": [False, True], "on": [True], "off": [False]}[FLAGS.xla]
        model_configs = [c for c in configs if c != "data"]
        if model_configs:
            for precision in precisions:
                for xla in xla_settings:
                    self.run_group(model_configs, precision, xla)
        if "data" in configs:
            self.run_data()
        if FLAGS.peer:
            peer_precisions = list(dict.fromkeys(["float32"] + precisions))
            xla_choice = {}
            for precision in peer_precisions:
                if FLAGS.peer_xla != "auto":
                    xla_choice[precision] = FLAGS.peer_xla == "on"
                    continue
                measured = {r["xla"]: r["images_per_s"] for r in self.rows
                            if r["config"] == "dcm" and r["precision"] == precision}
                xla_choice[precision] = max(measured, key=measured.get) if measured else False
            self.run_peer(peer_precisions, xla_choice)
        if FLAGS.accuracy:
            self.run_accuracy(list(dict.fromkeys(["float32"] + precisions)))
        self.measure_peak()  # again at the end: the best of both is the peak
        for r in self.rows + (self.peer["ours"] if self.peer else []):
            peak = mfu_peak(self.peaks, r["precision"])
            r["mfu"] = r["gflop_per_image"] * r["images_per_s"] / peak if peak else None
        markdown = self.markdown()
        return {"date": self.date, "machine": self.machine, "peak_gflops": self.peaks,
                "flags": {name: FLAGS[name].value for name in (
                    "net", "num_classes", "batch_size", "image_size", "precisions", "xla",
                    "windows", "steps_per_window", "warmup", "configs", "interleave", "bn",
                    "inter_op_threads", "intra_op_threads", "peer", "peer_modes", "peer_steps", "peer_rounds",
                    "peer_import",
                    "peer_xla", "accuracy", "accuracy_dataset", "accuracy_examples",
                    "accuracy_epochs", "accuracy_lr")},
                "command": " ".join(sys.argv), "results": self.rows,
                "distillation": self.distillation, "data": self.data, "peer": self.peer,
                "accuracy": self.accuracy,
                "notes": self.notes, "markdown": markdown}


def main(argv) -> None:
    del argv
    if FLAGS.worker:
        worker_main(json.loads(FLAGS.worker))
        return
    refuse_existing_output(FLAGS.output_json)
    report = Benchmark().run()
    print(report["markdown"])
    if FLAGS.output_json:
        write_new_json(FLAGS.output_json, report)


if __name__ == "__main__":
    app.run(main)

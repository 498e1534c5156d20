r"""Would running the two networks' convolutions as one grouped convolution speed up the step?

    python -m benchmarks.grouped_conv                   # WRN-16-2 pair, batch 128, float32
    python -m benchmarks.grouped_conv --net=wrn_28_10 --batch_size=64

A DCM pair of identical networks could be run as one network of twice the width whose every
convolution has `groups=2` (one group per network), so each layer is one oneDNN call instead of
two. This measures that lever before building it: for every distinct convolution shape of the
network (heads included), the forward pass plus both backward passes (input and kernel
gradients) of two separate convolutions on two tensors, against one `groups=2` convolution on
their channel concatenation, timed alternately (`--reps` pairs, medians). The per-shape ratios
are weighted by how often each shape occurs in the network.
"""

from __future__ import annotations

import collections
import datetime
import statistics
import time
from typing import Dict, List, Tuple

from absl import app, flags

from benchmarks.machine import cpu_info, refuse_existing_output, write_new_json

FLAGS = flags.FLAGS

# (input height, input width, in channels, out channels, kernel, stride, padding)
Shape = Tuple[int, int, int, int, int, int, str]


def conv_shapes(net: str, image_size: int) -> Dict[Shape, int]:
    """Every Conv2D of the network `net` (heads included) by shape, with its count."""
    import keras

    from dcm_keras import networks

    def walk(model):
        for layer in model.layers:
            yield from walk(layer) if isinstance(layer, keras.Model) else [layer]

    model = networks.build(net, 100, input_shape=(image_size, image_size, 3))
    counts: Dict[Shape, int] = collections.Counter()
    for layer in walk(model):
        if isinstance(layer, keras.layers.Conv2D) and layer.groups == 1:
            _, height, width, channels = layer.input.shape
            counts[(height, width, channels, layer.filters, layer.kernel_size[0],
                    layer.strides[0], layer.padding.upper())] += 1
    if not counts:
        raise ValueError(f"{net} has no Conv2D layers to time.")
    return dict(counts)


def time_shape(shape: Shape, batch: int, reps: int) -> Tuple[float, float]:
    """Median seconds of (two separate convolutions, one grouped) forward + backward."""
    import tensorflow as tf

    height, width, cin, cout, kernel, stride, padding = shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    if padding == "VALID":
        out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1

    @tf.function
    def separate(x1, x2, w1, w2, g1, g2):
        with tf.GradientTape() as tape:
            tape.watch([x1, x2])
            loss = (tf.reduce_sum(tf.nn.conv2d(x1, w1, stride, padding) * g1)
                    + tf.reduce_sum(tf.nn.conv2d(x2, w2, stride, padding) * g2))
        return tape.gradient(loss, [x1, x2, w1, w2])

    @tf.function
    def grouped(x, w, g):  # TF infers groups=2 from the kernel's input depth, cin of 2 * cin
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.conv2d(x, w, stride, padding) * g)
        return tape.gradient(loss, [x, w])

    normal = tf.random.normal
    pair = [normal([batch, height, width, cin]), normal([batch, height, width, cin]),
            tf.Variable(normal([kernel, kernel, cin, cout])),
            tf.Variable(normal([kernel, kernel, cin, cout])),
            normal([batch, out_h, out_w, cout]), normal([batch, out_h, out_w, cout])]
    fused = [normal([batch, height, width, 2 * cin]),
             tf.Variable(normal([kernel, kernel, cin, 2 * cout])),
             normal([batch, out_h, out_w, 2 * cout])]
    times: Dict[str, List[float]] = {"separate": [], "grouped": []}
    for rep in range(reps + 1):  # the first pair traces and warms the kernels' caches
        for name, fn, args in (("separate", separate, pair), ("grouped", grouped, fused)):
            start = time.perf_counter()
            for tensor in fn(*args):
                tensor.numpy()
            if rep:
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["separate"]), statistics.median(times["grouped"])


def grouped_gradients_supported() -> bool:
    """Whether this TensorFlow build can differentiate a grouped convolution on this CPU.

    Its CPU kernel for that gradient is oneDNN's, which TensorFlow enables only on some CPUs:
    on a 2-core AMD EPYC without AVX-512 (TF 2.21) it raises "Gradients for grouped
    convolutions are not supported on CPU".
    """
    import tensorflow as tf

    x, w = tf.ones([1, 4, 4, 4]), tf.Variable(tf.ones([1, 1, 2, 4]))
    try:
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.nn.conv2d(x, w, 1, "SAME"))
        tape.gradient(loss, [w])[0].numpy()
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        return False
    return True


def measure(net: str, image_size: int, batch: int, reps: int) -> List[dict]:
    """One row per distinct shape: its count and both medians (ms per occurrence)."""
    rows = []
    for shape, count in sorted(conv_shapes(net, image_size).items()):
        separate, grouped = time_shape(shape, batch, reps)
        rows.append({"shape": list(shape), "count": count, "separate_ms": 1e3 * separate,
                     "grouped_ms": 1e3 * grouped})
    return rows


def markdown(machine: dict, date: str, net: str, batch: int, rows: List[dict]) -> str:
    """The per-shape table and the count-weighted total."""
    lines = [f"Grouped convolution lever, {net} pair, batch {batch} per network, float32; "
             f"{machine.get('cpu_kind') or machine.get('processor')}, "
             f"{machine.get('usable_cpus')} CPUs, {date}.", "",
             "| input HxW | in -> out channels | kernel / stride | count | two separate ms | "
             "one grouped ms | grouped / separate |", "|---|---|---|---:|---:|---:|---:|"]
    for row in rows:
        h, w, cin, cout, k, s, _ = row["shape"]
        lines.append(f"| {h}x{w} | {cin} -> {cout} | {k}x{k} / {s} | {row['count']} | "
                     f"{row['separate_ms']:.1f} | {row['grouped_ms']:.1f} | "
                     f"{row['grouped_ms'] / row['separate_ms']:.2f} |")
    separate = sum(r["count"] * r["separate_ms"] for r in rows)
    grouped = sum(r["count"] * r["grouped_ms"] for r in rows)
    lines.append(f"| all, weighted by count | | | {sum(r['count'] for r in rows)} | "
                 f"{separate:.0f} | {grouped:.0f} | **{grouped / separate:.2f}** |")
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    refuse_existing_output(FLAGS.output)
    if not grouped_gradients_supported():
        raise SystemExit("error: this TensorFlow build cannot differentiate a grouped convolution "
                         "on this CPU (its oneDNN kernel is not enabled here), so the lever "
                         "cannot be measured on this machine.")
    machine = cpu_info()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = measure(FLAGS.net, FLAGS.image_size, FLAGS.batch_size, FLAGS.reps)
    print(markdown(machine, date, FLAGS.net, FLAGS.batch_size, rows), flush=True)
    if FLAGS.output:
        write_new_json(FLAGS.output, {"machine": machine, "date": date, "net": FLAGS.net,
                                      "batch_size": FLAGS.batch_size, "reps": FLAGS.reps,
                                      "rows": rows})


def _define_flags() -> None:
    """Only when run as a script: the test process imports several benchmark modules,
    and absl refuses a flag name defined twice."""
    flags.DEFINE_string("net", "wrn_16_2",
                        "Network name (see dcm_keras.networks.list_networks()).")
    flags.DEFINE_integer("batch_size", 128, "Batch size of each network.", lower_bound=1)
    flags.DEFINE_integer("image_size", 32, "Square input size (3 channels).", lower_bound=8)
    flags.DEFINE_integer("reps", 10, "Timed separate/grouped pairs per shape.", lower_bound=1)
    flags.DEFINE_string("output", None, "Also write the rows as JSON here.")


if __name__ == "__main__":
    _define_flags()
    app.run(main)

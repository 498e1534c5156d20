r"""Where one DCM training step spends its time: an op-level breakdown from TensorFlow's profiler.

    python -m benchmarks.profile_step                              # float32 and the best precision
    python -m benchmarks.profile_step --precisions=mixed_bfloat16 --inter_op_threads=1

Shares the flags of `benchmarks.throughput` (`--net`, `--batch_size`, `--image_size`,
`--precisions`, `--warmup`, `--inter_op_threads`, `--intra_op_threads`, `--output_json`).

Builds the DCM pair (`--net`, both networks with their heads, dense connections, SGD with
momentum) exactly as `benchmarks.throughput` does, warms it up in `fit`, then records `--profile_steps`
steps with `tf.profiler.experimental` and reads the trace (`*.xplane.pb`) back. Every op the
executor ran is put in one bucket:

    conv forward / conv backward   the convolutions (oneDNN kernels), weights and inputs grads
    batch norm                     FusedBatchNorm* and every op inside a BN layer's name scope
    dense                          MatMul and BiasAdd of the classifiers
    elementwise (networks)         the rest of the networks: ReLU, residual adds, pooling, grads
    layout and casts               Transpose, Cast, oneDNN <-> TF layout conversions
    optimizer update               ops under the optimizer's name scope
    loss, metrics, weight decay    what is left in the step: CE and KL, accuracies, L2 terms and
                                   the sum of gradients (AddN)
    input                          tf.data's IteratorGetNext

Op times are summed over the executor's threads, so ops that ran side by side (TensorFlow's
inter-op parallelism) both count; `overlap` is that sum over the time at least one op ran, and
`idle` is the step's wall time during which no op ran (Python, function dispatch, waits).
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time
from typing import Dict, Iterable, List, Tuple

from absl import app, flags

from benchmarks import throughput  # noqa: F401  (its flags: --net, --batch_size, --precisions, ...)

FLAGS = flags.FLAGS
flags.DEFINE_integer("profile_steps", 4, "Profiled steps.", lower_bound=1)
flags.DEFINE_bool("profile_xla", False, "jit_compile the step (the trace then shows XLA clusters).")

BUCKETS = ("conv forward", "conv backward", "batch norm", "dense", "elementwise (networks)",
           "layout and casts", "optimizer update", "loss, metrics, weight decay", "input")
_BN_SCOPE = re.compile(r"(^|/)[^/]*(_bn\d*|batch_normalization)(_\d+)?/")
_NET_SCOPE = re.compile(r"(^|/)dcm(_\d+)?/[^/]+/")


def bucket(name: str, op_type: str) -> str:
    """The bucket of one executed op, from its type and its name scope."""
    if op_type.startswith("Iterator"):
        return "input"
    if "Backprop" in op_type and "Conv" in op_type:
        return "conv backward"
    if "Conv2D" in op_type or "Conv3D" in op_type or "DepthwiseConv" in op_type:
        return "conv forward"
    if "BatchNorm" in op_type or _BN_SCOPE.search(name):
        return "batch norm"
    if op_type in ("Transpose", "Cast") or "ToTf" in op_type or "InputConversion" in op_type:
        return "layout and casts"
    if "MatMul" in op_type or op_type.startswith("BiasAdd"):
        return "dense"
    if re.search(r"(^|/)(sgd|SGD|adam|Adam|adamw|AdamW|optimizer)(_\d+)?/", name) or \
            op_type.startswith("ResourceApply"):
        return "optimizer update"
    if _NET_SCOPE.search(name):
        return "elementwise (networks)"
    return "loss, metrics, weight decay"


def _union_length(intervals: List[Tuple[int, int]]) -> int:
    total, end = 0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def read_trace(logdir: str) -> Iterable[Tuple[str, str, int, int]]:
    """(op name, op type, start ps, duration ps) of every op the executor ran, from a trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))
    if not paths:
        raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        metadata = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_Compute") and not line.name.startswith("tf_data"):
                continue
            base = line.timestamp_ns * 1000
            for event in line.events:
                label = metadata[event.metadata_id].name
                if ":" not in label or "::" in label:
                    continue  # executor bookkeeping, not an op
                name, op_type = label.rsplit(":", 1)
                yield name, op_type, base + event.offset_ps, event.duration_ps


def breakdown(ops: Iterable[Tuple[str, str, int, int]], steps: int, wall_s: float) -> dict:
    """Per-bucket milliseconds per step, the ops' overlap and the idle share of the wall time."""
    per_bucket: Dict[str, float] = collections.defaultdict(float)
    per_type: Dict[str, float] = collections.defaultdict(float)
    intervals = []
    for name, op_type, start, duration in ops:
        per_bucket[bucket(name, op_type)] += duration
        per_type[op_type] += duration
        intervals.append((start, start + duration))
    op_total = sum(per_bucket.values())
    busy = _union_length(intervals)
    wall_ps = wall_s * 1e12
    ms = 1e-9 / steps
    return {
        "steps": steps, "step_ms": wall_s * 1e3 / steps,
        "buckets_ms": {b: per_bucket.get(b, 0.0) * ms for b in BUCKETS},
        "shares": {b: per_bucket.get(b, 0.0) / op_total if op_total else 0.0 for b in BUCKETS},
        "top_op_types_ms": dict(sorted(((t, v * ms) for t, v in per_type.items()),
                                       key=lambda kv: -kv[1])[:12]),
        "overlap": op_total / busy if busy else None,
        "idle_share": max(0.0, 1 - busy / wall_ps) if wall_ps else None,
    }


def profile(precision: str) -> dict:
    """Profiles `FLAGS.profile_steps` steps of the DCM pair in `precision`."""
    import keras
    import numpy as np
    import tensorflow as tf

    from dcm_keras import DCM, networks

    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    shape = (FLAGS.image_size, FLAGS.image_size, 3)
    nets = [networks.build(FLAGS.net, FLAGS.num_classes, input_shape=shape, aux_heads=True)
            for _ in range(2)]
    model = DCM(nets, connections="dense")
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  jit_compile=FLAGS.profile_xla)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((FLAGS.batch_size, *shape)).astype("float32")
    y = rng.integers(0, FLAGS.num_classes, FLAGS.batch_size)
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)
    model.fit(dataset, epochs=1, steps_per_epoch=FLAGS.warmup, verbose=0)
    logdir = tempfile.mkdtemp(prefix="dcm_profile_")
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=FLAGS.profile_steps, verbose=0)
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    result = breakdown(read_trace(logdir), FLAGS.profile_steps, wall)
    result.update(precision=precision, trace_dir=logdir,
                  images_per_s=FLAGS.batch_size * FLAGS.profile_steps / wall)
    return result


def markdown(results: List[dict], machine: str) -> str:
    """The breakdowns side by side, one column per precision."""
    lines = [f"Profile of one DCM step ({FLAGS.net} pair with heads, batch {FLAGS.batch_size}, "
             f"{FLAGS.image_size}x{FLAGS.image_size}, XLA {'on' if FLAGS.profile_xla else 'off'}, "
             f"inter-op threads {FLAGS.inter_op_threads or 'default'}); {machine}.", "",
             "| bucket | " + " | ".join(f"{r['precision']} ms/step (share)" for r in results)
             + " |", "|---|" + "---:|" * len(results)]
    for b in BUCKETS:
        lines.append(f"| {b} | " + " | ".join(
            f"{r['buckets_ms'][b]:.0f} ({100 * r['shares'][b]:.1f}%)" for r in results) + " |")
    lines.append("| step wall time | " + " | ".join(f"{r['step_ms']:.0f}" for r in results) + " |")
    lines.append("| op time / busy time (overlap) | " + " | ".join(
        f"{r['overlap']:.2f}" for r in results) + " |")
    lines.append("| idle share of the wall time | " + " | ".join(
        f"{100 * r['idle_share']:.1f}%" for r in results) + " |")
    lines.append("| images/s while profiled | " + " | ".join(
        f"{r['images_per_s']:.1f}" for r in results) + " |")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    import tensorflow as tf

    from benchmarks.machine import (cpu_info, refuse_existing_output, resolve_precision,
                                    write_new_json)

    refuse_existing_output(FLAGS.output_json)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    if FLAGS.intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    info = cpu_info()
    precisions = list(dict.fromkeys(resolve_precision(p, info) for p in FLAGS.precisions))
    results = [profile(p) for p in precisions]
    machine = f"{info.get('cpu_kind')}, {info.get('usable_cpus')} CPUs"
    text = markdown(results, machine)
    print(text)
    if FLAGS.output_json:
        write_new_json(FLAGS.output_json, {"machine": info, "results": results, "markdown": text})


if __name__ == "__main__":
    app.run(main)

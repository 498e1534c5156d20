r"""Where the DCM step's resident memory comes from: RSS after each phase of one process.

    python -m benchmarks.memory                       # WRN-16-2 pair, batch 128, float32
    python -m benchmarks.memory --steps=40 --batch_size=8

Reads `/proc/self/status` (Linux) after importing TensorFlow, importing Keras and dcm_keras,
building the pair, and after training steps through Keras's `fit` (synthetic CIFAR-shaped
batches, as `benchmarks.throughput`); VmHWM, the kernel's high-water mark, catches a peak inside a
step. A flat RSS over later steps means the step's memory is live, not creeping.
"""

from __future__ import annotations

from typing import Dict, List

from absl import app, flags

from benchmarks.machine import refuse_existing_output, write_new_json

FLAGS = flags.FLAGS


def status_mib() -> Dict[str, float]:
    """VmRSS, VmHWM (peak) and RssAnon of this process, in MiB."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                values[key] = int(rest.split()[0]) / 1024
    return values


def measure(net: str, batch: int, steps: int, report_every: int) -> List[dict]:
    """One row per phase: RSS, peak so far and anonymous memory at its end."""
    rows: List[dict] = []

    def mark(phase: str) -> None:
        rows.append({"phase": phase, **status_mib()})

    mark("python")
    import tensorflow as tf

    mark("import tensorflow")
    import keras
    import numpy as np

    from dcm_keras import DCM, networks

    mark("import keras, dcm_keras")
    keras.utils.set_random_seed(0)
    model = DCM([networks.build(net, 100, input_shape=(32, 32, 3)) for _ in range(2)],
                connections="dense")
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    mark("build and compile the pair")
    rng = np.random.default_rng(0)
    x = rng.random((batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 100, batch).astype("int32")
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)

    class Marks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            keras.tree.map_structure(np.asarray, logs or {})  # the step has really finished
            if batch_index < 3 or batch_index % report_every == 0 or batch_index == steps - 1:
                mark(f"after step {batch_index}")

    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[Marks()])
    return rows


def markdown(rows: List[dict]) -> str:
    lines = ["| after | RSS MiB | anonymous MiB | peak so far MiB |", "|---|---:|---:|---:|"]
    lines += [f"| {r['phase']} | {r['VmRSS']:.0f} | {r['RssAnon']:.0f} | {r['VmHWM']:.0f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    refuse_existing_output(FLAGS.output)
    rows = measure(FLAGS.net, FLAGS.batch_size, FLAGS.steps, FLAGS.report_every)
    print(f"{FLAGS.net} DCM pair, batch {FLAGS.batch_size}, float32:\n\n{markdown(rows)}",
          flush=True)
    if FLAGS.output:
        write_new_json(FLAGS.output, {"net": FLAGS.net, "batch_size": FLAGS.batch_size,
                                      "rows": rows})


def _define_flags() -> None:
    """Only when run as a script: the test process imports several benchmark modules,
    and absl refuses a flag name defined twice."""
    flags.DEFINE_string("net", "wrn_16_2",
                        "Network name (see dcm_keras.networks.list_networks()).")
    flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
    flags.DEFINE_integer("steps", 24, "Training steps.", lower_bound=1)
    flags.DEFINE_integer("report_every", 5, "Report RSS after every N-th step (and steps 0-2).",
                         lower_bound=1)
    flags.DEFINE_string("output", None,
                        "Also write the phases as JSON here (never overwritten).")


if __name__ == "__main__":
    _define_flags()
    app.run(main)

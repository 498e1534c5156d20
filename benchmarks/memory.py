r"""Where the DCM step's resident memory comes from: RSS after each phase of one process.

    python -m benchmarks.memory                       # WRN-16-2 pair, batch 128, float32
    python -m benchmarks.memory --steps=40 --batch_size=8

Reads `/proc/self/status` (Linux) after importing TensorFlow, importing Keras and dcm_keras,
building the pair, and after training steps through Keras's `fit` (synthetic CIFAR-shaped
batches, as `benchmarks.throughput`); VmHWM, the kernel's high-water mark, catches a peak inside a
step. A flat RSS over later steps means the step's memory is live, not creeping.

Its helpers `import_peak_rss_mb`, `above_import` and `compare_above_import` give
`benchmarks.throughput --peer` (and `benchmarks.regression`) the peak RSS above the framework's
import on both sides: ours above TensorFlow+Keras's, the peer's above `import torch`'s.
"""

from __future__ import annotations

import os
import subprocess
from typing import Dict, List, Optional

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


def peak_rss_self_mb() -> float:
    """This process's peak RSS so far (`ru_maxrss`), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def import_peak_rss_mb(python: str, statement: str = "import torch", cwd: Optional[str] = None,
                       env: Optional[dict] = None) -> float:
    """Peak RSS (MiB) of a process that runs `statement` and nothing else: what a framework's
    import costs before any model exists (the peer's baseline: `import torch`).

    The process reports its own VmHWM (`/proc/self/status`, Linux): the `ru_maxrss` that
    `os.wait4` gives also counts the pages of the parent it was forked from before its exec.
    Where there is no /proc, `ru_maxrss` is used.
    """
    code = (f"{statement}\nimport re as _re\ntry:\n    print('@@VmHWM', _re.search("
            "r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))\n"
            "except (OSError, AttributeError):\n    pass\n")
    proc = subprocess.Popen([python, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=dict(os.environ) if env is None else env)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{python} -c {statement!r} failed ({proc.returncode}): "
                           f"{err.strip()[-500:]}")
    hwm = [line.split()[1] for line in out.splitlines() if line.startswith("@@VmHWM ")]
    return int(hwm[-1]) / 1024 if hwm else usage.ru_maxrss / 1024


def above_import(peak_mb: Optional[float], import_mb: Optional[float]) -> Optional[float]:
    """Peak RSS above the framework's import (MiB): the memory the model and its step cost."""
    if peak_mb is None or import_mb is None:
        return None
    return peak_mb - import_mb


def compare_above_import(peer: dict) -> List[dict]:
    """One entry per precision of ours in a `benchmarks.throughput --peer` result: our peak RSS
    above TensorFlow+Keras's import against the peer's best mode of that precision above
    torch's import, and whether ours exceeds the peer's (None where either is unknown)."""
    entries = []
    for row in peer.get("ours", []):
        mode = row.get("best_peer_mode")
        theirs = (peer.get("modes", {}).get(mode) or {}).get("rss_above_import_mb") if mode else None
        ours = row.get("rss_above_import_mb")
        entries.append({"precision": row["precision"], "ours_mb": ours, "peer_mode": mode,
                        "peer_mb": theirs,
                        "ours_exceeds_peer": None if ours is None or theirs is None
                        else ours > theirs})
    return entries


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

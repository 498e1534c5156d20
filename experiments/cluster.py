"""Where a run of `experiments.train` computes: its place among workers and its tf.distribute
strategy.

Multi-worker training (`--distribute=multi_worker`): every worker runs the same command with its
own `$TF_CONFIG`, e.g. `{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type":
"worker", "index": 0}}`. `--model_dir` must be a folder every worker can read (a shared file
system): the chief (task `chief`, else `worker` 0) alone writes to it; the other workers write
their logs and backups to a temporary folder that is removed when they finish (a SIGKILL leaves it
in $TMPDIR), and restore from the chief's backup when the run resumes (`check_workers_agree`
refuses to train when they found different backups). If a worker dies, restart every worker with
the same command. BatchNormalization statistics are synchronised across replicas whenever there
are several, so N replicas with global `--batch_size` B train like one device with batch B.

The backend is imported inside the functions that need it: `parse_tf_config` and
`check_backend` run before it starts.
"""

from __future__ import annotations

import contextlib
import json
from typing import NamedTuple, Optional

from experiments.common import UserError
from experiments.config import TrainConfig, parse_json


class Task(NamedTuple):
    """This process's place in the run: one chief alone, or a worker of a multi-worker run."""

    type: str
    index: int
    chief: bool
    workers: int


ALONE = Task("chief", 0, True, 1)


def parse_tf_config(text: Optional[str]) -> Task:
    """This process's `Task` (type, index, chief or not, number of workers) from $TF_CONFIG.

    Raises UserError, naming the problem, for a value that MultiWorkerMirroredStrategy could
    not use: missing, not JSON, no cluster, or no entry in the cluster for this worker.
    """
    if not text or not text.strip():
        raise UserError("--distribute=multi_worker needs $TF_CONFIG, e.g. {\"cluster\": "
                        "{\"worker\": [\"host1:2222\", \"host2:2222\"]}, \"task\": "
                        "{\"type\": \"worker\", \"index\": 0}}.")
    config = parse_json(text, "$TF_CONFIG")
    if not isinstance(config, dict):
        raise UserError("$TF_CONFIG must be a JSON object with \"cluster\" and \"task\".")
    cluster = config.get("cluster")
    if (not isinstance(cluster, dict) or not cluster
            or not all(isinstance(v, list) and v and all(isinstance(a, str) and a for a in v)
                       for v in cluster.values())):
        raise UserError("$TF_CONFIG has no usable \"cluster\": it must map task types (chief, "
                        "worker) to lists of \"host:port\" addresses.")
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise UserError(f"$TF_CONFIG's cluster has {', '.join(unsupported)} tasks; "
                        "MultiWorkerMirroredStrategy runs only chief and worker tasks.")
    task = config.get("task")
    kind = task.get("type") if isinstance(task, dict) else None
    index = task.get("index", 0) if isinstance(task, dict) else None
    if not isinstance(kind, str) or not isinstance(index, int) or isinstance(index, bool):
        raise UserError("$TF_CONFIG lacks this worker: it needs \"task\": {\"type\": ..., "
                        f"\"index\": ...}}, got {json.dumps(task)}.")
    if kind not in cluster or not 0 <= index < len(cluster[kind]):
        listed = ", ".join(f"{k}: {len(v)} task{'s' * (len(v) != 1)}"
                           for k, v in cluster.items())
        raise UserError(f"$TF_CONFIG lacks this worker: task {kind} {index} is not in its cluster "
                        f"({listed}; indices start at 0).")
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return Task(kind, index, chief, sum(len(v) for v in cluster.values()))


def gpu_count() -> int:
    """GPUs the Keras backend sees."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    return 0  # other backends: train.py is tested on TensorFlow and JAX only


class OneDevice:
    """The part of a tf.distribute strategy train.py uses, for backends without one."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


def check_backend(config: TrainConfig, backend: str) -> None:
    """Refuses flags that only the TensorFlow backend implements, naming the alternative."""
    if backend == "tensorflow":
        return
    if config.distribute in ("mirrored", "multi_worker"):
        raise UserError(f"--distribute={config.distribute} uses tf.distribute and needs "
                        f"KERAS_BACKEND=tensorflow (this is {backend}); on {backend} use "
                        "--distribute=none or auto, which train on one device.")
    if config.deterministic:
        raise UserError(f"--deterministic sets TensorFlow's op determinism and needs "
                        f"KERAS_BACKEND=tensorflow (this is {backend}).")


def make_strategy(kind: str):
    """The tf.distribute strategy for `--distribute` (`OneDevice` on other backends)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return OneDevice()
    import tensorflow as tf

    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "auto":
        kind = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def check_workers_agree(strategy, epoch: int, restore_dir: str) -> None:
    """Refuses to train when the workers restored different epochs (one collective op).

    That happens when --model_dir is not on a file system all workers share: the others would
    not see the chief's backup, and training would silently mix different weights.
    """
    import tensorflow as tf

    values = strategy.run(lambda: tf.constant([float(epoch), float(epoch) ** 2], tf.float64))
    mean, mean_square = strategy.reduce("MEAN", values, axis=None).numpy().tolist()
    if abs(mean_square - mean ** 2) > 1e-9:
        raise UserError(f"the workers found different backups to resume from (this one: {epoch} "
                        f"epochs in {restore_dir}, the mean over workers: {mean:g}); "
                        "--model_dir must be a folder that every worker sees (a shared file "
                        "system).")

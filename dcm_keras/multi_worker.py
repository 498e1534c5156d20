"""Two work-arounds that let Keras 3's TensorFlow trainer run under MultiWorkerMirroredStrategy.

Keras 3.15's `fit` fails with more than one worker (keras-team/keras#20585; the code is in
keras/src/backend/tensorflow/trainer.py):

1. `_maybe_symbolic_build` calls `strategy.reduce("MEAN", batch)` on the whole first `(x, y)`
   batch, only to learn its shapes. MultiWorkerMirroredStrategy reduces one distributed value at a
   time, not a tuple of them: "Attempt to convert a value (PerReplica...) with an unsupported type".
   The first replica's local batch has the shapes needed, without any communication.
2. `reduce_per_replica` averages each value `train_step` returns with
   `strategy.reduce("MEAN", value, axis=0)` when there are several workers, which needs a batch
   axis; the logs are scalars ("Invalid reduction dimension 0 for input with 0 dimensions"). Giving
   them a length-1 axis makes that reduce the mean over all replicas, which is what one worker
   computes over its local replicas.

`MultiWorkerFixes` is a mixin placed before `keras.Model` in a model's bases. Both fixes act only
under a multi-worker MultiWorkerMirroredStrategy (decided when the step is traced, so there is no
per-step cost) and do nothing elsewhere or on other backends. The private method overridden is
declared, and checked against the installed Keras, in `dcm_keras._keras_compat`.
"""

from __future__ import annotations

import keras
from keras import ops

from dcm_keras import _keras_compat as compat


def in_multi_worker_mode(strategy=None) -> bool:
    """Whether `strategy` (default: the current one) is a MultiWorkerMirroredStrategy with
    several workers, on the TensorFlow backend."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return bool(strategy.extended._in_multi_worker_mode())


class MultiWorkerFixes:
    """Mixin: see the module docstring."""

    @compat.override(keras.Model)
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = getattr(self, "_distribute_strategy", None)
        if iterator is not None and data_batch is None and in_multi_worker_mode(strategy):
            import tensorflow as tf

            def local(value):
                if isinstance(value, tf.distribute.DistributedValues):
                    return strategy.experimental_local_results(value)[0]
                return value

            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(local, next(batches))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if isinstance(logs, dict) and in_multi_worker_mode():
            logs = {k: ops.reshape(v, (1,)) if len(ops.shape(v)) == 0 else v
                    for k, v in logs.items()}
        return logs

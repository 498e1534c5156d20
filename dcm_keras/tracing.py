"""Keeping the DCM train step to one trace under TensorFlow.

Without a distribution strategy set, Keras's TensorFlow trainer leaves the optimizer's slot
variables to be made inside the first trace of the train step, and a `tf.function` that creates
variables is traced twice: for the DCM step that is seconds per run (a WRN-10-1 pair's first
`fit` took 9 s with the second trace and 4 s without, on a 2-core CPU loaded with other runs).
Keras builds the optimizer first itself under a strategy, and always on JAX; `build_optimizer`
does it without one too, at the start of `fit` and `train_on_batch`.

Two consequences, both as under a strategy: the slots exist before callbacks' `on_train_begin`
(so Keras's `BackupAndRestore` restores them), and they are made for the variables trainable
when `fit` starts: a network unfrozen by a callback during that `fit` has no slots (recompile
after changing what is trainable, as Keras asks). Metrics passed to `compile(metrics=...)`
still make their variables in the first trace.
"""

from __future__ import annotations

import keras


def build_optimizer(model: keras.Model) -> None:
    """Builds `model.optimizer` on the model's trainable variables, if it is not built yet."""
    optimizer = getattr(model, "optimizer", None)
    if (keras.backend.backend() != "tensorflow" or optimizer is None or optimizer.built
            or not model.trainable_variables):
        return
    with model.distribute_strategy.scope():
        optimizer.build(model.trainable_variables)

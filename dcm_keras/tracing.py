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

The trace itself (and XLA's compilation, under JAX or `jit_compile`) happens at the first batch,
before any progress line: seconds for the built-in CIFAR networks, minutes for a large backbone
on a CPU. `trace_notice` gives the first `fit` after `compile` a callback that says so.
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


NOTICE = ("DCM.fit: tracing and compiling the train step at the first batch (and the test step at "
          "the first validation); with a large backbone this can take minutes before the first "
          "progress line.")


class FirstTraceNotice(keras.callbacks.Callback):
    """Prints `NOTICE` before the first epoch, unless `fit` runs with `verbose=0`."""

    def on_train_begin(self, logs=None):
        if self.params.get("verbose"):
            print(NOTICE, flush=True)


def trace_notice(model: keras.Model) -> list:
    """`[FirstTraceNotice()]` when this `fit` traces the train step (none was made since
    `compile`), else `[]`: later fits start their first epoch at once, and say nothing."""
    if getattr(model, "train_function", None) is not None or model.run_eagerly:
        return []
    return [FirstTraceNotice()]

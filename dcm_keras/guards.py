"""Guards of `DCM` against two silent failures: networks that share weights, and a diverged `fit`.

**Shared networks.** `DCM([net, net])`, or two networks built on the same layers, would train one
set of weights as if it were several: the "mutual" distillation would pull a network towards
itself. `check_distinct` refuses it when the DCM is built.

**Non-finite loss.** Keras's `fit` carries on through a NaN or infinite loss (NaN in the data, a
learning rate too high): it returns `loss: nan` and leaves weights that every later `fit`
starts from. Worse, the loss need not show it: with oneDNN on (TensorFlow turns it on by itself
on CPUs with AVX512-VNNI/BF16 or AMX, the scripts wherever `TF_ENABLE_ONEDNN_OPTS` is unset on
x86), the fused convolution or matmul + bias + ReLU kernels that TensorFlow forms inside the step
output 0 for a NaN input, so a batch with a NaN pixel can have a finite loss while its gradient
writes NaN into the weights; a NaN in the last batch of a `fit` then went unnoticed. So the loss
`DCM` computes (in training and evaluation) is made NaN by `nan_unless_finite` whenever the
batch's floating-point inputs, or the model's weights at the start of the step, hold a NaN or an
infinity, whatever the kernels do; and `DCM.fit` adds `StopOnNonFiniteLoss`, which raises
`NonFiniteLossError` at the first batch whose loss is not finite, naming the epoch and batch and
how many weight variables are now non-finite, like `TerminateOnNaN(raise_error=True)`:

- NaN or infinite data stop `fit` at the batch that holds them. Weights made non-finite while
  the loss stayed finite (an overflow in the gradient) make the next batch's loss NaN, and after
  the last batch of an epoch they are checked at once, before any epoch-end callback runs (when
  `fit` knows the steps per epoch: arrays, datasets of known size; otherwise the next epoch's
  first batch stops it);
- raising, rather than setting `stop_training`, ends `fit` before the epoch ends, so no epoch-end
  callback sees the diverged weights: `ModelCheckpoint` and `BackupAndRestore` keep the last good
  ones, and `validation_data` is not evaluated on NaN weights;
- the weights are *not* restored (restoring the state from before the bad batch would take a copy
  of every weight and optimizer variable at every step): restore them from a checkpoint
  (`BackupAndRestore` does so on the next `fit`; `ModelCheckpoint`: `load_weights`) or rebuild;
- a `fit` that starts from weights that are already non-finite is refused before its first step;
- pass `keras.callbacks.TerminateOnNaN()` (Keras's graceful stop) or this callback yourself and
  `DCM.fit` adds none (the loss is NaN on non-finite inputs or weights all the same).

Checking costs, per step, one sum over the batch's inputs and one over each weight variable,
inside the step (a read of the weights, which the optimizer reads anyway); one read of the loss
per batch (per `steps_per_execution` steps), as Keras's progress bar does anyway; and one pass
over the weights at the start of `fit` and after the last batch of each epoch.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import keras
import numpy as np

from dcm_keras.errors import UserError


def check_distinct(networks: Sequence[keras.Model]) -> None:
    """Refuses networks that are the same model, or that share a weight variable."""
    for k, net in enumerate(networks):
        for j in range(k):
            if networks[j] is net:
                raise UserError(
                    f"DCM got the same model object ({net.name!r}) as net{j + 1} and "
                    f"net{k + 1}: they would share every weight. Build each network separately "
                    "(e.g. call networks.build twice).")
    owner = {}
    for k, net in enumerate(networks):
        for variable in net.weights:
            j = owner.setdefault(id(variable), k)
            if j != k:
                raise UserError(
                    f"net{j + 1} ({networks[j].name!r}) and net{k + 1} ({net.name!r}) share the "
                    f"weight {variable.path!r}: DCM's networks must not share layers. Build each "
                    "network separately.")


class NonFiniteLossError(UserError, RuntimeError):
    """`DCM.fit` stopped on a NaN or infinite loss (a `RuntimeError`, as Keras's
    `TerminateOnNaN(raise_error=True)` raises, and a `UserError`: data or settings to fix).

    `epoch` and `batch` are 0-based as Keras counts them (`batch` is None when the weights were
    already non-finite before training); `history` holds the logs of the epochs that finished.
    """

    def __init__(self, message: str, epoch: int, batch: Optional[int], loss: float,
                 history: Optional[dict] = None):
        super().__init__(message)
        self.epoch, self.batch, self.loss, self.history = epoch, batch, loss, history or {}


def non_finite_weights(model: keras.Model) -> List[str]:
    """Paths of the model's floating-point weight variables that hold a NaN or an infinity."""
    sync = getattr(model, "jax_state_sync", None)
    if callable(sync):  # JAX: variables hold the state of the last step only once synced
        sync()
    floats = [v for v in model.weights if "float" in keras.backend.standardize_dtype(v.dtype)]
    if not floats:
        return []
    finite = keras.ops.stack([keras.ops.all(keras.ops.isfinite(v.value)) for v in floats])
    finite = keras.ops.convert_to_numpy(finite)
    return [v.path for v, ok in zip(floats, finite) if not ok]


def _floats(tensors) -> list:
    return [t for t in tensors if t is not None and hasattr(t, "dtype")
            and "float" in keras.backend.standardize_dtype(t.dtype)]


def nan_unless_finite(inputs, weights: Sequence[keras.Variable]):
    """0.0 when the floating-point `inputs` (any nesting) and `weights` are all finite, else NaN.

    `DCM.compute_loss` adds it to its loss inside the step, so that a NaN in the data or the
    weights shows in the loss even where a kernel (oneDNN's fused ReLU) swallows it. It has no
    gradient. One float32 sum per tensor: a NaN or an infinity anywhere makes the total
    non-finite (only finite values near float32's 3.4e38 could overflow it, and such weights or
    inputs have diverged anyway), with half the ops of an `all(isfinite)` per tensor.
    """
    tensors = _floats(keras.tree.flatten(inputs)) + [v.value for v in _floats(weights)]
    if not tensors:
        return keras.ops.zeros((), "float32")
    total = keras.ops.sum(keras.ops.stack(
        [keras.ops.sum(keras.ops.cast(t, "float32")) for t in tensors]))
    return keras.ops.where(keras.ops.isfinite(keras.ops.stop_gradient(total)),
                           keras.ops.zeros((), "float32"), keras.ops.full((), math.nan, "float32"))


def _named(paths: List[str], total: int) -> str:
    shown = ", ".join(paths[:3]) + (", ..." if len(paths) > 3 else "")
    return f"{len(paths)} of its {total} weight variables ({shown})"


class StopOnNonFiniteLoss(keras.callbacks.TerminateOnNaN):
    """Raises `NonFiniteLossError` at the first batch whose loss is NaN or infinite, and before
    training when the weights are already non-finite (see the module docstring)."""

    def __init__(self):
        super().__init__()  # its `raise_error` (Keras >= 3.13) is not needed: on_batch_end raises
        self._epoch = 0

    def on_train_begin(self, logs=None):
        bad = non_finite_weights(self.model)
        if bad:
            raise NonFiniteLossError(
                f"DCM.fit refused to start: {_named(bad, len(self.model.weights))} already hold "
                "NaN or infinite values (an earlier fit diverged?). Restore the weights from a "
                "checkpoint, or rebuild the model, before training.", 0, None, math.nan)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        value = None if loss is None else float(np.asarray(keras.ops.convert_to_numpy(loss)))
        if value is not None and not math.isfinite(value):
            bad = non_finite_weights(self.model)
            state = (f"{_named(bad, len(self.model.weights))} are now non-finite" if bad
                     else "the weights are still finite")
            self._stop(f"the training loss became {value} at epoch {self._epoch + 1}, batch "
                       f"{batch + 1} (counting from 1), and {state}", batch, value)
        steps = (self.params or {}).get("steps")
        if steps and batch + 1 >= steps:
            # The last step's gradient may have made the weights non-finite with a finite loss,
            # and no next step will show it: check them before the epoch-end callbacks do.
            bad = non_finite_weights(self.model)
            if bad:
                self._stop(f"the last step of epoch {self._epoch + 1} (batch {batch + 1}, counting "
                           f"from 1) left {_named(bad, len(self.model.weights))} non-finite, with "
                           f"a finite loss", batch, math.nan if value is None else value)

    def _stop(self, cause: str, batch: int, value: float) -> None:
        history = getattr(getattr(self.model, "history", None), "history", None)
        raise NonFiniteLossError(
            f"DCM.fit stopped: {cause}. Training went no further, so no epoch-end callback saw "
            "this state. Check the data for NaN or infinite values (the loss is NaN whenever a "
            "batch's inputs or the weights are) and lower the learning rate; restore the "
            "weights from a checkpoint (BackupAndRestore does so on the next fit) before "
            "training again.", self._epoch, batch, value, history)


def with_guard(callbacks: List[keras.callbacks.Callback]) -> List[keras.callbacks.Callback]:
    """`callbacks` and, last, a `StopOnNonFiniteLoss` unless a `TerminateOnNaN` is among them."""
    if any(isinstance(c, keras.callbacks.TerminateOnNaN) for c in callbacks):
        return list(callbacks)
    return list(callbacks) + [StopOnNonFiniteLoss()]

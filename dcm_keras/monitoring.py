"""What Keras's monitoring callbacks see of a `DCM`: its metrics and its validation loss.

Training minimises the whole DCM objective (every head's cross-entropy, every distillation edge,
weight decay), and the training `loss` is that objective. What is shipped, though, is each
network's final head alone, so the loss `evaluate` returns and `fit` logs as `val_loss` is the
*deployable networks' loss*: the mean over networks of the final head's cross-entropy, without
auxiliary heads, distillation terms or weight decay (as Keras's own distillation example reports
the student's loss in its test step). Default-argument `ModelCheckpoint(save_best_only=True)`,
`EarlyStopping()` and `ReduceLROnPlateau()` therefore select by the networks that are shipped.
The parts of the objective stay in the logs, in training and validation alike, as `ce_loss`,
`kd_loss` and `wd_loss`.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
from keras import ops

from dcm_keras import _keras_compat as compat
from dcm_keras import losses as losses_lib


class DCMMetrics(compat.MetricsList):
    """DCM's own metrics in the container Keras's monitoring callbacks search.

    `ModelCheckpoint`, `EarlyStopping` and `ReduceLROnPlateau` with `mode="auto"` find a metric's
    direction from its `_direction` ("up" on Keras's accuracy metrics, "down" on its loss-like
    ones), but only for metrics inside a compiled-metrics container (`MetricsList`): a tracker held
    directly by a model, the usual pattern for a custom `compute_loss`, is invisible to them.
    """

    def result(self):
        return {m.name: m.result() for m in self.metrics}


def loss_mean(name: str) -> keras.metrics.Mean:
    """A `Mean` tracker the monitoring callbacks treat as lower-is-better."""
    return compat.mark_lower_is_better(keras.metrics.Mean(name=name))


def dcm_metrics(flat_heads: Sequence[str], top5_heads: Sequence[str]) -> DCMMetrics:
    """ce/kd/wd loss trackers, then each head's accuracy, then top-5 of `top5_heads`."""
    return DCMMetrics(
        [loss_mean(n) for n in ("ce_loss", "kd_loss", "wd_loss")]
        + [keras.metrics.SparseCategoricalAccuracy(name=f"{h}_acc") for h in flat_heads]
        + [keras.metrics.SparseTopKCategoricalAccuracy(k=5, name=f"{h}_top5")
           for h in top5_heads], name="dcm_metrics")


def deployable_loss(logits, labels, final_heads: np.ndarray, sample_weight=None):
    """Mean over networks of the final head's cross-entropy.

    `logits` are every head's `[H, B, C]` logits and `final_heads` the `[N]` indices of the
    networks' final heads among them; returns a float32 scalar.
    """
    final = ops.take(ops.cast(logits, "float32"), ops.convert_to_tensor(final_heads, "int32"),
                     axis=0)
    per_network = losses_lib.cross_entropy_per_head(ops.log_softmax(final, axis=-1), labels,
                                                     sample_weight)
    return ops.mean(per_network)

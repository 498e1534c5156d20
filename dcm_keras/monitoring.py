"""What Keras's monitoring callbacks see of a `DCM`: its metrics and its validation loss.

Training minimises the whole DCM objective (every head's cross-entropy, every distillation edge,
weight decay), and the training `loss` is that objective. What is shipped, though, is each
network's final head alone, so the loss `evaluate` returns and `fit` logs as `val_loss` is the
*deployable networks' loss*: the mean over networks of the final head's cross-entropy, without
auxiliary heads, distillation terms or weight decay (as Keras's own distillation example reports
the student's loss in its test step). Default-argument `ModelCheckpoint(save_best_only=True)`,
`EarlyStopping()` and `ReduceLROnPlateau()` therefore select by the networks that are shipped.
The parts of the objective stay in the logs, in training and validation alike, as `ce_loss`,
`kd_loss` and `wd_loss`, and so does each network's own loss, `net1_loss`, `net2_loss`, ...: its
final head's cross-entropy (`val_net1_loss` is what `dcm_keras.callbacks.SaveBestNetwork` watches
to keep the best net1 as it is shipped).
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

    In order: the ce/kd/wd loss trackers, each network's loss, each head's accuracy, the top-5
    accuracies (`num_networks` and `num_heads` say where each group starts).
    """

    num_networks = num_heads = 0

    def result(self):
        return {m.name: m.result() for m in self.metrics}

    @property
    def network_losses(self) -> list:
        return self.metrics[3:3 + self.num_networks]

    @property
    def head_accuracies(self) -> list:
        return self.metrics[3 + self.num_networks:3 + self.num_networks + self.num_heads]

    @property
    def top5_accuracies(self) -> list:
        return self.metrics[3 + self.num_networks + self.num_heads:]

    def update_losses(self, ce, kd, wd, per_network, batch) -> None:
        """Adds a batch of `batch` examples: the objective's parts and the `[N]` network losses."""
        for metric, value in zip(self.metrics[:3], (ce, kd, wd)):
            metric.update_state(value, sample_weight=batch)
        for k, metric in enumerate(self.network_losses):
            metric.update_state(per_network[k], sample_weight=batch)

    def update_accuracies(self, y, y_pred, flat_heads: Sequence[str],
                          top5_heads: Sequence[str], sample_weight=None) -> None:
        """Adds a batch to every head's top-1 and the final heads' top-5 accuracies."""
        for metric, head in zip(self.head_accuracies, flat_heads):
            metric.update_state(y, y_pred[head], sample_weight=sample_weight)
        for metric, head in zip(self.top5_accuracies, top5_heads):
            # in_top_k only takes float32 predictions (bfloat16 logits under mixed_bfloat16).
            metric.update_state(y, ops.cast(y_pred[head], "float32"), sample_weight=sample_weight)


def loss_mean(name: str) -> keras.metrics.Mean:
    """A `Mean` tracker the monitoring callbacks treat as lower-is-better."""
    return compat.mark_lower_is_better(keras.metrics.Mean(name=name))


def dcm_metrics(flat_heads: Sequence[str], top5_heads: Sequence[str],
                num_networks: int) -> DCMMetrics:
    """ce/kd/wd loss trackers, `net{k}_loss` of each network, each head's accuracy, then top-5."""
    container = DCMMetrics(
        [loss_mean(n) for n in ("ce_loss", "kd_loss", "wd_loss")]
        + [loss_mean(f"net{k + 1}_loss") for k in range(num_networks)]
        + [keras.metrics.SparseCategoricalAccuracy(name=f"{h}_acc") for h in flat_heads]
        + [keras.metrics.SparseTopKCategoricalAccuracy(k=5, name=f"{h}_top5")
           for h in top5_heads], name="dcm_metrics")
    container.num_networks, container.num_heads = int(num_networks), len(flat_heads)
    return container


def network_losses(logits, labels, final_heads: np.ndarray, sample_weight=None):
    """`[N]` float32: each network's final-head cross-entropy, averaged over the batch.

    `logits` are every head's `[H, B, C]` logits and `final_heads` the `[N]` indices of the
    networks' final heads among them. Their mean is the deployable networks' loss (`val_loss`).
    """
    final = ops.take(ops.cast(logits, "float32"), ops.convert_to_tensor(final_heads, "int32"),
                     axis=0)
    return losses_lib.cross_entropy_per_head(ops.log_softmax(final, axis=-1), labels,
                                             sample_weight)

"""The DCM objective, vectorised over heads and distillation edges.

For heads `z_h` (logits, shape `[H, B, C]`), labels `y` and edges `(i <- j, w)`:

    ce = sum_h  c_h * mean_b  -log softmax(z_h)[b, y_b]
    kd = kd_weight * T^2 * sum_(i<-j)  w * mean_b  KL(stop_gradient(softmax(z_j / T)) || softmax(z_i / T))

With every `c_h` and `w` equal to 1 and `T = 1` this is exactly the released code's loss (which
sums 6 cross-entropies and 18 KL terms). Everything is computed in float32 from `log_softmax`, so
it stays finite under mixed precision, and every edge is computed at once with a gather, so the
graph holds a fixed handful of ops however many edges there are.

`mean_b` is Keras's `sum_over_batch_size` reduction: `sum_b s_b * l_b / B` with sample weights `s`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from keras import ops


def _batch_mean(values, sample_weight):
    """Mean over the last axis, Keras's `sum_over_batch_size` with optional sample weights."""
    if sample_weight is not None:
        values = values * ops.cast(ops.reshape(sample_weight, (1, -1)), values.dtype)
    return ops.mean(values, axis=-1)


def cross_entropy_per_head(log_probs, labels, sample_weight=None):
    """`[H, B, C]` log-probabilities and `[B]` integer labels -> `[H]` mean cross-entropies."""
    num_classes = log_probs.shape[-1]
    one_hot = ops.one_hot(ops.reshape(ops.cast(labels, "int32"), (-1,)), num_classes,
                          dtype=log_probs.dtype)
    nll = -ops.sum(log_probs * one_hot[None], axis=-1)
    return _batch_mean(nll, sample_weight)


def kl_per_edge(log_probs, students, teachers, sample_weight=None):
    """`[H, B, C]` log-probabilities -> `[E]` mean `KL(stop_gradient(p_teacher) || p_student)`."""
    student = ops.take(log_probs, students, axis=0)
    teacher = ops.stop_gradient(ops.take(log_probs, teachers, axis=0))
    kl = ops.sum(ops.exp(teacher) * (teacher - student), axis=-1)
    return _batch_mean(kl, sample_weight)


def dcm_loss(logits, labels, students: np.ndarray, teachers: np.ndarray,
             edge_weights: np.ndarray, temperature: float = 1.0, kd_weight=1.0,
             head_weights: Optional[np.ndarray] = None, sample_weight=None) -> Tuple:
    """Cross-entropy and distillation parts of the DCM loss.

    Args:
        logits: `[H, B, C]` logits of every head (any float dtype; computed in float32).
        labels: `[B]` (or `[B, 1]`) integer class labels.
        students, teachers, edge_weights: `[E]` arrays describing the edges `student <- teacher`.
        temperature: softmax temperature `T` of the distillation terms.
        kd_weight: scale of the distillation part (a float or a scalar tensor, e.g. for warm-up).
        head_weights: `[H]` weights of the per-head cross-entropies (default all 1).
        sample_weight: optional `[B]` per-example weights.

    Returns:
        `(ce, kd)`, two float32 scalars; the training loss is `ce + kd`.
    """
    logits = ops.cast(logits, "float32")
    log_probs = ops.log_softmax(logits, axis=-1)
    ce_heads = cross_entropy_per_head(log_probs, labels, sample_weight)
    if head_weights is None:
        ce = ops.sum(ce_heads)
    else:
        ce = ops.sum(ce_heads * ops.convert_to_tensor(head_weights, "float32"))
    if len(students) == 0:
        return ce, ops.zeros((), "float32")
    if temperature != 1.0:
        log_probs = ops.log_softmax(logits / temperature, axis=-1)
    kl = kl_per_edge(log_probs, ops.convert_to_tensor(students, "int32"),
                     ops.convert_to_tensor(teachers, "int32"), sample_weight)
    kd = ops.sum(kl * ops.convert_to_tensor(edge_weights, "float32"))
    kd = kd * ops.cast(kd_weight, "float32") * (temperature ** 2)
    return ce, kd

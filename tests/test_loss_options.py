"""The loss options measured in docs/accuracy.md against an independent NumPy formula.

    loss = sum_h c_h * mean_b CE(z_h)  +  s(epoch) * kd_weight * T^2 * sum_(i<-j) w_ij * mean_b KL

`c_h` is 1 (`ce_normalization="sum"`, the paper) or 1 / heads of h's network
(`"mean_per_network"`); `w_ij` is 1 (`kd_normalization="sum"`) or 1 / edges into student i
(`"mean_per_student"`); `s(epoch) = min(1, epoch / kd_warmup_epochs)` is the warm-up scale the
`KDWarmup` callback sets at the start of each epoch (1 without warm-up). tests/test_losses.py
checks each normalisation on its own; here the warm-up scale is checked against the formula at
every epoch of the ramp, alone and together with every other option, as the study runs them.
"""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

from dcm_keras import DCM, KDWarmup

CLASSES = 5
BATCH = 6
HEADS = ("aux1", "aux2", "logits")


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def numpy_loss(logits, labels, temperature, kd_weight, scale, ce_normalization,
               kd_normalization):
    """Dense DCM between two networks of HEADS, written from the formula above only."""
    ce = 0.0
    for net in ("net1", "net2"):
        c = 1.0 if ce_normalization == "sum" else 1.0 / len(HEADS)
        for h in HEADS:
            logp = np_log_softmax(logits[f"{net}_{h}"])
            ce += c * np.mean(-logp[np.arange(BATCH), labels])
    # Dense: every head of one network learns from every head of the other.
    edges = [(f"{a}_{ha}", f"{b}_{hb}") for a, b in (("net1", "net2"), ("net2", "net1"))
             for ha, hb in itertools.product(HEADS, HEADS)]
    kd = 0.0
    for student, teacher in edges:
        w = 1.0 if kd_normalization == "sum" else 1.0 / len(HEADS)  # len(HEADS) edges per student
        log_q = np_log_softmax(logits[student] / temperature)
        log_p = np_log_softmax(logits[teacher] / temperature)
        kd += w * np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1))
    return ce + scale * kd_weight * temperature ** 2 * kd


def tiny_net(name):
    inputs = keras.Input((4,), name=f"{name}_in")
    hidden = keras.layers.Dense(6, activation="relu", name=f"{name}_hidden")(inputs)
    out = {h: keras.layers.Dense(CLASSES, name=f"{name}_{h}")(hidden) for h in HEADS}
    return keras.Model(inputs, out, name=name)


@pytest.mark.parametrize("temperature,kd_weight,ce_normalization,kd_normalization", [
    (1.0, 1.0, "sum", "sum"),                            # the paper, with a warm-up
    (3.0, 0.5, "mean_per_network", "mean_per_student"),  # every option at once
])
def test_kd_warmup_scales_the_distillation_term_of_the_formula(
        temperature, kd_weight, ce_normalization, kd_normalization):
    warmup = 4
    dcm = DCM([tiny_net("a"), tiny_net("b")], connections="dense", temperature=temperature,
              kd_weight=kd_weight, kd_warmup_epochs=warmup, ce_normalization=ce_normalization,
              kd_normalization=kd_normalization)
    rng = np.random.default_rng(0)
    logits = {f"{net}_{h}": (3.0 * rng.normal(size=(BATCH, CLASSES))).astype("float32")
              for net in ("net1", "net2") for h in HEADS}
    labels = rng.integers(0, CLASSES, BATCH)
    # The library's head ids must be the reference's (net{k}_{head}).
    assert sorted(dcm.flat_heads) == sorted(logits)
    y_pred = {k: ops.convert_to_tensor(v) for k, v in logits.items()}
    callback = KDWarmup()
    callback.set_model(dcm)
    seen = []
    for epoch in range(warmup + 2):
        callback.on_epoch_begin(epoch)
        scale = min(1.0, epoch / warmup)
        seen.append(float(ops.convert_to_numpy(dcm.kd_scale)))
        loss = float(dcm.compute_loss(y=labels, y_pred=y_pred))
        expected = numpy_loss(logits, labels, temperature, kd_weight, scale, ce_normalization,
                              kd_normalization)
        assert loss == pytest.approx(expected, rel=1e-5), f"epoch {epoch}"
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # The warm-up really changes the loss (the distillation part is not negligible here).
    assert numpy_loss(logits, labels, temperature, kd_weight, 0.5, ce_normalization,
                      kd_normalization) < numpy_loss(logits, labels, temperature, kd_weight,
                                                     1.0, ce_normalization, kd_normalization)

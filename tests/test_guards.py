"""`DCM`'s guards: networks that share weights, and a `fit` that meets a NaN or infinite loss."""

import keras
import numpy as np
import pytest

from dcm_keras import DCM, UserError
from dcm_keras.guards import NonFiniteLossError, non_finite_weights

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)

CLASSES = 3


def tiny_net(name, hidden=None):
    inputs = keras.Input((4,), name=f"{name}_in")
    hidden = hidden or keras.layers.Dense(6, activation="relu", name=f"{name}_hidden")
    x = hidden(inputs)
    out = {"aux1": keras.layers.Dense(CLASSES, name=f"{name}_aux1")(x),
           "logits": keras.layers.Dense(CLASSES, name=f"{name}_logits")(x)}
    return keras.Model(inputs, out, name=name)


def test_the_same_network_twice_is_refused():
    net = tiny_net("a")
    with pytest.raises(UserError, match=r"same model object \('a'\) as net1 and net2"):
        DCM([net, net])
    with pytest.raises(UserError, match="as net1 and net3"):
        DCM([net, tiny_net("b"), net])


def test_networks_sharing_a_layer_are_refused():
    shared = keras.layers.Dense(6, name="shared")
    with pytest.raises(UserError, match=r"net1 \('a'\) and net2 \('b'\) share the weight "
                                        r"'shared/kernel'"):
        DCM([tiny_net("a", shared), tiny_net("b", shared)])
    DCM([tiny_net("a"), tiny_net("b")])  # separately built networks are fine


class EpochEnds(keras.callbacks.Callback):
    ends = 0

    def on_epoch_end(self, epoch, logs=None):
        self.ends += 1


def _data(nan_row=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    if nan_row is not None:
        x[nan_row, 1] = np.nan
    return x, rng.integers(0, CLASSES, 32)


def _nan_weight(row):
    """Per-example weights, NaN at `row`: a NaN loss that no kernel can hide (unlike NaN data)."""
    weights = np.ones(32, "float32")
    weights[row] = np.nan
    return weights


def _dcm(net=tiny_net):
    keras.utils.set_random_seed(0)
    model = DCM([net("a"), net("b")])
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def test_fit_stops_at_the_first_nan_loss_and_says_where_and_what_is_left():
    dcm = _dcm()
    dcm.fit(*_data(), batch_size=8, epochs=1, verbose=0)  # one finished epoch first
    ends = EpochEnds()
    with pytest.raises(NonFiniteLossError,
                       match=r"loss became nan at epoch 1, batch 2 \(counting from 1\), and "
                             r"\d+ of its \d+ weight variables \(.*\) are now non-finite"
                       ) as caught:
        dcm.fit(*_data(), sample_weight=_nan_weight(13),  # in the second batch of 8
                batch_size=8, epochs=3, verbose=0, shuffle=False, callbacks=[ends])
    assert isinstance(caught.value, RuntimeError)  # as TerminateOnNaN(raise_error=True) raises
    assert (caught.value.epoch, caught.value.batch) == (0, 1)
    assert ends.ends == 0  # no epoch-end callback (checkpoints, backups) saw the diverged weights
    assert non_finite_weights(dcm)

    # A later fit does not train on from the ruined weights: it is refused before any step.
    with pytest.raises(NonFiniteLossError, match="refused to start: .* already hold NaN"):
        dcm.fit(*_data(), batch_size=8, epochs=1, verbose=0)


def test_keras_terminate_on_nan_given_by_the_caller_keeps_its_graceful_stop():
    dcm = _dcm()
    history = dcm.fit(*_data(), sample_weight=_nan_weight(0), batch_size=8, epochs=3,
                      verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])


class ZeroingReLU(keras.layers.Layer):
    """A ReLU that outputs 0 for NaN, as oneDNN's fused matmul/convolution + bias + ReLU kernels
    do: with it the loss stays finite on NaN data on every kernel and backend, while the
    gradient (NaN input x 0) still writes NaN into the layer's kernel."""

    def call(self, x):
        return keras.ops.where(x > 0, x, keras.ops.zeros_like(x))


def zeroing_net(name):
    inputs = keras.Input((4,), name=f"{name}_in")
    x = ZeroingReLU()(keras.layers.Dense(6, name=f"{name}_hidden")(inputs))
    out = {"aux1": keras.layers.Dense(CLASSES, name=f"{name}_aux1")(x),
           "logits": keras.layers.Dense(CLASSES, name=f"{name}_logits")(x)}
    return keras.Model(inputs, out, name=name)


class Batches(keras.utils.PyDataset):
    """(x, y) in batches of 8: data whose images DCM first sees when it traces the step."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x) // 8

    def __getitem__(self, i):
        return self.x[8 * i:8 * i + 8], self.y[8 * i:8 * i + 8]


def test_nan_data_stop_fit_at_their_batch_even_where_the_relu_hides_them():
    x, y = _data()
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, batch 2 .* and "
                                                 r"\d+ of its \d+ weight variables"):
        _dcm(zeroing_net).fit(*_data(nan_row=13), batch_size=8, epochs=2, verbose=0,
                              shuffle=False)

    # Item 12 of the user trial: refused fits first, then a NaN in the fit's last batch, whose
    # loss the ReLU keeps finite: it must raise too, not finish with NaN weights.
    dcm = _dcm(zeroing_net)
    for bad in (np.zeros((32, 5), "float32"), Batches(x.astype("uint8"), y)):  # before, in trace
        with pytest.raises(UserError, match="DCM's networks take"):
            dcm.fit(bad, None if isinstance(bad, Batches) else y, batch_size=8, epochs=1,
                    verbose=0)
    ends = EpochEnds()
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1, batch 4 "):
        dcm.fit(*_data(nan_row=30), batch_size=8, epochs=1, verbose=0, shuffle=False,
                callbacks=[ends])
    assert ends.ends == 0 and non_finite_weights(dcm)
    # evaluate on clean data does not score the NaN weights as a finite loss either.
    assert np.isnan(dcm.evaluate(x, y, verbose=0)[0])


class PoisonAt(keras.callbacks.Callback):
    """Writes a NaN into a weight after batch `at`: a step that ruins the weights but not the
    loss (as an overflow in the gradient can), on any kernel."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at:
            kernel = self.model.networks[0].get_layer("a_hidden").kernel
            kernel.assign(keras.ops.full(kernel.shape, np.nan))


@pytest.mark.requires_tensorflow("a callback assigns a weight during fit, which the JAX "
                                 "trainer overwrites with the state it carries")
def test_weights_ruined_with_a_finite_loss_stop_fit_before_any_epoch_end_callback():
    ends = EpochEnds()
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1, batch 3 .* 1 of "
                                                 "its .* weight variables .*a_hidden/kernel"):
        _dcm(zeroing_net).fit(*_data(), batch_size=8, epochs=2, verbose=0,
                              callbacks=[PoisonAt(1), ends])  # the next step's loss shows it
    with pytest.raises(NonFiniteLossError, match=r"the last step of epoch 1 \(batch 4, counting "
                                                 r"from 1\) left 1 of its .* non-finite"):
        _dcm(zeroing_net).fit(*_data(), batch_size=8, epochs=2, verbose=0,
                              callbacks=[PoisonAt(3), ends])  # no next step: checked at once
    assert ends.ends == 0

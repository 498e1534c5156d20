"""`DCM`'s guards: networks that share weights, and a `fit` that meets a NaN or infinite loss."""

import keras
import numpy as np
import pytest

from dcm_keras import DCM, UserError
from dcm_keras.guards import NonFiniteLossError, non_finite_weights

pytestmark = pytest.mark.core  # also run under JAX by `make test` (-m core)

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


def _dcm():
    keras.utils.set_random_seed(0)
    model = DCM([tiny_net("a"), tiny_net("b")])
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def test_fit_stops_at_the_first_nan_loss_and_says_where_and_what_is_left():
    dcm = _dcm()
    dcm.fit(*_data(), batch_size=8, epochs=1, verbose=0)  # one finished epoch first
    x, y = _data(nan_row=13)  # in the second batch of 8
    ends = EpochEnds()
    with pytest.raises(NonFiniteLossError,
                       match=r"loss became nan at epoch 1, batch 2 \(counting from 1\), and "
                             r"\d+ of its \d+ weight variables \(.*\) are now non-finite"
                       ) as caught:
        dcm.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False, callbacks=[ends])
    assert isinstance(caught.value, RuntimeError)  # as TerminateOnNaN(raise_error=True) raises
    assert (caught.value.epoch, caught.value.batch) == (0, 1)
    assert ends.ends == 0  # no epoch-end callback (checkpoints, backups) saw the diverged weights
    assert non_finite_weights(dcm)

    # A later fit does not train on from the ruined weights: it is refused before any step.
    with pytest.raises(NonFiniteLossError, match="refused to start: .* already hold NaN"):
        dcm.fit(*_data(), batch_size=8, epochs=1, verbose=0)


def test_keras_terminate_on_nan_given_by_the_caller_keeps_its_graceful_stop():
    dcm = _dcm()
    history = dcm.fit(*_data(nan_row=0), batch_size=8, epochs=3, verbose=0,
                      callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])


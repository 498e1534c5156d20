"""Keras's monitoring callbacks work on every metric DCM reports, with their default arguments;
each network's loss, `SaveBestNetwork`, and the first fit's notice about tracing."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from dcm_keras import DCM, SaveBestNetwork, UserError, networks, tracing

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)

IMAGE = (8, 8, 3)
MONITORS = ("val_loss", "val_ce_loss", "val_net1_logits_acc")


def _dcm(top5=False):
    keras.utils.set_random_seed(0)
    nets = [networks.build("wrn_10_1", 10, input_shape=IMAGE) for _ in range(2)]
    model = DCM(nets, top5=top5)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n,) + IMAGE).astype("float32"), (np.arange(n) % 10).astype("int32")


# A traced fit of two networks; every logged name's direction is also checked by
# test_every_reported_metric_has_a_direction, in the fast loop.
@pytest.mark.large
def test_monitoring_callbacks_with_default_mode(tmp_path):
    dcm = _dcm()
    x, y = _data()
    callbacks = {}
    for monitor in MONITORS:
        callbacks[monitor] = [
            keras.callbacks.ModelCheckpoint(str(tmp_path / f"{monitor}.keras"), monitor=monitor,
                                            save_best_only=True),
            keras.callbacks.EarlyStopping(monitor=monitor),
            keras.callbacks.ReduceLROnPlateau(monitor=monitor)]
    history = dcm.fit(x, y, validation_data=(x, y), batch_size=8, epochs=2, verbose=0,
                      callbacks=[c for group in callbacks.values() for c in group]).history
    assert len(history["loss"]) == 2
    for monitor, group in callbacks.items():
        up = monitor.endswith("_acc")
        for callback in group:
            # The direction Keras inferred: accuracies up, losses down.
            assert bool(callback.monitor_op(1.0, 0.0)) == up, (monitor, type(callback).__name__)
        assert group[0].best == (max if up else min)(history[monitor])
    restored = keras.saving.load_model(str(tmp_path / "val_net1_logits_acc.keras"),
                                       safe_mode=True)
    assert isinstance(restored, DCM)
    assert [w.shape for w in restored.weights] == [w.shape for w in dcm.weights]


def test_every_reported_metric_has_a_direction():
    """Each name in the logs, with and without `val_`, resolves in mode="auto"."""
    dcm = _dcm(top5=True)
    x, y = _data()
    logs = dcm.evaluate(x, y, verbose=0, return_dict=True)
    assert {"loss", "ce_loss", "kd_loss", "wd_loss", "net1_logits_acc",
            "net2_logits_top5"} <= set(logs)
    for name in logs:
        for monitor in (name, f"val_{name}"):
            callback = keras.callbacks.EarlyStopping(monitor=monitor)
            callback.set_model(dcm)
            callback.on_epoch_end(0, logs={monitor: 0.5})  # raises if no direction is found
            up = name.endswith(("_acc", "_top5"))
            assert bool(callback.monitor_op(1.0, 0.0)) == up, monitor


# --- default callbacks select by the shipped networks ---------------------------------------

CLASSES = 4
# Per epoch: scale of the final heads' correct logits (their CE falls) and of the auxiliary
# heads' wrong logits (their CE, the KL terms and so the whole objective rise).
FINAL_SCALE = (1.0, 2.0, 3.0)
AUX_SCALE = (0.0, 3.0, 6.0)


def _onehot_net(name):
    inputs = keras.Input((CLASSES,), name=f"{name}_in")
    hidden = keras.layers.Dense(CLASSES, name=f"{name}_hidden")(inputs)
    return keras.Model(inputs, {
        "aux1": keras.layers.Dense(CLASSES, name=f"{name}_aux1")(hidden),
        "logits": keras.layers.Dense(CLASSES, name=f"{name}_logits")(hidden)}, name=name)


class _SetEpochWeights(keras.callbacks.Callback):
    """Sets each epoch's weights before it (the learning rate is 0, so they stay)."""

    def on_epoch_begin(self, epoch, logs=None):
        eye = np.eye(CLASSES, dtype="float32")
        for net in self.model.networks:
            net.get_layer(f"{net.name}_hidden").kernel.assign(eye)
            net.get_layer(f"{net.name}_logits").kernel.assign(FINAL_SCALE[epoch] * eye)
            net.get_layer(f"{net.name}_aux1").kernel.assign(-AUX_SCALE[epoch] * eye)


def test_default_checkpoint_and_early_stopping_follow_the_shipped_networks(tmp_path):
    """The whole objective rises each epoch while the final heads' CE falls: default-argument
    ModelCheckpoint(save_best_only=True) keeps the last epoch and EarlyStopping() lets it run;
    the same checkpoint watching the whole objective (val_ce_loss) would keep the first."""
    dcm = DCM([_onehot_net("a"), _onehot_net("b")])
    dcm.compile(optimizer=keras.optimizers.SGD(0.0))
    y = (np.arange(16) % CLASSES).astype("int32")
    x = np.eye(CLASSES, dtype="float32")[y]
    best = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"), save_best_only=True)
    objective = keras.callbacks.ModelCheckpoint(str(tmp_path / "objective.keras"),
                                                monitor="val_ce_loss", save_best_only=True)
    stop = keras.callbacks.EarlyStopping()
    history = dcm.fit(x, y, validation_data=(x, y), batch_size=8, epochs=len(FINAL_SCALE),
                      verbose=0, callbacks=[_SetEpochWeights(), best, objective, stop]).history
    assert len(history["val_loss"]) == len(FINAL_SCALE) and stop.stopped_epoch == 0
    # val_loss is each network's final-head CE, log(1 + 3 e^-a), averaged over the networks.
    expected = [np.log1p((CLASSES - 1) * np.exp(-a)) for a in FINAL_SCALE]
    np.testing.assert_allclose(history["val_loss"], expected, rtol=1e-5)
    objectives = [sum(history[f"val_{p}"][e] for p in ("ce_loss", "kd_loss", "wd_loss"))
                  for e in range(len(FINAL_SCALE))]
    assert objectives[0] < objectives[1] < objectives[2], objectives
    assert best.best == pytest.approx(expected[-1], rel=1e-5)
    for path, epoch in (("best.keras", -1), ("objective.keras", 0)):
        kept = keras.saving.load_model(str(tmp_path / path))
        kernel = kept.networks[0].get_layer("a_logits").kernel
        np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel),
                                   FINAL_SCALE[epoch] * np.eye(CLASSES), err_msg=path)


# --- each network's own loss, and keeping the best network as shipped ------------------------

def _fixed_dcm(seed=0):
    """Two networks with different random weights that a zero learning rate keeps."""
    keras.utils.set_random_seed(seed)
    dcm = DCM([_onehot_net("a"), _onehot_net("b")])
    dcm.compile(optimizer=keras.optimizers.SGD(0.0))
    return dcm


def _final_head_ce(dcm, x, y, weights=None):
    pred = {k: keras.ops.convert_to_numpy(v).astype("float64")
            for k, v in dcm(x, training=False).items()}
    weights = np.ones(len(y)) if weights is None else weights
    out = []
    for head in ("net1_logits", "net2_logits"):
        z = pred[head] - pred[head].max(-1, keepdims=True)
        nll = np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]
        out.append(np.mean(weights * nll))
    return out


def test_each_network_loss_is_its_final_head_cross_entropy():
    dcm = _fixed_dcm()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, CLASSES)).astype("float32")
    y = (np.arange(24) % CLASSES).astype("int32")
    expected = _final_head_ce(dcm, x, y)
    assert abs(expected[0] - expected[1]) > 1e-3  # the two networks differ
    history = dcm.fit(x, y, validation_data=(x, y), batch_size=8, epochs=1, verbose=0).history
    for k, value in enumerate(expected):
        assert history[f"net{k + 1}_loss"][0] == pytest.approx(value, rel=1e-5)
        assert history[f"val_net{k + 1}_loss"][0] == pytest.approx(value, rel=1e-5)
    assert history["val_loss"][0] == pytest.approx(np.mean(expected), rel=1e-5)
    # Sample weights as Keras applies them: sum of weighted losses over the batch size.
    w = np.linspace(0.0, 2.0, len(y)).astype("float32")
    logs = dcm.evaluate(x, y, sample_weight=w, batch_size=len(y), verbose=0, return_dict=True)
    for k, value in enumerate(_final_head_ce(dcm, x, y, w)):
        assert logs[f"net{k + 1}_loss"] == pytest.approx(value, rel=1e-5)


# Epoch by epoch, net1's final head gets better, better, then worse: saves at epochs 1 and 2.
IMPROVING_THEN_WORSE = (1.0, 3.0, 2.0)


def test_save_best_network_saves_only_on_improvement(tmp_path):
    dcm = DCM([_onehot_net("a"), _onehot_net("b")])
    dcm.compile(optimizer=keras.optimizers.SGD(0.0))
    y = (np.arange(16) % CLASSES).astype("int32")
    x = np.eye(CLASSES, dtype="float32")[y]

    class Weights(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            eye = np.eye(CLASSES, dtype="float32")
            for net in self.model.networks:
                net.get_layer(f"{net.name}_hidden").kernel.assign(eye)
                net.get_layer(f"{net.name}_logits").kernel.assign(
                    IMPROVING_THEN_WORSE[epoch] * eye)
                net.get_layer(f"{net.name}_aux1").kernel.assign(eye)

    best = SaveBestNetwork(tmp_path / "net1.keras", "net1")
    each = SaveBestNetwork(str(tmp_path / "net1_{epoch}.keras"), 0)
    history = dcm.fit(x, y, validation_data=(x, y), batch_size=8, epochs=3, verbose=0,
                      callbacks=[Weights(), best, each]).history
    assert best.monitor == "val_net1_loss"
    assert best.best == pytest.approx(min(history["val_net1_loss"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net1.keras", "net1_1.keras",
                                                          "net1_2.keras"]
    kept = keras.saving.load_model(str(tmp_path / "net1.keras"), safe_mode=True)
    assert kept.count_params() == dcm.export_network(0).count_params()
    kernel = keras.ops.convert_to_numpy(kept.get_layer("a_logits").kernel)
    np.testing.assert_allclose(kernel, 3.0 * np.eye(CLASSES))  # epoch 2's, not epoch 3's


@pytest.mark.large  # loads the file in a fresh Python process
def test_saved_best_network_loads_with_keras_alone(tmp_path):
    """The file is what dcm_keras ships: Keras's own layers, no heads, loadable without us."""
    dcm = _dcm()
    x, y = _data()
    path = tmp_path / "best.keras"
    dcm.fit(x, y, validation_data=(x, y), batch_size=8, epochs=1, verbose=0,
            callbacks=[SaveBestNetwork(path, "net2", monitor="val_net2_logits_acc")])
    shipped = networks.build("wrn_10_1", 10, input_shape=IMAGE, aux_heads=False).count_params()
    script = ("import sys, keras\n"
              f"model = keras.saving.load_model({str(path)!r}, safe_mode=True)\n"
              "assert not [m for m in sys.modules if m.startswith('dcm_keras')]\n"
              "print(model.count_params())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) == shipped
    assert shipped < sum(int(np.prod(w.shape)) for w in dcm.networks[1].weights)


def test_save_best_network_refuses_what_it_cannot_use(tmp_path):
    with pytest.raises(UserError, match=r"mode 'best'; valid: auto, min, max"):
        SaveBestNetwork(tmp_path / "a.keras", mode="best")
    with pytest.raises(UserError, match=r"\.keras files; got filepath '.*a\.h5'"):
        SaveBestNetwork(tmp_path / "a.h5")
    with pytest.raises(UserError, match="pass mode='min' or mode='max'"):
        SaveBestNetwork(tmp_path / "a.keras", monitor="val_learning_rate")
    dcm = _fixed_dcm()
    y = (np.arange(8) % CLASSES).astype("int32")
    x = np.eye(CLASSES, dtype="float32")[y]
    with pytest.raises(UserError, match=r"'val_net3_loss', which is not in the logs; logged: .*"
                                        r"val_net1_loss"):
        dcm.fit(x, y, validation_data=(x, y), epochs=1, verbose=0,
                callbacks=[SaveBestNetwork(tmp_path / "a.keras", monitor="val_net3_loss")])
    with pytest.raises(UserError, match=r"Unknown network 'net3'"):
        dcm.fit(x, y, epochs=1, verbose=0, callbacks=[SaveBestNetwork(tmp_path / "a.keras",
                                                                      "net3")])
    with pytest.warns(UserWarning, match="saved nothing: 'val_net1_loss' was never logged"):
        dcm.fit(x, y, epochs=1, verbose=0, callbacks=[SaveBestNetwork(tmp_path / "a.keras")])
    assert not (tmp_path / "a.keras").exists()


# --- the first epoch's trace is announced ----------------------------------------------------

def test_first_fit_says_it_traces_the_step(capsys):
    dcm = _fixed_dcm()
    y = (np.arange(8) % CLASSES).astype("int32")
    x = np.eye(CLASSES, dtype="float32")[y]
    dcm.fit(x, y, epochs=1, verbose=0)
    assert tracing.NOTICE not in capsys.readouterr().out  # verbose=0: quiet
    dcm.compile(optimizer=keras.optimizers.SGD(0.0))  # a new train function to trace
    dcm.fit(x, y, epochs=2, verbose=2)
    out = capsys.readouterr().out
    assert out.count(tracing.NOTICE) == 1 and out.index(tracing.NOTICE) < out.index("Epoch 1/2")
    dcm.fit(x, y, epochs=1, verbose=2)  # traced already: starts at once, says nothing
    assert tracing.NOTICE not in capsys.readouterr().out

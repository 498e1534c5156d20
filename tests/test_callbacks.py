"""Keras's monitoring callbacks work on every metric DCM reports, with their default arguments."""

import keras
import numpy as np
import pytest

from dcm_keras import DCM, networks

pytestmark = pytest.mark.core  # also run under JAX by `make test` (-m core)

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

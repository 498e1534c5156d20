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

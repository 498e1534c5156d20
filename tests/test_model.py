"""`DCM`: training, metrics, weight decay, frozen teachers, serialisation and input validation."""

import json
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from backend_helpers import to_numpy, variable_gradients, xla_optimised
from dcm_keras import DCM, PRESETS, networks

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)

IMAGE = (8, 8, 3)


# --- helpers -------------------------------------------------------------------------------

def tiny_net(name, classes=10, heads=("aux1",), bn=False, features=6, regularizer=None):
    """A small functional network on flat features, returning {heads..., "logits"}."""
    inputs = keras.Input((features,), name=f"{name}_in")
    x = keras.layers.Dense(8, name=f"{name}_hidden")(inputs)
    if bn:
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    out = {h: keras.layers.Dense(classes, name=f"{name}_{h}")(x) for h in heads}
    out["logits"] = keras.layers.Dense(classes, name=f"{name}_logits",
                                       kernel_regularizer=regularizer)(x)
    return keras.Model(inputs, out, name=name)


def features(n=32, dim=6, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)).astype("float32"),
            rng.integers(0, classes, n).astype("int32"))


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def as_json(config):
    """A config as it reads back from a file (tuples become lists)."""
    return json.loads(json.dumps(config))


def pattern_images(n, classes=4, seed=0):
    """Learnable images: class c brightens one quadrant of an 8x8 noise image."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype("int32")
    x = rng.normal(0.0, 0.3, (n,) + IMAGE).astype("float32")
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 4 * r:4 * r + 4, 4 * col:4 * col + 4, :] += 2.0
    return x, y


# --- training ------------------------------------------------------------------------------

def test_fit_lowers_loss_and_every_head_learns():
    classes = 4
    keras.utils.set_random_seed(0)
    nets = [networks.build("wrn_10_1", classes, input_shape=IMAGE) for _ in range(2)]
    dcm = DCM(nets, connections="dense")
    dcm.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    x, y = pattern_images(128, classes)
    with xla_optimised():  # 12 steps: under JAX, worth XLA's full compile
        history = dcm.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0).history
    heads = [f"net{k}_{h}" for k in (1, 2) for h in ("aux1", "aux2", "logits")]
    assert set(history) == ({"loss", "ce_loss", "kd_loss", "wd_loss", "net1_loss", "net2_loss"}
                            | {f"{h}_acc" for h in heads})
    assert history["loss"][-1] < history["loss"][0]
    assert history["ce_loss"][-1] < history["ce_loss"][0]
    for head in heads:
        assert history[f"{head}_acc"][-1] > 1.0 / classes + 0.25, (head, history[f"{head}_acc"])
    assert all(v > 0 for v in history["wd_loss"])  # WRN's default weight decay is on
    for epoch in range(3):  # loss is the sum of its parts
        parts = sum(history[k][epoch] for k in ("ce_loss", "kd_loss", "wd_loss"))
        assert history["loss"][epoch] == pytest.approx(parts, rel=1e-5)


def test_fit_on_a_dataset_does_not_warn_about_shuffle():
    """Keras warns on every fit of a tf.data.Dataset with its default shuffle=True; a dataset
    shuffles itself, so DCM.fit passes shuffle=False unless shuffle is given."""
    tf = pytest.importorskip("tensorflow")
    x, y = features(16)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    dcm = DCM([tiny_net("a"), tiny_net("b")])
    dcm.compile(optimizer="sgd")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dcm.fit(ds, epochs=1, verbose=0)
    assert not [w for w in caught if "shuffle" in str(w.message)]
    with pytest.warns(UserWarning, match="`shuffle=True` was passed, but will be ignored"):
        dcm.fit(ds, epochs=1, verbose=0, shuffle=True)  # asked for: Keras still says so


class TraceCounting(DCM):
    """DCM counting how often its train step is traced (each trace runs this Python once)."""

    traces = 0

    def train_step(self, *args):  # (data) under TensorFlow, (state, data) under JAX
        type(self).traces += 1
        return super().train_step(*args)


@pytest.mark.parametrize("how", ["fit", "train_on_batch"])
def test_the_train_step_is_traced_once(how):
    """Keras's TensorFlow trainer makes the optimizer's slots in the first trace unless a
    strategy is set, and tf.function traces a step that made variables twice: DCM builds the
    optimizer first. Under JAX each call of the Python step is one trace as well."""
    TraceCounting.traces = 0
    dcm = TraceCounting([tiny_net("a"), tiny_net("b")])
    dcm.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    x, y = features(16)
    if how == "fit":
        dcm.fit(x, y, batch_size=8, epochs=2, verbose=0)
    else:
        for _ in range(3):
            dcm.train_on_batch(x[:8], y[:8])
    assert TraceCounting.traces == 1


def test_call_returns_every_head_of_every_network():
    nets = [tiny_net("a", heads=("aux1", "aux2")), tiny_net("b", heads=())]
    dcm = DCM(nets)
    x, _ = features(4)
    out = dcm(x, training=False)
    assert list(out) == ["net1_aux1", "net1_aux2", "net1_logits", "net2_logits"]
    assert dcm.flat_heads == list(out)
    for k, net in enumerate(nets):
        own = net(x, training=False)
        for head, value in own.items():
            np.testing.assert_array_equal(out[f"net{k + 1}_{head}"], value)


# --- metrics -------------------------------------------------------------------------------

def _evaluate(classes, **kwargs):
    keras.utils.set_random_seed(1)
    nets = [tiny_net("a", classes), tiny_net("b", classes)]
    dcm = DCM(nets, **kwargs)
    dcm.compile(optimizer="sgd")
    x, y = features(40, classes=classes, seed=2)
    result = dcm.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    return dcm, x, y, result


def test_metrics_with_100_classes_match_numpy():
    dcm, x, y, result = _evaluate(100)
    heads = ["net1_aux1", "net1_logits", "net2_aux1", "net2_logits"]
    expected = ({"loss", "ce_loss", "kd_loss", "wd_loss", "net1_loss", "net2_loss"}
                | {f"{h}_acc" for h in heads}
                | {"net1_logits_top5", "net2_logits_top5"})
    assert set(result) == expected
    pred = to_numpy(dcm(x, training=False))
    for head in heads:
        assert result[f"{head}_acc"] == pytest.approx(np.mean(pred[head].argmax(-1) == y))
    for head in ["net1_logits", "net2_logits"]:
        top5 = np.argsort(-pred[head], axis=-1)[:, :5]
        assert result[f"{head}_top5"] == pytest.approx(np.mean((top5 == y[:, None]).any(-1)))
    # ce_loss / kd_loss / loss: batch means over 16 + 16 + 8 examples, weighted by batch size.
    ce = sum(np.mean(-np_log_softmax(pred[h])[np.arange(len(y)), y]) for h in heads)
    kd = 0.0
    for s in heads:
        for t in heads:
            if s[:4] != t[:4]:
                log_p, log_q = np_log_softmax(pred[t]), np_log_softmax(pred[s])
                kd += np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1))
    assert result["ce_loss"] == pytest.approx(ce, rel=1e-5)
    assert result["kd_loss"] == pytest.approx(kd, rel=1e-5)
    assert result["wd_loss"] == 0.0
    # evaluate's loss is the deployable networks' loss: the mean of the final heads' CE.
    final = [np.mean(-np_log_softmax(pred[h])[np.arange(len(y)), y])
             for h in ("net1_logits", "net2_logits")]
    assert result["loss"] == pytest.approx(np.mean(final), rel=1e-5)
    assert result["loss"] < ce + kd


def test_evaluate_loss_is_the_mean_final_head_cross_entropy():
    """No aux heads, KL or weight decay in evaluate's loss; sample weights as Keras applies them
    (sum of weighted per-example losses over the batch size); training loss stays the objective."""
    keras.utils.set_random_seed(3)
    # Weight decay on the final heads: counted in wd_loss, not in the loss.
    nets = [tiny_net(n, 5, heads=("aux1", "aux2"), regularizer=keras.regularizers.L2(0.1))
            for n in ("a", "b", "c")]
    dcm = DCM(nets, temperature=2.0)
    dcm.compile(optimizer="sgd")
    x, y = features(24, classes=5, seed=4)
    w = np.linspace(0.0, 2.0, len(y)).astype("float32")
    pred = to_numpy(dcm(x, training=False))
    nll = {h: -np_log_softmax(pred[h])[np.arange(len(y)), y] for h in pred}
    finals = ("net1_logits", "net2_logits", "net3_logits")
    logs = dcm.evaluate(x, y, batch_size=len(y), verbose=0, return_dict=True)
    assert logs["wd_loss"] > 0 and logs["kd_loss"] > 0
    assert logs["loss"] == pytest.approx(np.mean([nll[h].mean() for h in finals]), rel=1e-5)
    weighted = dcm.evaluate(x, y, sample_weight=w, batch_size=len(y), verbose=0,
                            return_dict=True)
    assert weighted["loss"] == pytest.approx(
        np.mean([np.mean(w * nll[h]) for h in finals]), rel=1e-5)
    trained = dcm.train_on_batch(x, y, return_dict=True)  # the step's loss before its update
    assert trained["loss"] == pytest.approx(
        trained["ce_loss"] + trained["kd_loss"] + trained["wd_loss"], rel=1e-5)


def test_no_top5_below_100_classes_unless_asked():
    _, _, _, result = _evaluate(10)
    assert "net1_logits_acc" in result
    assert not [k for k in result if "top5" in k]
    _, _, _, forced = _evaluate(10, top5=True)
    assert {"net1_logits_top5", "net2_logits_top5"} <= set(forced)
    _, _, _, off = _evaluate(100, top5=False)
    assert not [k for k in off if "top5" in k]


# --- weight decay --------------------------------------------------------------------------

def test_weight_decay_term_and_gradient():
    wd = 1e-2
    nets = [networks.build("wrn_10_1", 10, input_shape=IMAGE, weight_decay=wd),
            networks.build("wrn_10_1", 10, input_shape=IMAGE, weight_decay=wd, aux_heads=False)]
    dcm = DCM(nets)
    weights = dcm.trainable_weights
    assert len(dcm.losses) == len(weights)  # every trainable weight is decayed (coupled L2)
    expected = sum(wd / 2 * np.sum(np.square(w.numpy().astype(np.float64))) for w in weights)

    rng = np.random.default_rng(0)
    y_pred = {h: ops.convert_to_tensor(rng.normal(size=(4, 10)), "float32")
              for h in dcm.flat_heads}
    labels = rng.integers(0, 10, 4)
    total = float(dcm.compute_loss(y=labels, y_pred=y_pred))
    assert float(dcm.wd_tracker.result()) == pytest.approx(expected, rel=1e-5)
    parts = float(dcm.ce_tracker.result()) + float(dcm.kd_tracker.result())
    assert total == pytest.approx(parts + expected, rel=1e-5)

    grads = variable_gradients(lambda: ops.sum(ops.stack(dcm.losses)), weights)
    for w, g in zip(weights, grads):
        np.testing.assert_allclose(g, wd * w.numpy(), rtol=1e-5, atol=1e-8,
                                   err_msg=w.path)


def test_frozen_network_is_not_decayed():
    wd = 1e-2
    nets = [networks.build("wrn_10_1", 10, input_shape=IMAGE, weight_decay=wd, aux_heads=False)
            for _ in range(2)]
    nets[1].trainable = False
    dcm = DCM(nets)
    expected = sum(wd / 2 * np.sum(np.square(w.numpy().astype(np.float64)))
                   for w in nets[0].trainable_weights)
    assert float(ops.sum(ops.stack(dcm.losses))) == pytest.approx(expected, rel=1e-5)


# --- frozen teacher ------------------------------------------------------------------------

def test_frozen_teacher_is_unchanged_by_fit():
    keras.utils.set_random_seed(2)
    student, teacher = tiny_net("student", bn=True), tiny_net("teacher", bn=True)
    teacher.trainable = False
    dcm = DCM([student, teacher], connections="dense")
    dcm.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    before_s = [w.copy() for w in student.get_weights()]
    before_t = [w.copy() for w in teacher.get_weights()]
    x, y = features(64, seed=3)
    dcm.fit(x, y, batch_size=16, epochs=2, verbose=0)
    for old, new in zip(before_t, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)  # incl. BN moving statistics
    changed = [not np.array_equal(o, n) for o, n in zip(before_s, student.get_weights())]
    assert all(changed)  # kernels, biases, BN gamma/beta and moving statistics all moved
    assert not {id(w) for w in teacher.weights} & {id(w) for w in dcm.trainable_weights}


# --- serialisation -------------------------------------------------------------------------

def test_keras_file_round_trip(tmp_path):
    keras.utils.set_random_seed(3)
    edges = [("net1_logits", "net2_logits", 0.5), ("net1_aux2", "net2_logits"),
             {"student": "net2_logits", "teacher": "net1_aux1", "weight": 2.0}]
    nets = [networks.build("wrn_10_1", 10, input_shape=IMAGE), tiny_net("flat", heads=())]
    # The second network takes images too: flatten them in front of a dense net.
    inputs = keras.Input(IMAGE)
    flat = keras.layers.Dense(6, name="proj")(keras.layers.Flatten()(inputs))
    nets[1] = keras.Model(inputs, nets[1](flat), name="flat_net")
    dcm = DCM(nets, connections=edges, temperature=2.5, kd_weight=0.3,
              ce_normalization="mean_per_network", kd_normalization="mean_per_student")
    path = str(tmp_path / "dcm.keras")
    dcm.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is DCM
    assert as_json(loaded.get_config()) == as_json(dcm.get_config())
    assert loaded.edges == dcm.edges and loaded.temperature == 2.5 and loaded.kd_weight == 0.3
    np.testing.assert_array_equal(loaded._edge_weights, dcm._edge_weights)
    assert type(loaded.networks[0]) is type(nets[0])
    x = np.random.default_rng(0).normal(size=(3,) + IMAGE).astype("float32")
    out, again = dcm(x, training=False), loaded(x, training=False)
    assert list(again) == list(out)
    for head in out:
        np.testing.assert_array_equal(to_numpy(again[head]), to_numpy(out[head]))


def test_keras_file_round_trip_keeps_optimizer_state(tmp_path):
    keras.utils.set_random_seed(4)
    dcm = DCM([tiny_net("a", bn=True), tiny_net("b")], connections="same_stage")
    dcm.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    x, y = features(32, seed=5)
    dcm.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "trained.keras")
    dcm.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.optimizer, keras.optimizers.SGD)
    assert float(loaded.optimizer.momentum) == 0.9
    assert int(loaded.optimizer.iterations.numpy()) == 2
    saved_state = [v.numpy() for v in dcm.optimizer.variables]
    loaded_state = [v.numpy() for v in loaded.optimizer.variables]
    assert len(saved_state) == len(loaded_state) > 2
    for a, b in zip(saved_state, loaded_state):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(dcm.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("jit_compile", ["auto", False, True])
def test_saved_compile_config_keeps_the_jit_compile_asked_for(tmp_path, jit_compile):
    """Keras would save "auto" as this backend's answer (False for TensorFlow on a CPU), and a
    DCM saved there would then train unjitted, op by op, when loaded under JAX."""
    dcm = DCM([tiny_net("a"), tiny_net("b")])
    dcm.compile(optimizer="sgd", **({} if jit_compile == "auto" else {"jit_compile": jit_compile}))
    assert dcm.get_compile_config()["jit_compile"] == jit_compile
    path = str(tmp_path / "dcm.keras")
    dcm.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.get_compile_config()["jit_compile"] == jit_compile
    assert loaded.jit_compile == dcm.jit_compile  # the same backend resolves "auto" the same way


def test_head_order_survives_a_round_trip(tmp_path):
    """Heads keep their network's (shallow-to-deep) order, not an alphabetical one."""
    nets = [tiny_net("a", heads=("zz", "aa")), tiny_net("b", heads=("mid",))]
    dcm = DCM(nets, connections="same_stage")
    assert dcm.flat_heads == ["net1_zz", "net1_aa", "net1_logits", "net2_mid", "net2_logits"]
    # Stage alignment from the top: aa (one below logits) <-> mid.
    assert {(e.student, e.teacher) for e in dcm.edges} == {
        ("net1_aa", "net2_mid"), ("net2_mid", "net1_aa"),
        ("net1_logits", "net2_logits"), ("net2_logits", "net1_logits")}
    path = str(tmp_path / "order.keras")
    dcm.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.flat_heads == dcm.flat_heads and loaded.edges == dcm.edges
    x, _ = features(3)
    out, again = dcm(x, training=False), loaded(x, training=False)
    for head in out:
        np.testing.assert_array_equal(to_numpy(again[head]), to_numpy(out[head]))


def test_get_config_from_config_with_explicit_edges():
    edges = [("net1_logits", "net2_logits", 0.5), ("net2_aux1", "net1_logits")]
    dcm = DCM([tiny_net("a"), tiny_net("b")], connections=edges, temperature=4.0)
    config = dcm.get_config()
    assert config["connections"] == [["net1_logits", "net2_logits", 0.5],
                                     ["net2_aux1", "net1_logits", 1.0]]
    again = DCM.from_config(config)
    assert as_json(again.get_config()) == as_json(config)
    assert as_json(DCM.from_config(config).get_config()) == as_json(config)  # config reusable
    assert [(e.student, e.teacher, e.weight) for e in again.edges] == \
        [("net1_logits", "net2_logits", 0.5), ("net2_aux1", "net1_logits", 1.0)]
    assert again.temperature == 4.0


# --- bad input -----------------------------------------------------------------------------

def test_network_without_logits_output():
    inputs = keras.Input((6,))
    bad = keras.Model(inputs, {"out": keras.layers.Dense(10)(inputs)}, name="nologits")
    with pytest.raises(ValueError, match="'nologits' must return a dict of logits with a 'logits'"):
        DCM([tiny_net("a"), bad])
    plain = keras.Model(inputs, keras.layers.Dense(10)(inputs), name="plain")
    with pytest.raises(ValueError, match="'plain' must return a dict of logits"):
        DCM([plain])


def test_sequential_network_is_pointed_to_attach_heads():
    def sequential(name):
        return keras.Sequential([keras.Input(IMAGE), keras.layers.Conv2D(4, 3, name="c1"),
                                 keras.layers.Conv2D(4, 3, name="c2"),
                                 keras.layers.GlobalAveragePooling2D(name="pool"),
                                 keras.layers.Dense(10, name="fc")], name=name)

    with pytest.raises(ValueError, match="'s1' is a Sequential model.*"
                                         "dcm_keras.networks.attach_heads"):
        DCM([sequential("s1"), sequential("s2")])
    dcm = DCM([networks.attach_heads(sequential(n), ["c1"]) for n in ("s1", "s2")])  # as told
    assert dcm.flat_heads == ["net1_aux1", "net1_logits", "net2_aux1", "net2_logits"]


def test_networks_must_agree_on_classes_and_inputs():
    with pytest.raises(ValueError, match="same number of classes"):
        DCM([tiny_net("a", classes=10), tiny_net("b", classes=100)])
    with pytest.raises(ValueError, match="same input shape"):
        DCM([tiny_net("a", features=6), tiny_net("b", features=5)])


def test_mismatch_is_caught_between_networks_with_the_same_name():
    # Two builds of one architecture share a name; the checks must still see both networks.
    with pytest.raises(ValueError, match=r"same number of classes.*net1.*: 10.*net2.*: 100"):
        DCM([tiny_net("same", classes=10), tiny_net("same", classes=100)])
    with pytest.raises(ValueError, match=r"same input shape.*\(6,\).*\(5,\)"):
        DCM([tiny_net("same", features=6), tiny_net("same", features=5)])


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="Unknown connections preset 'dcm'") as info:
        DCM([tiny_net("a"), tiny_net("b")], connections="dcm")
    assert all(p in str(info.value) for p in PRESETS)


def test_unknown_network_name_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown network 'wrn_28'") as info:
        networks.build("wrn_28", 10)
    assert "wrn_D_K" in str(info.value)


def test_edges_naming_missing_heads_list_valid_heads():
    with pytest.raises(ValueError, match="'net2_aux2', which does not exist") as info:
        DCM([tiny_net("a"), tiny_net("b")], connections=[("net1_logits", "net2_aux2")])
    for head in ["net1_aux1", "net1_logits", "net2_aux1", "net2_logits"]:
        assert head in str(info.value)


def test_compile_with_loss_is_refused():
    dcm = DCM([tiny_net("a")], connections="none")
    with pytest.raises(ValueError, match="DCM computes its own loss"):
        dcm.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")


def test_subclassed_network_is_refused():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.dense = keras.layers.Dense(10)

        def call(self, x):
            return {"logits": self.dense(x)}

    sub = Sub()
    sub(np.zeros((1, 6), "float32"))
    with pytest.raises(ValueError, match="'sub' is not a functional model"):
        DCM([tiny_net("a"), sub])
    with pytest.raises(TypeError, match="Expected a keras.Model"):
        DCM([tiny_net("a"), keras.layers.Dense(3)])


def test_a_network_name_in_place_of_a_model_is_named_with_its_position():
    # It used to fail with a bare AttributeError ('str' object has no attribute 'weights').
    with pytest.raises(TypeError, match=r"keras.Model as net1, got a str 'wrn_10_1'.*"
                                        r"networks.build"):
        DCM(["wrn_10_1", tiny_net("b")])
    with pytest.raises(TypeError, match="as net2, got a NoneType"):
        DCM([tiny_net("a"), None])


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": 0.0}, "temperature must be a finite positive number"),
    ({"kd_weight": -1.0}, "kd_weight must be a finite number >= 0"),
    ({"ce_normalization": "mean"}, "Unknown ce_normalization 'mean'"),
    ({"kd_normalization": "mean"}, "Unknown kd_normalization 'mean'"),
])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DCM([tiny_net("a"), tiny_net("b")], **kwargs)


def test_empty_network_list_and_missing_labels():
    with pytest.raises(ValueError, match="at least one network"):
        DCM([])
    dcm = DCM([tiny_net("a")])
    x, _ = features(2)
    with pytest.raises(ValueError, match="needs labels"):
        dcm.compute_loss(x=x, y=None)


def test_kd_warmup_ramps_the_distillation_weight_per_epoch():
    x, y = features(n=64)
    nets = [tiny_net("a"), tiny_net("b")]
    dcm = DCM(nets, kd_warmup_epochs=2)
    dcm.compile(optimizer=keras.optimizers.SGD(0.01))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(float(keras.ops.convert_to_numpy(self.model.kd_scale)))

    # Record is listed first, so it sees the value the previous epoch left; the added KDWarmup
    # then sets this epoch's value. History gives what each epoch actually trained with.
    history = dcm.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[Record()])
    assert seen == [1.0, 0.0, 0.5, 1.0]
    kd = history.history["kd_loss"]
    assert kd[0] == 0.0 and kd[1] > 0.0 and kd[3] > 0.0
    assert DCM.from_config(dcm.get_config()).kd_warmup_epochs == 2


def test_kd_warmup_must_be_a_non_negative_integer():
    with pytest.raises(ValueError, match="kd_warmup_epochs"):
        DCM([tiny_net("a"), tiny_net("b")], kd_warmup_epochs=-1)


# --- refusals leave the model usable; what is refused up front --------------------------------

class _Batches(keras.utils.PyDataset):
    """One batch that `fit` cannot inspect before tracing (unlike arrays or a tf.data spec)."""

    def __init__(self, *batch):
        super().__init__()
        self.batch = batch

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.batch


_X, _Y = features(n=16)
REFUSALS = {
    "uint8 images": ((_X * 10).astype("uint8"), _Y, "floating-point images"),
    "uint8 images, traced": (_Batches((_X * 10).astype("uint8"), _Y), None,
                             "floating-point images"),
    "image shape": (_X[:, :5], _Y, r"shape \(None, 6\)"),
    "image shape, traced": (_Batches(_X[:, :5], _Y), None, r"shape \(None, 6\)"),
    "one-hot labels": (_X, np.eye(10, dtype="int32")[_Y], "one-hot"),
    "one-hot labels, traced": (_Batches(_X, np.eye(10, dtype="int32")[_Y]), None, "one-hot"),
    "label values": (_X, _Y + 10, r"must lie in \[0, 10\)"),
    "no labels, traced": (_Batches(_X), None, "DCM needs labels"),
    "empty": (_X[:0], _Y[:0], "empty"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_fit_leaves_the_model_trainable(case):
    x, y, match = REFUSALS[case]
    dcm = DCM([tiny_net("a"), tiny_net("b")])
    dcm.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))  # has slot variables
    with pytest.raises(ValueError, match=match):
        dcm.fit(x, y, epochs=1, batch_size=16, verbose=0)
    history = dcm.fit(_X, _Y, epochs=2, batch_size=16, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and history["loss"][1] < history["loss"][0]
    assert np.isfinite(dcm.evaluate(_X, _Y, verbose=0, return_dict=True)["loss"])


def test_a_refused_evaluate_or_predict_leaves_the_model_usable():
    dcm = DCM([tiny_net("a"), tiny_net("b")])
    dcm.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    with pytest.raises(ValueError, match="floating-point images"):
        dcm.evaluate(_Batches((_X * 10).astype("uint8"), _Y), verbose=0)
    with pytest.raises(ValueError, match="floating-point images"):
        dcm.predict((_X * 10).astype("uint8"), verbose=0)
    assert dcm.predict(_X, verbose=0)["net1_logits"].shape == (16, 10)
    assert np.isfinite(dcm.evaluate(_X, _Y, verbose=0, return_dict=True)["loss"])
    assert np.isfinite(dcm.fit(_X, _Y, epochs=1, batch_size=16, verbose=0).history["loss"][0])


def test_edges_given_as_a_generator_are_kept_and_serialised():
    edges = [("net1_logits", "net2_aux1", 0.5), ("net2_logits", "net1_logits", 2.0)]
    dcm = DCM([tiny_net("a"), tiny_net("b")], connections=(e for e in edges))
    config = dcm.get_config()
    assert [tuple(e) for e in config["connections"]] == edges
    clone = DCM.from_config(config)
    assert [(e.student, e.teacher, e.weight) for e in clone.edges] == edges


def test_get_config_chains_to_keras_and_keeps_the_dtype_policy():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        dcm = DCM([tiny_net("a"), tiny_net("b")], name="pair", trainable=False)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    config = dcm.get_config()
    base = keras.Model.get_config(dcm)  # Keras's own entries: name, trainable, dtype
    assert {key: config[key] for key in base} == base
    assert (config["name"], config["trainable"]) == ("pair", False)
    again = DCM.from_config(as_json(config))  # as a .keras file holds it
    assert again.dtype_policy.name == "mixed_bfloat16" and again.trainable is False


def test_config_written_before_the_dtype_entry_still_loads():
    config = DCM([tiny_net("a"), tiny_net("b")]).get_config()
    del config["dtype"]
    assert DCM.from_config(config).dtype_policy.name == keras.mixed_precision.global_policy().name


def test_what_is_serialised_is_the_resolved_edge_list():
    given = [{"student": "net1_logits", "teacher": "net2_aux1"},
             ["net2_logits", "net1_aux1", 3]]
    dcm = DCM([tiny_net("a"), tiny_net("b")], connections=iter(given))
    assert dcm.get_config()["connections"] == [[e.student, e.teacher, e.weight]
                                               for e in dcm.edges]
    assert dcm.get_config()["connections"] == [["net1_logits", "net2_aux1", 1.0],
                                               ["net2_logits", "net1_aux1", 3.0]]
    # A preset is kept by name (so the summary can say which) and resolves to the same edges.
    preset = DCM([tiny_net("a"), tiny_net("b")], connections="cross_stage")
    assert preset.get_config()["connections"] == "cross_stage"
    assert DCM.from_config(preset.get_config()).edges == preset.edges


def test_one_network_with_a_between_networks_preset_warns():
    with pytest.warns(UserWarning, match="no distillation edge"):
        DCM([tiny_net("a")], connections="dense")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(DCM([tiny_net("a")], connections="dks").edges) == 2
        DCM([tiny_net("a")], connections="none")


@pytest.mark.parametrize("kwargs,match", [
    ({"kd_weight": float("inf")}, "kd_weight must be a finite number"),
    ({"kd_weight": float("nan")}, "kd_weight must be a finite number"),
    ({"temperature": float("inf")}, "temperature must be a finite positive number"),
])
def test_non_finite_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DCM([tiny_net("a"), tiny_net("b")], **kwargs)

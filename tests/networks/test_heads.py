"""attach_heads and with_weight_decay on keras.applications, keras-hub and our own networks."""

import pathlib
import re

import keras
import numpy as np
import pytest

import dcm_keras
from dcm_keras import networks
from dcm_keras.networks.applications import application_names

IMAGE = (32, 32, 3)
CLASSES = 3
# Replica heads of the big models make 10-70M parameter networks (their counts are tested untrained);
# light heads keep the training and round-trip test fast, still at the "auto" branch points.
TRAIN_HEAD = {"MobileNetV3Small": "replica", "keras_hub_resnet": "replica"}
APPS = ["ResNet50V2", "MobileNetV3Small", "EfficientNetB0", "ConvNeXtTiny"]
# The three big applications take about 70 % of this file's CPU time (building them and a
# DCM step each): `make test-fast` checks the smallest, MobileNetV3Small; `make test` all four.
APP_PARAMS = [name if name == "MobileNetV3Small" else pytest.param(name, marks=pytest.mark.large)
              for name in APPS]
SMALL = (16, 16, 3)  # our own WRN-16-2, shared with test_contract.py (conftest.py)


def _count(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def apps():
    """Each keras.applications model built once (attach_heads leaves the model unchanged)."""
    cache = {}

    def get(name: str) -> keras.Model:
        if name not in cache:
            cache[name] = _hub_classifier() if name == "keras_hub_resnet" else _app(name)
        return cache[name]

    return get


def _app(name: str) -> keras.Model:
    fn = getattr(keras.applications, name)
    extra = {"include_preprocessing": False} if name in ("MobileNetV3Small", "ConvNeXtTiny") else {}
    return fn(weights=None, input_shape=IMAGE, classes=CLASSES, classifier_activation=None,
              **extra)


def _hub_classifier() -> keras.Model:
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 64, 64],
        stackwise_num_blocks=[2, 2, 2], stackwise_num_strides=[1, 2, 2],
        block_type="basic_block", use_pre_activation=False, image_shape=IMAGE)
    return keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=CLASSES,
                                                  activation=None, preprocessor=None)


def _output_of(model, name):
    """The output tensor of a layer or plain op (ConvNeXt's `x + y`) in `model`'s own graph."""
    op = next(op for op in model.operations if op.name == name)
    return op._inbound_nodes[0].outputs[0]


def _images(n=2, seed=0):
    return np.random.default_rng(seed).random((n,) + IMAGE, dtype=np.float32)


@pytest.mark.parametrize("name", APP_PARAMS)
def test_auto_replica_heads_on_keras_applications(name, apps):
    base = apps(name)
    x = _images()
    expected = _np(base(x, training=False))
    net = networks.attach_heads(base)
    assert list(net.output) == ["aux1", "aux2", "logits"]
    assert len(net.branch_points) == 2
    # Each branch point is a stage output: resolution falls from aux1 to aux2 to the final stage.
    sizes = [_output_of(base, n).shape[1] for n in net.branch_points]
    assert sizes[0] > sizes[1] > 1
    # A replica head is a copy of the sub-graph from its branch point to the logits.
    copies = [_count(keras.Model(_output_of(base, n), base.output))
              for n in net.branch_points]
    assert _count(net) == _count(base) + sum(copies)
    lines = []
    net.summary(print_fn=lambda line, *a, **k: lines.append(line))
    assert all(n in lines[-1] for n in net.branch_points) and "'auto'" in lines[-1]
    exported = dcm_keras.DCM([net], connections="none").export_network(0)
    assert _count(exported) == _count(base)
    np.testing.assert_array_equal(_np(exported(x, training=False)), expected)


def _losses(dcm, x, y):
    pred = dcm(x, training=False)
    total = float(dcm.compute_loss(x, y, pred, training=False))
    return total, sum(float(v) for v in dcm.losses)


@pytest.mark.parametrize("name", APP_PARAMS + ["keras_hub_resnet"])
def test_dcm_pair_trains_and_round_trips(name, apps, tmp_path):
    base = apps(name)
    net = networks.attach_heads(base, head=TRAIN_HEAD.get(name, "light"), weight_decay=5e-4)
    partner = networks.build("wrn_10_1", CLASSES, input_shape=IMAGE)
    dcm = dcm_keras.DCM([net, partner])
    dcm.compile(keras.optimizers.SGD(0.01), run_eagerly=True)  # no tracing: seconds, not minutes
    x, y = _images(4), np.array([0, 1, 2, 0])
    logs = dcm.train_on_batch(x, y, return_dict=True)
    assert logs["kd_loss"] > 0 and logs["wd_loss"] > 0 and np.isfinite(logs["loss"])
    before = _losses(dcm, x, y)
    net.save(tmp_path / "net.keras")
    loaded = keras.saving.load_model(tmp_path / "net.keras", safe_mode=True)
    assert type(loaded) is networks.HeadedModel and loaded.branch_points == net.branch_points
    assert loaded.get_config()["auto_branch_points"] is True
    after = _losses(dcm_keras.DCM([loaded, partner]), x, y)
    np.testing.assert_allclose(after, before, rtol=1e-5)
    assert after[1] > 0
    assert _count(dcm.export_network(0)) == _count(base)


def test_replica_half_keeps_half_of_each_copied_stage(built_network):
    plain = built_network("wrn_16_2", 100, SMALL, False)  # n = 2 blocks per stage
    full = networks.attach_heads(plain)
    half = networks.attach_heads(plain, head="replica_half")
    names = {layer.name for layer in half.layers}
    assert "aux1_stage2_block1_add" in names and "aux1_stage2_block2_add" not in names
    assert "aux2_stage3_block1_add" in names and "aux2_stage3_block2_add" not in names
    assert {"aux1_stage2_block2_add", "aux2_stage3_block2_add"} <= {l.name for l in full.layers}
    assert _count(plain) < _count(half) < _count(full)
    out = half(np.zeros((2,) + SMALL, "float32"), training=False)
    assert all(tuple(v.shape) == (2, 100) for v in out.values())


def test_replica_heads_on_our_wrn_16_2_versus_the_papers(built_network):
    paper = built_network("wrn_16_2", 100, SMALL)
    ours = networks.attach_heads(built_network("wrn_16_2", 100, SMALL, False))
    # "auto" finds the paper's branch points: the outputs of stages 1 and 2.
    assert ours.branch_points == ["stage1_block2_add", "stage2_block2_add"]
    shape = lambda model, name: tuple(model.get_layer(name).output.shape[1:])  # noqa: E731
    # aux1: the paper copies stage 2 and keeps n // 2 = 1 block of stage 3; a replica keeps both.
    assert "aux1_stage3_block2_add" not in {layer.name for layer in paper.layers}
    assert shape(ours, "aux1_stage3_block2_add") == (4, 4, 128)
    # aux2: the paper's stage-3 copy is twice as wide (128K = 256 channels); a replica is not.
    assert shape(paper, "aux2_stage3_block2_add")[-1] == 2 * shape(ours, "aux2_stage3_block2_add")[-1]
    assert _count(ours) < _count(paper)


def _small_model(activation=None, trailing=None):
    from keras.src.applications.convnext import LayerScale  # a weight with no regularizer arg

    inputs = keras.Input(IMAGE)
    x = keras.layers.Conv2D(8, 3, strides=2, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = LayerScale(0.5, 8, name="scale")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Add(name="res")([x, keras.layers.LayerNormalization(name="ln")(y)])
    x = keras.layers.Conv2D(16, 3, strides=2, name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(CLASSES, activation=activation, name="dense")(x)
    if trailing:
        out = keras.layers.Activation(trailing, name="act")(out)
    return keras.Model(inputs, out, name="small")


def test_with_weight_decay_is_kept_by_save_and_clone(tmp_path):
    model = _small_model()
    decayed = networks.with_weight_decay(model, 4e-3)
    assert all(v.regularizer is not None for v in decayed.trainable_weights)
    assert isinstance(decayed.get_layer("scale"), networks.WeightDecay)
    expected = 4e-3 / 2 * sum(float(np.sum(_np(v) ** 2)) for v in model.trainable_weights)
    assert sum(float(v) for v in decayed.losses) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(_np(decayed(_images())), _np(model(_images())), rtol=1e-6)
    decayed.save(tmp_path / "m.keras")
    for copy in (keras.saving.load_model(tmp_path / "m.keras", safe_mode=True),
                 keras.models.clone_model(decayed)):
        copy.set_weights(decayed.get_weights())
        assert sum(float(v) for v in copy.losses) == pytest.approx(expected, rel=1e-5)
    assert not networks.with_weight_decay(decayed, 0).losses
    with pytest.raises(ValueError, match="weight_decay"):
        networks.with_weight_decay(model, -1.0)


def test_with_weight_decay_keeps_a_headed_model_headed_with_its_weights():
    net = networks.attach_heads(_small_model(), branch_points=["res"])
    decayed = networks.with_weight_decay(net, 4e-3)
    assert isinstance(decayed, networks.HeadedModel) and decayed.weight_decay == 4e-3
    assert decayed.losses and not net.losses
    expected, got = net(_images()), decayed(_images())
    assert set(got) == set(expected) == {"aux1", "logits"}
    for name in expected:
        np.testing.assert_allclose(_np(got[name]), _np(expected[name]), rtol=1e-6)


def test_softmax_output_refused_unless_stripped():
    for model in (_small_model(activation="softmax"), _small_model(trailing="softmax")):
        with pytest.raises(ValueError, match="softmax.*strip_activation=True"):
            networks.attach_heads(model, branch_points=["res"])
        net = networks.attach_heads(model, branch_points=["res"], strip_activation=True)
        logits = _np(net(_images())["logits"])
        probs = _np(model(_images()))
        np.testing.assert_allclose(_np(keras.ops.softmax(logits)), probs, rtol=1e-5, atol=1e-6)


def test_bad_models_and_branch_points_are_refused():
    model = _small_model()
    cases = [
        (dict(branch_points=["nope"]), "no layer named 'nope'.*stage outputs"),
        (dict(branch_points=["dw"]), "'dw'.*not a branch point"),
        (dict(branch_points=["res", "bn"]), "shallow to deep"),
        (dict(branch_points="res"), "list of layer names"),
        (dict(head="big"), "Unknown head 'big'.*replica, replica_half, light"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            networks.attach_heads(model, **kwargs)
    inputs = [keras.Input(IMAGE), keras.Input(IMAGE)]
    two_in = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(
        keras.layers.Add()(inputs))))
    with pytest.raises(ValueError, match="2 inputs and 1 outputs"):
        networks.attach_heads(two_in)
    with pytest.raises(ValueError, match="1 inputs and 3 outputs"):
        networks.attach_heads(networks.build("wrn_10_1", 10))  # already has heads

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        networks.attach_heads(Sub())


@pytest.mark.large  # builds EfficientNetB0 twice
def test_registry_builds_keras_applications_by_name(apps):
    # Heads, padding below 32x32 and BN momentum: the keras family in test_contract.py.
    plain = networks.build("keras:EfficientNetB0", CLASSES, input_shape=(28, 28, 3),
                           aux_heads=False, weight_decay=0)
    assert list(plain.output) == ["logits"]
    assert not any(isinstance(l, (keras.layers.Rescaling, keras.layers.Normalization))
                   for l in plain.layers)
    assert _count(plain) == _count(apps("EfficientNetB0"))  # the stock model, 32x32x3
    with pytest.raises(ValueError, match="Unknown keras.applications model 'Nope'.*"
                                         "keras:MobileNetV3Small"):
        networks.build("keras:Nope", 10)
    assert "keras:NAME" in networks.list_networks()
    assert "MobileNetV3Small" in application_names()


@pytest.mark.core  # the README promises both backends
def test_readme_your_own_backbone_example_runs():
    readme = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.S)
              if "attach_heads" in b]
    assert len(blocks) == 1
    namespace = {}
    exec(blocks[0], namespace)  # noqa: S102 - our own README
    dcm = namespace["dcm"]
    assert all(net == ["aux1", "aux2", "logits"] for net in dcm.heads)
    assert len(dcm.edges) == 18 and dcm.compiled

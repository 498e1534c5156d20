"""The contract every registered family honours, checked on each family's cheapest member.

Parametrised from the registry (`networks.list_families()`, `networks.representative`), as
timm's tests run over `timm.list_models()`: a new family is tested the moment it registers.
"""

import json

import keras
import numpy as np
import pytest

import dcm_keras
from dcm_keras import networks
from dcm_keras.networks.common import BN_EPSILON, BN_MOMENTUM

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)

FAMILIES = networks.list_families()
# Small enough to be fast, large enough for every family (keras.applications pad to 32x32, the
# ImageNet ResNets take any size). Parameter counts do not depend on it.
INPUT = (16, 16, 3)
NUM_CLASSES = 100  # the paper's counts are for 100 classes, so their builds are shared
KEYS = ["aux1", "aux2", "logits"]
# family -> (network, classes, trainable parameters without heads, with heads). The paper's
# released models (../shared/DCM_REFERENCE.md), torchvision's ResNet-18, and for resnet20 and
# resnet18's heads the counts derived by hand in test_resnet.py.
KNOWN_COUNTS = {
    "wrn": ("wrn_16_2", 100, 703_284, 3_038_908),
    "mobilenet": ("mobilenet", 100, 3_309_476, 11_431_276),
    "cifar_resnet": ("resnet20", 100, 278_324, 1_187_132),
    "resnet": ("resnet18", 1000, 11_689_512, 26_882_040),
}
# keras.applications keep their own layers (biases, BN epsilon, initialisers), train on one
# device, and name some layers with Keras's global counters ("activation_28"), so the two forms'
# names differ: only our own families follow our layer conventions, offer synchronized BN and
# move weights between the forms with transfer_weights.
OWN_FAMILIES = [f for f in FAMILIES if f != "keras"]


@pytest.fixture
def built(built_network):
    """`get(family or name, aux_heads=True, num_classes=NUM_CLASSES)`, from the session's builds
    (conftest.py): a family stands for its representative."""

    def get(family_or_name: str, aux_heads: bool = True,
            num_classes: int = NUM_CLASSES) -> keras.Model:
        name = (networks.representative(family_or_name) if family_or_name in FAMILIES
                else family_or_name)
        return built_network(name, num_classes, INPUT, aux_heads)

    return get


def _trainable(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2,) + INPUT).astype("float32")


def _outputs(model: keras.Model, x: np.ndarray) -> dict:
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}


def test_every_family_is_buildable_by_name():
    assert {"wrn", "mobilenet", "cifar_resnet", "resnet", "keras"} <= set(FAMILIES)
    for family in FAMILIES:
        assert networks.family_of(networks.representative(family)) == family
    assert set(KNOWN_COUNTS) <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_output_keys_order_and_shapes(built, family):
    for aux_heads, keys in [(True, KEYS), (False, ["logits"])]:
        model = built(family, aux_heads)
        assert list(model.output.keys()) == keys
        out = model(_images(), training=False)
        assert list(out.keys()) == keys
        for key in keys:
            assert tuple(out[key].shape) == (2, NUM_CLASSES)


@pytest.mark.parametrize("family", OWN_FAMILIES)
def test_model_is_named_after_the_network(built, family):
    assert built(family, True).name == built(family, False).name == networks.representative(family)


@pytest.mark.parametrize("family", list(KNOWN_COUNTS))
def test_parameter_counts(built, family):
    name, classes, without, with_heads = KNOWN_COUNTS[family]
    assert _trainable(built(name, False, classes)) == without
    assert _trainable(built(name, True, classes)) == with_heads


@pytest.mark.parametrize("family", OWN_FAMILIES)
def test_main_path_names_do_not_depend_on_heads(built, family):
    with_heads, without = built(family, True), built(family, False)
    names_with = {layer.name for layer in with_heads.layers}
    names_without = {layer.name for layer in without.layers}
    assert names_without <= names_with
    extra = names_with - names_without
    assert extra and all(n.startswith(("aux1", "aux2")) for n in extra)
    for layer in without.layers:
        other = with_heads.get_layer(layer.name)
        assert [tuple(w.shape) for w in layer.weights] == [tuple(w.shape) for w in other.weights]


@pytest.mark.parametrize("family", OWN_FAMILIES)
def test_transfer_weights_gives_identical_logits(built, family):
    with_heads, without = built(family, True), built(family, False)
    x = _images(seed=1)
    before = _outputs(without, x)["logits"]
    reference = _outputs(with_heads, x)["logits"]
    assert not np.allclose(before, reference)  # independent initialisations
    copied = networks.transfer_weights(with_heads, without)
    assert copied == sum(1 for layer in without.layers if layer.weights)
    np.testing.assert_allclose(_outputs(without, x)["logits"], reference, rtol=1e-5, atol=1e-5)


def test_transfer_weights_refuses_partial_copy(built):
    with pytest.raises(ValueError, match="no counterpart"):
        networks.transfer_weights(built("cifar_resnet", False), built("cifar_resnet", True))


@pytest.mark.parametrize("family", FAMILIES)
def test_export_gives_the_plain_network(built, family):
    with_heads, without = built(family, True), built(family, False)
    exported = dcm_keras.export_network(with_heads)
    assert not isinstance(exported.output, dict)
    assert _trainable(exported) == _trainable(without)
    weighted = {layer.name for layer in exported.layers if layer.weights}
    assert weighted == {layer.name for layer in without.layers if layer.weights}
    x = _images(seed=3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(exported(x, training=False)),
                               _outputs(with_heads, x)["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_round_trip(built, family):
    model = built(family, True)
    config = json.loads(json.dumps(model.get_config()))  # must survive JSON, as in .keras files
    clone = type(model).from_config(config)
    assert type(clone) is type(model)
    assert json.loads(json.dumps(clone.get_config())) == config
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert ([tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in model.weights])


@pytest.mark.parametrize("family", FAMILIES)
def test_keras_file_round_trip(built, family, tmp_path):
    model = built(family, True)
    path = tmp_path / "net.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    x = _images(seed=2)
    expected, got = _outputs(model, x), _outputs(loaded, x)
    assert list(got) == KEYS
    for key in KEYS:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_norm_momentum(built, family):
    bns = [l for l in built(family, True).layers
           if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(bn.momentum == BN_MOMENTUM and not bn.synchronized for bn in bns)


@pytest.mark.parametrize("family", OWN_FAMILIES)
def test_layer_conventions(built, family):
    model = built(family, True)
    assert all(l.epsilon == BN_EPSILON for l in model.layers
               if isinstance(l, keras.layers.BatchNormalization))
    checked = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel, fan_in = layer.kernel, 9  # PyTorch's fan-in of a 3x3 depthwise kernel
            assert not layer.use_bias
        elif isinstance(layer, keras.layers.Conv2D):
            kernel = layer.kernel
            fan_in = int(np.prod(kernel.shape[:-1]))
            assert isinstance(layer.kernel_initializer, keras.initializers.HeNormal)
            assert not layer.use_bias
        elif isinstance(layer, keras.layers.Dense):
            kernel, fan_in = layer.kernel, layer.kernel.shape[0]
            assert isinstance(layer.kernel_initializer, keras.initializers.HeNormal)
            assert layer.use_bias
        else:
            continue
        values = keras.ops.convert_to_numpy(kernel)
        if values.size >= 500:  # He-normal (fan-in) scale, checked on the sampled values
            assert np.std(values) == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.2), layer.name
            checked += 1
    assert checked


@pytest.mark.parametrize("family", FAMILIES)
def test_coupled_weight_decay_on_every_trainable_weight(built, family):
    model = built(family, True)
    losses = model.losses
    assert len(losses) == len(model.trainable_weights)
    # L2(wd / 2) on every weight: the gradient is wd * w, PyTorch's coupled weight decay.
    total = sum(float(keras.ops.convert_to_numpy(l)) for l in losses)
    expected = 5e-4 / 2 * sum(float(np.sum(np.square(keras.ops.convert_to_numpy(w))))
                              for w in model.trainable_weights)
    assert total == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_grayscale_no_weight_decay_and_synchronized_bn(family):
    # One build checks the three options (builds dominate the time of these tests).
    name, sync = networks.representative(family), family in OWN_FAMILIES
    gray = INPUT[:2] + (1,)  # Fashion-MNIST
    model = networks.build(name, NUM_CLASSES, gray, aux_heads=False, weight_decay=0.0,
                           synchronized_bn=sync)
    assert tuple(model(np.zeros((1,) + gray, "float32"))["logits"].shape) == (1, NUM_CLASSES)
    assert len(model.losses) == 0
    # Keras refuses synchronized BN on other backends, so our layers ask for it only on TF.
    on_tf = sync and keras.backend.backend() == "tensorflow"
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(bn.synchronized == on_tf for bn in bns)
    if sync:
        assert model.get_config()["synchronized_bn"] is True
    else:
        with pytest.raises(ValueError, match="synchronized_bn"):
            networks.build(name, NUM_CLASSES, INPUT, synchronized_bn=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("num_classes", [1, 0, -3, 10.0, True, "10"])
def test_bad_num_classes(family, num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        networks.build(networks.representative(family), num_classes=num_classes)


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_input_shape(family):
    with pytest.raises(ValueError, match="input_shape"):
        networks.build(networks.representative(family), num_classes=10, input_shape=(32, 32))

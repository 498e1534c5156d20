"""The registry and the contract every registered family honours (one small member of each family)."""

import json

import keras
import numpy as np
import pytest

from dcm_keras import networks
from dcm_keras.networks.common import BN_EPSILON, BN_MOMENTUM

# One small, fast member of each family; the ImageNet ResNets take any input size.
SMALL = {
    "wrn_10_1": (16, 16, 3),
    "resnet20": (16, 16, 3),
    "mobilenet": (16, 16, 3),
    "resnet18": (32, 32, 3),
}
NUM_CLASSES = 10
KEYS = ["aux1", "aux2", "logits"]


@pytest.fixture(scope="module")
def built():
    """Builds each (name, aux_heads) once per module; tests must not rely on untouched weights."""
    cache = {}

    def get(name: str, aux_heads: bool = True) -> keras.Model:
        if (name, aux_heads) not in cache:
            cache[name, aux_heads] = networks.build(
                name, NUM_CLASSES, SMALL[name], aux_heads=aux_heads)
        return cache[name, aux_heads]

    return get


def _images(name: str, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch,) + SMALL[name]).astype("float32")


def _outputs(model: keras.Model, x: np.ndarray) -> dict:
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(x, training=False).items()}


# --- registry -------------------------------------------------------------------------------

def test_list_networks_has_every_family():
    names = networks.list_networks()
    for expected in ["mobilenet", "resnet20", "resnet32", "resnet56", "resnet110", "resnet18",
                     "resnet34", "resnet50", "wrn_D_K"]:
        assert expected in names


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        networks.build("resnet21", num_classes=10)
    message = str(info.value)
    assert "resnet21" in message
    for expected in ["mobilenet", "wrn_D_K", "resnet56", "resnet50"]:
        assert expected in message


def test_name_must_be_a_string():
    with pytest.raises(TypeError):
        networks.build(56, num_classes=10)


@pytest.mark.parametrize("name", ["wrn_15_2", "wrn_6_2", "wrn_28_0"])
def test_bad_wrn_depth_or_width(name):
    with pytest.raises(ValueError, match="WRN"):
        networks.build(name, num_classes=10)


@pytest.mark.parametrize("name", ["wrn_10_1", "resnet20", "mobilenet", "resnet18"])
@pytest.mark.parametrize("num_classes", [1, 0, -3, 10.0, True, "10"])
def test_bad_num_classes(name, num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        networks.build(name, num_classes=num_classes)


@pytest.mark.parametrize("name", ["wrn_10_1", "resnet20", "mobilenet", "resnet18"])
def test_bad_input_shape(name):
    with pytest.raises(ValueError, match="input_shape"):
        networks.build(name, num_classes=10, input_shape=(32, 32))


def test_negative_weight_decay_rejected():
    with pytest.raises(ValueError, match="weight_decay"):
        networks.build("resnet20", num_classes=10, weight_decay=-1e-4)


# --- the contract, per family ---------------------------------------------------------------

@pytest.mark.parametrize("name", list(SMALL))
def test_output_keys_order_and_shapes(built, name):
    for aux_heads, keys in [(True, KEYS), (False, ["logits"])]:
        model = built(name, aux_heads)
        assert list(model.output.keys()) == keys
        out = model(_images(name, batch=3), training=False)
        assert list(out.keys()) == keys
        for key in keys:
            assert tuple(out[key].shape) == (3, NUM_CLASSES)


@pytest.mark.parametrize("name", list(SMALL))
def test_main_path_names_do_not_depend_on_heads(built, name):
    with_heads, without = built(name, True), built(name, False)
    names_with = {layer.name for layer in with_heads.layers}
    names_without = {layer.name for layer in without.layers}
    assert names_without <= names_with
    extra = names_with - names_without
    assert extra and all(n.startswith(("aux1", "aux2")) for n in extra)
    for layer in without.layers:
        other = with_heads.get_layer(layer.name)
        assert [tuple(w.shape) for w in layer.weights] == [tuple(w.shape) for w in other.weights]


@pytest.mark.parametrize("name", list(SMALL))
def test_transfer_weights_gives_identical_logits(built, name):
    with_heads, without = built(name, True), built(name, False)
    x = _images(name, seed=1)
    before = _outputs(without, x)["logits"]
    reference = _outputs(with_heads, x)["logits"]
    assert not np.allclose(before, reference)  # independent initialisations
    copied = networks.transfer_weights(with_heads, without)
    assert copied == sum(1 for layer in without.layers if layer.weights)
    np.testing.assert_allclose(_outputs(without, x)["logits"], reference, rtol=1e-5, atol=1e-5)


def test_transfer_weights_refuses_partial_copy(built):
    with pytest.raises(ValueError, match="no counterpart"):
        networks.transfer_weights(built("resnet20", False), built("resnet20", True))


@pytest.mark.parametrize("name", list(SMALL))
def test_config_round_trip(built, name):
    model = built(name, True)
    config = json.loads(json.dumps(model.get_config()))  # must survive JSON, as in .keras files
    clone = type(model).from_config(config)
    assert type(clone) is type(model)
    assert clone.get_config() == model.get_config()
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert ([tuple(w.shape) for w in clone.weights] == [tuple(w.shape) for w in model.weights])


@pytest.mark.parametrize("name", list(SMALL))
def test_keras_file_round_trip(built, name, tmp_path):
    model = built(name, True)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    x = _images(name, seed=2)
    expected, got = _outputs(model, x), _outputs(loaded, x)
    assert list(got) == KEYS
    for key in KEYS:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(SMALL))
def test_layer_conventions(built, name):
    model = built(name, True)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns
    for bn in bns:
        assert bn.momentum == BN_MOMENTUM and bn.epsilon == BN_EPSILON and not bn.synchronized
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


@pytest.mark.parametrize("name", list(SMALL))
def test_coupled_weight_decay_on_every_trainable_weight(built, name):
    model = built(name, True)
    losses = model.losses
    assert len(losses) == len(model.trainable_weights)
    # L2(wd / 2) on every weight: the gradient is wd * w, PyTorch's coupled weight decay.
    total = sum(float(keras.ops.convert_to_numpy(l)) for l in losses)
    expected = 5e-4 / 2 * sum(float(np.sum(np.square(keras.ops.convert_to_numpy(w))))
                              for w in model.trainable_weights)
    assert total == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("name", ["wrn_10_1", "resnet20", "mobilenet"])
def test_no_weight_decay_means_no_losses(name):
    model = networks.build(name, NUM_CLASSES, SMALL[name], aux_heads=False, weight_decay=0.0)
    assert len(model.losses) == 0


@pytest.mark.parametrize("name", ["wrn_10_1", "resnet20", "mobilenet", "resnet18"])
def test_synchronized_bn(name):
    model = networks.build(name, NUM_CLASSES, SMALL[name], aux_heads=False, synchronized_bn=True)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(bn.synchronized for bn in bns)
    assert model.get_config()["synchronized_bn"] is True

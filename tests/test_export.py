"""Deployable networks: export parity, `.keras` files and SavedModels."""

import os
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

import dcm_keras
from backend_helpers import to_numpy
from dcm_keras import DCM, networks

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)

IMAGE = (8, 8, 3)
CLASSES = 10


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.fixture(scope="module")
def dcm():
    """Two small WRNs (one with a non-default width) with perturbed BN statistics.

    Tests only read from it.
    """
    keras.utils.set_random_seed(0)
    nets = [networks.build("wrn_10_1", CLASSES, input_shape=IMAGE),
            networks.build("wrn_10_2", CLASSES, input_shape=IMAGE)]
    model = DCM(nets)
    rng = np.random.default_rng(0)
    # Non-trivial BN statistics, so a mode mix-up (training vs inference) would show.
    for net in nets:
        for layer in net.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
                layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).normal(size=(4,) + IMAGE).astype("float32")


@pytest.mark.parametrize("which,name,index", [(0, "wrn_10_1", 0), ("net2", "wrn_10_2", 1)])
def test_export_matches_dcm_head_and_plain_network(dcm, images, which, name, index):
    exported = dcm.export_network(which)
    assert not isinstance(exported.output, dict)
    # One image tensor in (not a one-element list), as the network itself takes.
    assert not isinstance(exported.input, (list, tuple, dict))
    expected = to_numpy(dcm(images, training=False)[f"net{index + 1}_logits"])
    got = to_numpy(exported(images, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    # Same parameters as the network built without heads, and the same function once its
    # weights are copied over.
    plain = networks.build(name, CLASSES, input_shape=IMAGE, aux_heads=False)
    assert trainable_count(exported) == trainable_count(plain)
    assert trainable_count(exported) < trainable_count(dcm.networks[index])
    networks.transfer_weights(dcm.networks[index], plain)
    np.testing.assert_allclose(to_numpy(plain(images, training=False)["logits"]), expected,
                               atol=1e-6, rtol=0)


def test_export_shares_weights(dcm):
    exported = dcm.export_network(0)
    ids = {id(w) for w in dcm.networks[0].weights}
    assert exported.weights and all(id(w) in ids for w in exported.weights)


def test_bad_network_index_lists_valid_names(dcm):
    for bad in (2, -1, "net3", "wrn_10_1"):
        with pytest.raises(ValueError, match=r"Unknown network .*net1, net2"):
            dcm.export_network(bad)


def test_export_other_head_and_unknown_head(dcm, images):
    aux = dcm_keras.export_network(dcm.networks[0], head="aux2")
    np.testing.assert_allclose(to_numpy(aux(images, training=False)),
                               to_numpy(dcm(images, training=False)["net1_aux2"]), atol=1e-6)
    with pytest.raises(ValueError, match="has no head 'aux3'.*aux1, aux2, logits"):
        dcm_keras.export_network(dcm.networks[0], head="aux3")


def test_save_and_load_network(dcm, images, tmp_path):
    exported = dcm.export_network(0)
    path = str(tmp_path / "net1.keras")
    assert dcm_keras.save_network(exported, path) == path
    loaded = dcm_keras.load_network(path)
    # The file holds Keras's own BatchNormalization (see the next test): the same function,
    # computed without TensorFlow's fused kernel, so equal up to float rounding.
    np.testing.assert_allclose(to_numpy(loaded(images, training=False)),
                               to_numpy(exported(images, training=False)), atol=1e-5, rtol=0)
    assert trainable_count(loaded) == trainable_count(exported)

    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        dcm_keras.save_network(exported, path)
    dcm_keras.save_network(exported, path, overwrite=True)  # explicit overwrite works
    with pytest.raises(ValueError, match=r"must end in \.keras"):
        dcm_keras.save_network(exported, str(tmp_path / "net1.h5"))


def test_save_network_replaces_a_link_and_leaves_no_temporary(dcm, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    link = tmp_path / "net1.keras"
    link.symlink_to(victim)
    with pytest.raises(FileExistsError):  # a dangling or live link counts as a file
        dcm_keras.save_network(dcm.export_network(0), str(link))
    dcm_keras.save_network(dcm.export_network(0), str(link), overwrite=True)
    assert victim.read_text() == "keep" and not link.is_symlink()
    assert dcm_keras.load_network(str(link)).count_params() == dcm.export_network(0).count_params()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net1.keras", "victim.txt"]


def test_save_network_to_a_missing_folder_names_the_users_path(dcm, tmp_path):
    path = tmp_path / "no" / "such" / "net1.keras"
    with pytest.raises(FileNotFoundError) as caught:
        dcm_keras.save_network(dcm.export_network(0), str(path))
    assert str(caught.value) == f"Cannot save {path}: there is no folder {path.parent}."
    assert ".tmp" not in str(caught.value) and not (tmp_path / "no").exists()


def test_load_network_rejects_bad_files(dcm, tmp_path):
    good = str(tmp_path / "good.keras")
    dcm_keras.save_network(dcm.export_network(0), good)
    data = open(good, "rb").read()

    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.keras is not a .keras model file"):
        dcm_keras.load_network(str(truncated))

    text = tmp_path / "notes.keras"
    text.write_text("just some text, renamed\n")
    with pytest.raises(ValueError, match="notes.keras is not a .keras model file"):
        dcm_keras.load_network(str(text))

    foreign = tmp_path / "foreign.keras"
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("readme.txt", "a zip, but not a Keras model")
    with pytest.raises(ValueError, match="no config.json"):
        dcm_keras.load_network(str(foreign))

    with pytest.raises(FileNotFoundError, match="No model file"):
        dcm_keras.load_network(str(tmp_path / "missing.keras"))


def test_load_network_rejects_corrupt_member(dcm, tmp_path):
    """A zip whose central directory is intact but a member's bytes are damaged."""
    good = str(tmp_path / "good.keras")
    dcm_keras.save_network(dcm.export_network(0), good)
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo("model.weights.h5")
    data = bytearray(open(good, "rb").read())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.compress_size // 2] ^= 0xFF
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        dcm_keras.load_network(str(corrupt))


@pytest.mark.requires_tensorflow("SavedModel export")
def test_export_saved_model(dcm, images, tmp_path):
    import tensorflow as tf

    exported = dcm.export_network(1)
    path = str(tmp_path / "saved")
    assert dcm_keras.export_saved_model(exported, path) == path
    reloaded = tf.saved_model.load(path)
    served = reloaded.serve(tf.constant(images)).numpy()
    np.testing.assert_allclose(served, to_numpy(exported(images, training=False)), atol=1e-5,
                               rtol=0)
    np.testing.assert_allclose(served, to_numpy(dcm(images, training=False)["net2_logits"]),
                               atol=1e-5, rtol=0)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        dcm_keras.export_saved_model(exported, path)
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))


def test_export_saved_model_needs_tensorflow(dcm, tmp_path):
    """Under any other backend SavedModel export fails clearly, before writing anything."""
    if keras.backend.backend() == "tensorflow":
        pytest.skip("SavedModel export works under TensorFlow (test_export_saved_model)")
    path = tmp_path / "saved"
    with pytest.raises(RuntimeError, match=r"needs the TensorFlow backend \(current backend: "):
        dcm_keras.export_saved_model(dcm.export_network(0), str(path))
    assert not path.exists()


@pytest.mark.large  # loads the file in a fresh Python process
def test_saved_network_loads_without_dcm_keras(dcm, images, tmp_path):
    """Production code loads an exported file with Keras alone: no dcm_keras class inside."""
    path = str(tmp_path / "net2.keras")
    exported = dcm.export_network(1)
    dcm_keras.save_network(exported, path)
    with zipfile.ZipFile(path) as archive:
        config = archive.read("config.json").decode()
    assert "dcm_keras" not in config
    assert [w.shape for w in exported.weights] == [
        w.shape for w in dcm_keras.load_network(path).weights]
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import sys
        import keras, numpy as np
        model = keras.saving.load_model({path!r}, safe_mode=True)
        assert not any(name.startswith("dcm_keras") for name in sys.modules)
        np.save({str(tmp_path / "out.npy")!r},
                keras.ops.convert_to_numpy(model(np.load({str(tmp_path / "images.npy")!r}),
                                                 training=False)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                               to_numpy(exported(images, training=False)), atol=1e-5, rtol=0)


def test_stock_layers_keeps_other_models(dcm):
    from dcm_keras.export import stock_layers

    assert stock_layers(dcm) is dcm  # DCM itself keeps its classes
    assert stock_layers(dcm.networks[0]) is dcm.networks[0]  # a registered network class
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert stock_layers(plain) is plain


@pytest.mark.parametrize("bn_kwargs,shape", [
    ({"scale": False}, (6, 6, 4)),  # no gamma
    ({"center": False, "scale": False}, (6, 6, 4)),  # neither gamma nor beta
    ({"axis": 1}, (4, 6, 6)),  # channels first
    ({"axis": 1, "scale": False}, (4, 6, 6)),
])
def test_save_network_swaps_any_batch_normalization_for_keras_own(bn_kwargs, shape, tmp_path):
    from dcm_keras.networks.common import BatchNormalization

    keras.utils.set_random_seed(5)
    inputs = keras.Input(shape)
    bn = BatchNormalization(name="bn", **bn_kwargs)
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(bn(inputs)))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    bn.moving_mean.assign(rng.normal(0, 0.5, bn.moving_mean.shape))
    bn.moving_variance.assign(rng.uniform(0.5, 1.5, bn.moving_variance.shape))
    if bn.center:
        bn.beta.assign(rng.normal(0, 0.5, bn.beta.shape))
    path = dcm_keras.save_network(model, str(tmp_path / "bn.keras"))
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("bn")) is keras.layers.BatchNormalization
    x = rng.normal(size=(2,) + shape).astype("float32")
    np.testing.assert_allclose(to_numpy(loaded(x, training=False)),
                               to_numpy(model(x, training=False)), atol=1e-6, rtol=0)


def test_network_config_names_input_shape_as_its_constructor(tmp_path):
    net = networks.build("wrn_10_1", CLASSES, input_shape=IMAGE)
    config = net.get_config()
    assert config["input_shape"] == IMAGE and "image_shape" not in config
    assert net.image_shape == IMAGE == tuple(net.input_shape[1:])  # the older name still reads
    # A config as every saved file holds it (JSON: a list) loads.
    old = {**config, "input_shape": list(IMAGE)}
    assert tuple(type(net).from_config(old).input_shape[1:]) == IMAGE
    path = dcm_keras.save_network(net, str(tmp_path / "net.keras"))
    assert dcm_keras.load_network(path).image_shape == IMAGE


# --- convert_network: TFLite / ONNX / SavedModel files checked before they take their name ---

def test_convert_network_refuses_bad_arguments(dcm, tmp_path):
    from dcm_keras.export import convert_network

    net = dcm.export_network(0)
    with pytest.raises(ValueError, match=r"Unknown format 'tfjs'; valid: tflite, onnx, "
                                         r"saved_model\."):
        convert_network(net, str(tmp_path / "net1.tfjs"), "tfjs")
    with pytest.raises(ValueError, match=r"A tflite file must end in \.tflite, got '.*net1\.onnx'"):
        convert_network(net, str(tmp_path / "net1.onnx"), "tflite")
    (tmp_path / "net1.onnx").write_text("keep")
    with pytest.raises(FileExistsError, match="net1.onnx already exists; refusing to overwrite"):
        convert_network(net, str(tmp_path / "net1.onnx"), "onnx")
    with pytest.raises(FileNotFoundError, match="there is no folder"):
        convert_network(net, str(tmp_path / "no" / "net1.onnx"), "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net1.onnx"]
    assert (tmp_path / "net1.onnx").read_text() == "keep"


@pytest.mark.requires_tensorflow("TFLite conversion")
def test_a_conversion_that_computes_other_logits_is_not_kept(dcm, tmp_path, monkeypatch):
    from dcm_keras import export

    net = dcm.export_network(0)
    real = export._RUNNERS["tflite"]
    monkeypatch.setitem(export._RUNNERS, "tflite", lambda path, x: real(path, x) * 1.01)
    with pytest.raises(ValueError, match=r"The tflite conversion of 'wrn_10_1' computes other "
                                         r"logits than Keras: off by 0\.01 .*nothing written"):
        export.convert_network(net, str(tmp_path / "net1.tflite"), "tflite")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.requires_tensorflow("SavedModel export")
def test_convert_network_to_saved_model_replaces_only_when_asked(dcm, images, tmp_path):
    import tensorflow as tf

    from dcm_keras.export import convert_network

    net = dcm.export_network(1)
    path = tmp_path / "net2_saved_model"
    done = convert_network(net, str(path), "saved_model")
    assert done.difference <= 1e-4 and (path / "saved_model.pb").is_file()
    with pytest.raises(FileExistsError):
        convert_network(net, str(path), "saved_model")
    (path / "stale.txt").write_text("from the folder this replaces")
    convert_network(net, str(path), "saved_model", overwrite=True)
    assert not (path / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporaries
    reloaded = tf.saved_model.load(str(path))  # keep a reference while calling it
    served = reloaded.serve(tf.constant(images)).numpy()
    np.testing.assert_allclose(served, to_numpy(net(images, training=False)), atol=1e-5, rtol=0)

"""Shipped networks: raw-pixel input contract, float32 exports, TFLite and ONNX conversion."""

import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import dcm_keras
from backend_helpers import to_numpy
from dcm_keras import DCM, networks
from dcm_keras.data import DatasetInfo

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)

IMAGE = (8, 8, 3)
INFO = DatasetInfo(name="toy", num_classes=10, image_shape=IMAGE, num_train=16, num_test=16,
                   mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26),
                   class_names=("T-shirt/top", "a.b", "zwölf", "x>y", "5", "6", "7", "8", "9",
                                "10"))


def _trained(policy):
    """A DCM pair trained two steps under `policy` (then the global policy is float32 again)."""
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(policy)
    try:
        nets = [networks.build("wrn_10_1", 10, input_shape=IMAGE) for _ in range(2)]
        dcm = DCM(nets)
        dcm.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        x, y = _normalised(_pixels(16)), np.arange(16, dtype="int32") % 10
        dcm.fit(x, y, batch_size=8, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return dcm


def _pixels(n, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n,) + IMAGE).astype("uint8")


def _normalised(pixels):
    return ((pixels.astype("float32") / 255 - np.float32(INFO.mean))
            / np.float32(INFO.std)).astype("float32")


# Trained under mixed_bfloat16 too in `make test`; `make test-fast` checks the float32 pair.
@pytest.fixture(scope="module",
                params=["float32", pytest.param("mixed_bfloat16", marks=pytest.mark.large)])
def trained(request):
    return request.param, _trained(request.param)


def _policies(model):
    return {layer.dtype_policy.name for layer in model._flatten_layers(include_self=False)}


def test_raw_pixel_export_matches_the_normalised_network(trained, tmp_path):
    policy, dcm = trained
    shipped = dcm.export_network(0, preprocessing=INFO)
    bare = dcm.export_network(0)
    assert _policies(shipped) == _policies(bare) == {"float32"}  # whatever the training policy
    pixels = _pixels(4)
    expected = to_numpy(bare(_normalised(pixels), training=False))
    np.testing.assert_allclose(to_numpy(shipped(pixels, training=False)), expected, rtol=1e-5,
                               atol=1e-5)
    if policy == "mixed_bfloat16":  # the float32 export is not the bf16 graph's arithmetic
        kept = dcm.export_network(0, precision="training")
        assert "mixed_bfloat16" in _policies(kept)
        assert not np.allclose(to_numpy(kept(_normalised(pixels))), expected, atol=1e-5)

    path = str(tmp_path / "net1.keras")
    dcm_keras.save_network(shipped, path)
    loaded = dcm_keras.load_network(path)
    contract = dcm_keras.input_contract(loaded)
    assert contract["class_names"] == list(INFO.class_names)
    assert contract["image_shape"] == list(IMAGE) and contract["resize"] is False
    np.testing.assert_allclose(contract["mean"], INFO.mean, rtol=1e-6)
    np.testing.assert_allclose(contract["std"], INFO.std, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(loaded(pixels, training=False)), expected, rtol=1e-4,
                               atol=1e-5)
    assert dcm_keras.input_contract(bare) is None


@pytest.mark.large  # loads the file in a fresh Python process
def test_contract_loads_without_dcm_keras(trained, tmp_path):
    """Keras alone loads the file, reads mean/std from it and maps raw uint8 pixels to logits."""
    _, dcm = trained
    path = str(tmp_path / "net2.keras")
    shipped = dcm.export_network("net2", preprocessing=INFO)
    dcm_keras.save_network(shipped, path)
    np.save(tmp_path / "pixels.npy", _pixels(4))
    script = textwrap.dedent(f"""
        import sys, keras, numpy as np
        model = keras.saving.load_model({path!r}, safe_mode=True)
        assert not any(name.startswith("dcm_keras") for name in sys.modules)
        normalize = model.get_layer("normalize")  # x * (1 / std) - mean / std
        std = 1 / np.asarray(normalize.scale)
        print((-np.asarray(normalize.offset) * std).tolist(), std.tolist())
        np.save({str(tmp_path / "out.npy")!r}, keras.ops.convert_to_numpy(
            model(np.load({str(tmp_path / "pixels.npy")!r}), training=False)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    mean, std = eval(result.stdout.strip().splitlines()[-1].replace("] [", "], ["))  # noqa: S307
    np.testing.assert_allclose(mean, INFO.mean, rtol=1e-6)
    np.testing.assert_allclose(std, INFO.std, rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                               to_numpy(shipped(_pixels(4), training=False)), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.requires_tensorflow("TFLite conversion")
def test_tflite_conversion_matches_keras(trained, tmp_path):
    import tensorflow as tf

    _, dcm = trained
    path = str(tmp_path / "net1.keras")
    dcm_keras.save_network(dcm.export_network(0, preprocessing=INFO), path)
    model = dcm_keras.load_network(path)
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    pixels = _pixels(4).astype("float32")
    runner = interpreter.get_signature_runner()
    (got,) = runner(**{interpreter.get_signature_list()["serving_default"]["inputs"][0]:
                       pixels}).values()
    expected = to_numpy(model(pixels, training=False))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_onnx_export_of_a_loaded_network(trained, tmp_path):
    # Keras converts through tf2onnx under TensorFlow and jax2onnx under JAX (the .[onnx] extra).
    pytest.importorskip("tf2onnx" if keras.backend.backend() == "tensorflow" else "jax2onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    _, dcm = trained
    path = str(tmp_path / "net1.keras")
    dcm_keras.save_network(dcm.export_network(0, preprocessing=INFO), path)
    model = dcm_keras.load_network(path)
    model.export(str(tmp_path / "net1.onnx"), format="onnx", verbose=False)  # never called
    session = onnxruntime.InferenceSession(str(tmp_path / "net1.onnx"))
    pixels = _pixels(4).astype("float32")
    (got,) = session.run(None, {session.get_inputs()[0].name: pixels})
    expected = to_numpy(model(pixels, training=False))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_bad_export_arguments(trained):
    _, dcm = trained
    with pytest.raises(ValueError, match=r"Unknown precision 'half'; valid: float32, training"):
        dcm.export_network(0, precision="half")
    bad = DatasetInfo(name="toy", num_classes=10, image_shape=IMAGE, num_train=1, num_test=1,
                      mean=(0.5, 0.5), std=(0.2, 0.2))
    with pytest.raises(ValueError, match=r"mean and std need 1 or 3 values"):
        dcm.export_network(0, preprocessing=bad)
    other = DatasetInfo(name="toy", num_classes=10, image_shape=(28, 28, 1), num_train=1,
                        num_test=1, mean=(0.5,), std=(0.2,))
    with pytest.raises(ValueError, match=r"takes images of shape \(8, 8, 3\), not \(28, 28, 1\)"):
        dcm.export_network(0, preprocessing=other)


@pytest.mark.requires_tensorflow("TFLite conversion")
def test_image_folder_export_without_resize_converts_to_tflite(trained):
    """The antialiased resize of an image-folder export has no TFLite op; resize=False does."""
    import dataclasses

    import tensorflow as tf

    _, dcm = trained
    folder = dataclasses.replace(INFO, name="image_folder:/photos")
    assert "resize" in [layer.name for layer in dcm.export_network(0, preprocessing=folder).layers]
    model = dcm.export_network(0, preprocessing=folder, resize=False)
    assert "resize" not in [layer.name for layer in model.layers]
    assert tuple(model.input_shape) == (None,) + IMAGE
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    runner = interpreter.get_signature_runner()
    pixels = _pixels(4).astype("float32")
    (got,) = runner(**{interpreter.get_signature_list()["serving_default"]["inputs"][0]:
                       pixels}).values()
    expected = to_numpy(model(pixels, training=False))
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


# --- image folders: the fixed-size form, and conversions checked against Keras --------------

@pytest.fixture(scope="module")
def folder_network():
    """An (untrained) network as an image-folder run ships it: raw pixels of any size in."""
    import dataclasses

    keras.utils.set_random_seed(0)
    net = networks.build("wrn_10_1", 10, input_shape=IMAGE)
    folder = dataclasses.replace(INFO, name="image_folder:/photos")
    return dcm_keras.export_network(net, preprocessing=folder)


def test_fixed_size_form_is_the_shipped_network_after_its_resize(folder_network):
    from dcm_keras.shipping import fixed_size

    fixed = fixed_size(folder_network)
    assert tuple(fixed.input_shape) == (None,) + IMAGE
    assert tuple(folder_network.input_shape) == (None, None, None, 3)
    assert "resize" not in [layer.name for layer in fixed.layers]
    full_contract = dcm_keras.input_contract(folder_network)
    assert full_contract["resize"] is True
    assert dcm_keras.input_contract(fixed) == {**full_contract, "resize": False}
    # The same layers, not copies: one set of weights.
    assert [id(w) for w in fixed.weights] == [id(w) for w in folder_network.weights]
    # At the training size the in-model resize is the identity, so the two forms agree.
    pixels = _pixels(4)
    np.testing.assert_allclose(to_numpy(fixed(pixels, training=False)),
                               to_numpy(folder_network(pixels, training=False)), rtol=1e-5,
                               atol=1e-5)
    assert fixed_size(fixed) is fixed  # nothing left to cut
    bare = folder_network.layers[-1]
    assert fixed_size(bare) is bare


def test_a_resizing_network_infers_when_called_without_training(folder_network, tmp_path):
    """Keras's Resizing defaults to training=True and hands it on: the network's BN must not."""
    path = str(tmp_path / "net1.keras")
    dcm_keras.save_network(folder_network, path)
    pixels = _pixels(4).astype("float32")
    for model in (folder_network, dcm_keras.load_network(path)):
        # (Without it, this call would also move the fixture's BN statistics.)
        np.testing.assert_allclose(to_numpy(model(pixels)),
                                   to_numpy(model(pixels, training=False)), rtol=1e-6, atol=1e-6)


def _as_shipped_before(model):
    """`model` as image-folder files were written before "resize" recorded training=False."""
    pixels = keras.Input((None, None, 3), name="pixels")
    x = keras.layers.Resizing(*IMAGE[:2], antialias=True, name="resize")(pixels)
    for layer in model.layers[model.layers.index(model.get_layer("resize")) + 1:]:
        x = layer(x)
    return keras.Model(pixels, x, name=model.name)


@pytest.mark.requires_tensorflow("SavedModel export")
@pytest.mark.parametrize("written", ["now", "before"])
def test_a_resizing_network_converts_to_a_saved_model(folder_network, written, tmp_path):
    import tensorflow as tf

    from dcm_keras.export import convert_network

    model = folder_network if written == "now" else _as_shipped_before(folder_network)
    pixels = np.random.default_rng(2).integers(0, 256, (3, 13, 11, 3)).astype("float32")
    expected = to_numpy(folder_network(pixels, training=False))
    path = tmp_path / "net1_saved_model"
    assert convert_network(model, str(path), "saved_model").difference <= 1e-4
    served = tf.saved_model.load(str(path))
    np.testing.assert_allclose(served.serve(pixels).numpy(), expected, rtol=1e-4, atol=1e-4)


def _run_converted(path, format, pixels):
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path))
        return session.run(None, {session.get_inputs()[0].name: pixels})[0]
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    return next(iter(runner(**{name: pixels}).values()))


def _needs(format):
    if format == "onnx":
        pytest.importorskip("tf2onnx")  # pip install -e '.[onnx]'
        pytest.importorskip("onnxruntime")


@pytest.mark.requires_tensorflow("TFLite conversion, ONNX through tf2onnx")
def test_shipping_convert_block(folder_network, tmp_path, monkeypatch):
    """docs/shipping.md's conversion block, on an image-folder network as a run ships it."""
    import re

    _needs("onnx")
    guide = (pathlib.Path(__file__).parents[1] / "docs" / "shipping.md").read_text()
    (block,) = re.findall(r"<!-- run by: tests/test_shipping.py::test_shipping_convert_block -->"
                          r"\n```python\n(.*?)^```", guide, re.S | re.M)
    (tmp_path / "runs" / "photos").mkdir(parents=True)
    dcm_keras.save_network(folder_network, str(tmp_path / "runs" / "photos" / "net1.keras"))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(block, namespace)  # noqa: S102 - our own guide
    assert tuple(namespace["fixed"].input_shape) == (None,) + IMAGE
    assert namespace["done"].difference <= 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net1.onnx", "net1.tflite", "runs"]
    pixels = _pixels(6, seed=5).astype("float32")  # other images than the check's
    expected = to_numpy(folder_network(pixels, training=False))  # the shipped form itself
    for format in ("tflite", "onnx"):
        got = _run_converted(tmp_path / f"net1.{format}", format, pixels)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), format


@pytest.mark.requires_tensorflow("TFLite conversion, ONNX through tf2onnx")
@pytest.mark.parametrize("format", ["tflite", "onnx"])
def test_a_conversion_that_fails_leaves_no_file_and_names_the_op(folder_network, format,
                                                                 tmp_path):
    from dcm_keras.export import convert_network

    _needs(format)
    with pytest.raises(dcm_keras.UserError,
                       match=rf"Cannot convert 'wrn_10_1' to {format}: {format} lacks the "
                             r"TensorFlow op ScaleAndTranslate; nothing written\. .*"
                             r"fixed_size\(model\), which takes images already resized to 8x8"):
        convert_network(folder_network, str(tmp_path / f"net1.{format}"), format)
    assert list(tmp_path.iterdir()) == []

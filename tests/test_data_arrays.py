"""Tests for dcm_keras.data's NumPy pipeline (`ArrayDataset`, `load_arrays`), on any backend."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from dcm_keras import data

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)

FASHION_DIR = data.FASHION_MNIST_DEBIAN_DIR
HAVE_FASHION = os.path.isfile(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="Debian dataset-fashion-mnist missing")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dataset(n=40, size=6, channels=2, **kwargs) -> data.ArrayDataset:
    """Random images whose label is their index, so a batch tells which examples it holds."""
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, channels), np.uint8)
    args = dict(batch_size=8, training=True, mean=(0.5,) * channels, std=(0.25,) * channels,
                pad=2, seed=7)
    return data.ArrayDataset(images, np.arange(n), **{**args, **kwargs}), images


def _pixels(batch, mean=0.5, std=0.25):
    """Undoes the normalisation: the uint8 pixels a batch was made from."""
    return np.round((batch * std + mean) * 255).astype(np.int64)


def test_training_batches_are_crops_and_flips_of_the_padded_images():
    ds, images = _dataset()
    size, pad = images.shape[1], 2
    padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)], mode="reflect")
    shifts, flips = set(), set()
    for b in range(len(ds)):
        x, y = ds[b]
        assert x.dtype == np.float32 and x.shape == (8, size, size, 2) and y.dtype == np.int32
        for image, label in zip(_pixels(x), y):
            candidates = [(top, left, flip) for top in range(2 * pad + 1)
                          for left in range(2 * pad + 1) for flip in (False, True)
                          if np.array_equal(image, (lambda c: c[:, ::-1] if flip else c)(
                              padded[label, top:top + size, left:left + size]))]
            assert candidates, f"example {label} is no crop of its padded image"
            shifts.add(candidates[0][:2])
            flips.add(candidates[0][2])
    assert len(shifts) > 5 and flips == {False, True}  # offsets and flips are really drawn


def test_evaluation_batches_are_the_images_in_order():
    ds, images = _dataset(n=21, training=False)
    assert len(ds) == 3  # keeps the remainder
    xs, ys = zip(*(ds[b] for b in range(len(ds))))
    np.testing.assert_array_equal(np.concatenate(ys), np.arange(21))
    np.testing.assert_array_equal(_pixels(np.concatenate(xs)), images)


def test_each_epoch_is_a_fresh_permutation_and_draws_are_keyed():
    ds, _ = _dataset(n=43)
    assert len(ds) == 5  # drops the 3 left over

    def epoch_labels(dataset):
        return np.concatenate([dataset[b][1] for b in range(len(dataset))])

    first = epoch_labels(ds)
    assert len(set(first.tolist())) == 40
    again = _dataset(n=43)[0]
    np.testing.assert_array_equal(epoch_labels(again), first)  # same seed: same epoch
    np.testing.assert_array_equal(ds[3][0], ds[3][0])  # a batch asked for twice is the same
    setter = ds.epoch_setter()
    setter.on_epoch_begin(0)
    np.testing.assert_array_equal(epoch_labels(ds), first)
    setter.on_epoch_begin(1)
    second = epoch_labels(ds)
    assert not np.array_equal(second, first)
    resumed = _dataset(n=43, epoch=1)[0]
    np.testing.assert_array_equal(epoch_labels(resumed), second)
    np.testing.assert_array_equal(resumed[0][0], ds[0][0])
    other_seed = _dataset(n=43, seed=8)[0]
    assert not np.array_equal(epoch_labels(other_seed), first)


@pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                    reason="on TensorFlow, train with data.load(); see ArrayDataset's docstring")
def test_fit_sees_one_epoch_of_draws_per_epoch():
    class Recording(data.ArrayDataset):
        seen = []

        def __getitem__(self, index):
            self.seen.append(self.epoch)
            return super().__getitem__(index)

    images = np.random.default_rng(0).integers(0, 256, (32, 4, 4, 1), np.uint8)
    ds = Recording(images, np.arange(32) % 3, batch_size=8, training=True, mean=(0.5,),
                   std=(0.25,), pad=1, seed=0, epoch=2)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(ds, epochs=5, initial_epoch=2, verbose=0, callbacks=[ds.epoch_setter()])
    # A resumed run (initial_epoch=2, dataset epoch=2) draws epochs 2, 3, 4, four batches each;
    # a first peek at a batch to learn the data's spec, if any, is still epoch 2.
    assert Recording.seen[-12:] == [2] * 4 + [3] * 4 + [4] * 4
    assert set(Recording.seen[:-12]) <= {2}


@needs_fashion
def test_fashion_mnist_evaluation_batches_equal_the_tf_data_ones():
    pytest.importorskip("tensorflow")
    arrays = data.load_arrays("fashion_mnist", "test", batch_size=128, max_examples=300)
    pipeline = data.load("fashion_mnist", "test", batch_size=128, max_examples=300)
    assert len(arrays) == 3
    for k, (x, y) in enumerate(pipeline):
        np.testing.assert_allclose(arrays[k][0], x.numpy(), atol=1e-6)
        np.testing.assert_array_equal(arrays[k][1], y.numpy())


@needs_fashion
def test_fashion_mnist_training_uses_the_tf_data_padding():
    ds = data.load_arrays("fashion_mnist", "train", batch_size=64, max_examples=256, seed=1)
    assert ds.pad == 2 and len(ds) == 4 and ds.images.shape == (256, 32, 32, 1)
    assert np.isclose(ds.mean[0], data.FASHION_MNIST_MEAN[0])
    x, y = ds[0]
    assert x.shape == (64, 28, 28, 1) and set(y.tolist()) <= set(range(10))


@pytest.mark.large
@needs_fashion
def test_without_tensorflow_fashion_mnist_loads_and_load_says_what_is_missing():
    # tensorflow blocked as if not installed (sys.modules[name] = None makes `import` fail).
    script = textwrap.dedent("""
        import sys
        sys.modules["tensorflow"] = None
        from dcm_keras import data
        ds = data.load_arrays("fashion_mnist", "train", batch_size=32, max_examples=64, seed=0)
        print("batches", len(ds), ds[1][0].shape)
        try:
            data.load("fashion_mnist", "train", batch_size=32)
        except RuntimeError as e:
            print("load:", e)
        try:
            data.load_arrays("cifar10", "train", batch_size=32)
        except RuntimeError as e:
            print("cifar:", e)
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "batches 2 (32, 28, 28, 1)" in result.stdout
    assert "load: load() builds tf.data pipelines and needs TensorFlow" in result.stdout
    assert "cifar: Reading cifar10 and needs TensorFlow" in result.stdout


def test_bad_input_is_named():
    images = np.zeros((10, 4, 4, 1), np.uint8)
    common = dict(batch_size=4, training=True, mean=(0.5,), std=(0.25,))
    with pytest.raises(ValueError, match="uint8"):
        data.ArrayDataset(images.astype(np.float32), np.arange(10), **common)
    with pytest.raises(ValueError, match="9 labels for 10 images"):
        data.ArrayDataset(images, np.arange(9), **common)
    with pytest.raises(ValueError, match="leaves no batch"):
        data.ArrayDataset(images, np.arange(10), **{**common, "batch_size": 11})
    with pytest.raises(IndexError):
        data.ArrayDataset(images, np.arange(10), **common)[2]
    with pytest.raises(ValueError, match="imagenet2012 does not fit in memory"):
        data.load_arrays("imagenet2012", "train", batch_size=8)
    with pytest.raises(ValueError, match="split must be"):
        data.load_arrays("fashion_mnist", "validation", batch_size=8)

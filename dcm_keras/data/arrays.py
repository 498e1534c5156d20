"""The NumPy pipeline: `load_arrays()` serves `load()`'s batches as a Keras `PyDataset`.

Same normalisation and the same pad / random crop / horizontal flip as `load()`, for any Keras
backend. It needs no TensorFlow for Fashion-MNIST's IDX files (the other in-memory datasets are
decoded through TensorFlow once); the JAX backend's runs of `experiments/train.py` use it. Its
random draws are its own (NumPy's), so its batches differ from `load()`'s for the same seed.
"""

from __future__ import annotations

import keras
import numpy as np

from dcm_keras.data.info import DatasetInfo
from dcm_keras.data.pipeline import check_load_args, fresh_seed
from dcm_keras.data.registry import lookup, source
from dcm_keras.errors import UserError


def _arrays(name: str, split: str, data_dir: str | None, image_size: int | None,
            max_examples: int | None, seed: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    """A split's uint8 images and int32 labels, decoded once, with the dataset's facts."""
    spec = lookup(name)
    if not spec.in_memory:
        raise UserError(f"{name} does not fit in memory; load_arrays() serves the in-memory "
                        "datasets (cifar10, cifar100, fashion_mnist, image folders): use load().")
    read = spec.reader.arrays(spec, name, split, data_dir, image_size, max_examples)
    if read is not None:  # no TensorFlow needed
        return read
    src = source(name, split, data_dir, image_size, max_examples, seed)
    ds = src.dataset.take(max_examples) if max_examples is not None else src.dataset
    images, labels = [], []
    for x, y in ds.batch(4096).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    shape = src.info.image_shape
    images = np.concatenate(images) if images else np.zeros((0, *shape), np.uint8)
    labels = np.concatenate(labels) if labels else np.zeros([0], np.int32)
    return images.astype(np.uint8), labels.astype(np.int32), src.info


class ArrayDataset(keras.utils.PyDataset):
    """Normalised (and, for training, shuffled and augmented) batches of in-memory uint8 images.

    A `keras.utils.PyDataset`, so `fit` consumes it on every backend. Training batches are a
    permutation of the examples per epoch, each example reflect-padded by `pad`, cropped back at a
    random offset and flipped left-right with probability 1/2, as `load()` does. Every draw is a
    pure function of `(seed, epoch, batch index)`: batch `i` of epoch `e` is the same however often
    and in whatever order it is asked for. Pass `epoch_setter()` to `fit` so that each epoch
    draws anew (`fit(ds, callbacks=[ds.epoch_setter()])`); a resumed run (`initial_epoch=e`) then
    sees the batches an uninterrupted run saw. For the JAX and PyTorch backends, whose `fit` asks
    for batches as it trains; on TensorFlow use `load()`, since Keras's tf.data wrapper of a
    PyDataset may fetch the next epoch's first batches before that epoch begins.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
                 training: bool, mean: tuple, std: tuple, pad: int = 0, seed: int = 0,
                 drop_remainder: bool | None = None, epoch: int = 0):
        super().__init__()
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise UserError(f"images must be uint8 (N, H, W, C), got {images.dtype} "
                            f"{images.shape}.")
        if labels.shape != images.shape[:1]:
            raise UserError(f"{len(labels)} labels for {len(images)} images.")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}.")
        self.labels = labels.astype(np.int32)
        self.batch_size, self.training, self.seed, self.epoch = batch_size, training, seed, epoch
        self._order_key, self._order = None, None  # the permutation of (seed, epoch), once drawn
        self.drop_remainder = training if drop_remainder is None else drop_remainder
        self.pad = pad if training else 0
        self.image_shape = images.shape[1:]
        # Padded once: a crop is then a single gather per batch.
        p = self.pad
        self.images = np.pad(images, [(0, 0), (p, p), (p, p), (0, 0)], mode="reflect") if p else images
        channels = self.image_shape[-1]
        self.mean = np.broadcast_to(np.asarray(mean, np.float32), [channels])
        self.std = np.broadcast_to(np.asarray(std, np.float32), [channels])
        n = len(self.labels)
        self._num_batches = n // batch_size if self.drop_remainder else -(-n // batch_size)
        if self._num_batches < 1:
            raise UserError(f"batch_size={batch_size} with drop_remainder leaves no batch of the "
                            f"{n} examples.")

    @property
    def num_batches(self) -> int:
        return self._num_batches

    def __len__(self) -> int:
        return self._num_batches

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed % 2**63, self.epoch, *key])

    def order(self) -> np.ndarray:
        """The example indices of the current epoch, in the order they are batched."""
        if not self.training:
            return np.arange(len(self.labels))
        # Drawn once per epoch: a 60k permutation costs more than the batch it would serve.
        key = (self.seed, self.epoch)
        if self._order_key != key:
            self._order = self._rng(0).permutation(len(self.labels))
            self._order_key = key
        return self._order

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} of {self.num_batches}")
        ids = self.order()[index * self.batch_size:(index + 1) * self.batch_size]
        h, w = self.image_shape[:2]
        if self.training:
            rng = self._rng(1, index)
            top = rng.integers(0, 2 * self.pad + 1, size=len(ids))
            left = rng.integers(0, 2 * self.pad + 1, size=len(ids))
            flip = rng.random(len(ids)) < 0.5
            rows = top[:, None] + np.arange(h)
            cols = np.where(flip[:, None], np.arange(w)[::-1], np.arange(w)) + left[:, None]
            images = self.images[ids[:, None, None], rows[:, :, None], cols[:, None, :]]
        else:
            images = self.images[ids]
        images = (images.astype(np.float32) / 255.0 - self.mean) / self.std
        return images, self.labels[ids]

    def epoch_setter(self) -> keras.callbacks.Callback:
        """A callback for `fit` that tells this dataset which epoch starts (pass it to `fit`).

        Keras's own PyDataset hooks do not count epochs reliably (`fit` also calls them while
        it builds the model), so the epoch comes from the callback's epoch index, which
        includes `initial_epoch`.
        """
        dataset = self

        class SetEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                dataset.epoch = int(epoch)

        return SetEpoch()


def load_arrays(name: str, split: str, *, batch_size: int, training: bool | None = None,
                data_dir: str | None = None, max_examples: int | None = None,
                seed: int | None = None, image_size: int | None = None,
                drop_remainder: bool | None = None, epoch: int = 0) -> ArrayDataset:
    """`load()`'s batches as an `ArrayDataset` (a Keras PyDataset) for any backend.

    Takes `load()`'s arguments (no `repeat`: `fit` re-iterates a PyDataset every epoch) and
    applies the same normalisation and augmentation. Fashion-MNIST from IDX files needs no
    TensorFlow; CIFAR and image folders are decoded through it once; ImageNet is not served.
    """
    check_load_args(split, batch_size, max_examples)
    training = split == "train" if training is None else training
    images, labels, info = _arrays(name, split, data_dir, image_size, max_examples, seed)
    spec = lookup(name)
    return ArrayDataset(images, labels, batch_size=batch_size, training=training,
                        mean=info.mean, std=info.std, pad=spec.pad_for(info),
                        seed=fresh_seed(seed), drop_remainder=drop_remainder, epoch=epoch)

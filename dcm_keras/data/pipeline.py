"""The tf.data pipeline: `load()` returns a batched `tf.data.Dataset` of `(images, labels)`.

Images are float32 `(B, H, W, C)` normalised per channel as `(x / 255 - mean) / std`, labels int32
`(B,)`. The decoded uint8 images are cached in memory before any random op (ImageNet excepted: it
caches nothing and decodes every epoch), so augmentation is redrawn every epoch while decoding
happens once.

Randomness and resuming
-----------------------
Every random choice is a pure function of `(seed, epoch, example index)`: each epoch's order is a
stateless permutation keyed by `(seed, epoch)`, and each example's crop/flip uses stateless ops
keyed by `(seed, epoch, index of the example in the source split)`. TensorFlow's global seed plays
no part. A training dataset counts the passes made over it: pass `k` (0-based) of `load(..., seed=s,
epoch=e)` is epoch `e + k`, whether the passes come from re-iterating the dataset (Keras `fit`
without `repeat`) or from `repeat=True`; each pass is batched on its own, so batches never straddle
epochs. A run resumed at epoch `e` therefore sees exactly the batches an uninterrupted run saw if it
calls `load(..., seed=s, epoch=e)`; checked with Keras 3.15 `fit(..., initial_epoch=e)`, both with
`repeat=False` and with `repeat=True, steps_per_epoch=<batches per epoch>`. (A consumer that opens
iterators it then throws away advances the count; build one dataset per epoch in that case.)
`seed=None` draws a fresh seed from the OS.
"""

from __future__ import annotations

import itertools
import random
import threading

import numpy as np

from dcm_keras.data._tf import AUTOTUNE, require_tensorflow, tf
from dcm_keras.data.augment import normalize
from dcm_keras.data.registry import source
from dcm_keras.errors import UserError


def _block_shuffle(ds: tf.data.Dataset, block: int, key: tf.Tensor) -> tf.data.Dataset:
    """Shuffles consecutive blocks of `block` elements, each by a permutation keyed by (key, block).

    With `block` >= the dataset size this is a uniform shuffle of the whole dataset. It replaces
    `Dataset.shuffle`, whose seed is combined with TensorFlow's global seed (and cannot be a tensor
    when that seed is 0), so the order depends on `key` alone.
    """
    def permute(b, items):
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(items[0])[0]), seed=tf.random.experimental.stateless_fold_in(key, b))
        return tf.data.Dataset.from_tensor_slices(tuple(tf.gather(t, perm) for t in items))

    return ds.batch(block).enumerate().flat_map(permute)


def _epoch_counter(first_epoch: int) -> tf.data.Dataset:
    """One-element dataset whose value is first_epoch, +1 for every fresh pass over it."""
    counter = itertools.count(first_epoch)
    lock = threading.Lock()

    def next_epoch():
        with lock:
            return np.int64(next(counter))

    # A Python counter rather than a tf.Variable: a variable made under a distribution strategy's
    # scope would become a distributed variable, which a tf.data function cannot assign.
    return tf.data.Dataset.from_tensors(np.int64(0)).map(
        lambda _: tf.ensure_shape(tf.py_function(next_epoch, [], tf.int64), []))


def check_load_args(split: str, batch_size: int, max_examples: int | None) -> None:
    """Refuses the arguments `load()` and `load_arrays()` share when they are out of range."""
    if split not in ("train", "test"):
        raise UserError(f"split must be 'train' or 'test', got {split!r}.")
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}.")
    if max_examples is not None and max_examples < 1:
        raise UserError(f"max_examples must be >= 1, got {max_examples}.")


def fresh_seed(seed: int | None) -> int:
    """`seed` as an int, or a fresh one from the OS when None."""
    return random.SystemRandom().getrandbits(62) if seed is None else int(seed)


def load(name: str, split: str, *, batch_size: int, training: bool | None = None,
         data_dir: str | None = None, max_examples: int | None = None, seed: int | None = None,
         image_size: int | None = None, drop_remainder: bool | None = None, repeat: bool = False,
         epoch: int = 0) -> tf.data.Dataset:
    """Batched `(images float32 normalised (B, H, W, C), labels int32 (B,))` for a dataset split.

    Args:
        name: one of DATASETS ("image_folder:/path" for a folder).
        split: "train" or "test".
        batch_size: global batch size.
        training: shuffle and augment; defaults to `split == "train"`.
        data_dir: tfds data dir, or a folder holding the Fashion-MNIST IDX files.
        max_examples: keep only N examples of the split (before shuffling): for image folders a
            stratified subset drawn with `seed` (0 when None; see `stratified_indices`), whose
            folders list examples class by class; for tfds sources and Fashion-MNIST the first
            N, as those splits are already stored in shuffled order.
        seed: makes shuffling and augmentation reproducible; None draws one at random.
        image_size: network input size for imagenet2012 (224) and image folders (32).
        drop_remainder: drop the last partial batch; defaults to `training`.
        repeat: repeat forever.
        epoch: epoch index of the first pass over the dataset (training only); later passes
            count up from it. Pass the epoch a resumed run starts at.
    """
    check_load_args(split, batch_size, max_examples)
    require_tensorflow("load() builds tf.data pipelines")
    training = split == "train" if training is None else training
    drop_remainder = training if drop_remainder is None else drop_remainder
    src = source(name, split, data_dir, image_size, max_examples, seed)
    mean, std, shape = src.info.mean, src.info.std, src.info.image_shape

    def finish(x, y):  # static shapes let Keras build the model from the dataset's spec
        return tf.ensure_shape(normalize(x, mean, std), shape), y

    ds = src.dataset
    if max_examples is not None:
        ds = ds.take(max_examples)
    # The index within the split keys each example's augmentation, independent of shuffle order.
    ds = ds.enumerate().map(lambda i, xy: (i, xy[0], xy[1]))
    if src.cache:
        ds = ds.cache()

    if training:
        key = tf.constant([fresh_seed(seed), 0], tf.int64)
        shuffle_key = tf.random.experimental.stateless_fold_in(key, 0)
        augment_key = tf.random.experimental.stateless_fold_in(key, 1)
        cached = ds  # `ds` is rebound below; the epoch function must see this stage

        def augment(e, i, x, y):
            example_key = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(augment_key, e), i)
            return finish(src.train_fn(x, example_key), y)

        def epoch_batches(e):
            order_key = tf.random.experimental.stateless_fold_in(shuffle_key, e)
            # Batching per epoch keeps batches from straddling epochs, so with repeat=True every
            # pass is exactly one epoch of whole batches (what resuming at an epoch relies on).
            return (_block_shuffle(cached, src.shuffle_block, order_key)
                    .map(lambda i, x, y: augment(e, i, x, y), num_parallel_calls=AUTOTUNE,
                         deterministic=True)
                    .batch(batch_size, drop_remainder=drop_remainder))

        # A repeated dataset counts epochs in the graph (no Python state, so it distributes and
        # serialises); a finite one is re-iterated by `fit` and counts its passes in Python.
        epochs = (tf.data.Dataset.counter(int(epoch)) if repeat
                  else _epoch_counter(int(epoch)))
        ds = epochs.flat_map(epoch_batches)
        if not repeat:
            # flat_map hides the length; stating it spares `fit` a first epoch of unknown size
            # and its "ran out of data" warning.
            n = src.info.num_train if split == "train" else src.info.num_test
            n = n if max_examples is None else min(n, max_examples)
            batches = n // batch_size if drop_remainder else -(-n // batch_size)
            ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    else:
        ds = ds.map(lambda i, x, y: finish(src.eval_fn(x), y),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(AUTOTUNE)

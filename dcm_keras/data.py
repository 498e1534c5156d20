"""Input pipelines for DCM training: CIFAR-10/100, Fashion-MNIST, ImageNet and image folders.

`load()` returns a batched `tf.data.Dataset` of `(images, labels)`: images float32 `(B, H, W, C)`
normalised per channel as `(x / 255 - mean) / std`, labels int32 `(B,)`. The decoded uint8 images
are cached in memory before any random op (ImageNet excepted, see below), so augmentation is redrawn
every epoch while decoding happens once.

`load_arrays()` returns the same batches' kind (same normalisation, same pad / random crop /
horizontal flip) as a `keras.utils.PyDataset` over NumPy arrays, for any Keras backend. It needs no
TensorFlow for Fashion-MNIST's IDX files (the other in-memory datasets are decoded through
TensorFlow once); the JAX backend's runs of `experiments/train.py` use it. Its random draws are its
own (NumPy's), so its batches differ from `load()`'s for the same seed.

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

CIFAR-10 / CIFAR-100 without internet
-------------------------------------
tfds builds CIFAR from the official *binary* tarballs. Its download manager (tfds 4.9.10,
`core/download/download_manager.py`) first looks for a file with the registered name in its manual
directory, `<data_dir>/downloads/manual/`, where `<data_dir>` is the `data_dir` passed here, else
`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`. If the file is there, nothing is downloaded: tfds
computes its size and sha256 and compares them with the checksums it ships
(`tensorflow_datasets/url_checksums/cifar10.txt`, `cifar100.txt`); a mismatch raises
`NonMatchingChecksumError`. Steps:

1. On a machine with internet, fetch `https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz`
   and/or `https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz` (the binary versions, not the
   python or Matlab ones).
2. Check them (`ls -l`, `md5sum`, `sha256sum`); expect:

   - `cifar-10-binary.tar.gz`: 170052171 bytes, md5 `c32a1d4ab5d03f1284b67883e8d87530`,
     sha256 `c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd`
   - `cifar-100-binary.tar.gz`: 168513733 bytes, md5 `03b5dce01913d631647c71ecec9e9cb8`,
     sha256 `58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec`

   (md5 as listed on the CIFAR page; size and sha256 are what tfds verifies.)
3. Copy them, keeping those exact file names, to `<data_dir>/downloads/manual/`, e.g.
   `mkdir -p ~/tensorflow_datasets/downloads/manual && cp cifar-100-binary.tar.gz $_/`.
4. Call `load("cifar100", ..., data_dir=<data_dir>)` once (or
   `tfds.builder("cifar100", data_dir=<data_dir>).download_and_prepare()`): tfds verifies the
   checksum, extracts to `<data_dir>/downloads/extracted/` and writes TFRecords under
   `<data_dir>/cifar100/3.0.2/`. The tarball and extracted files may be deleted afterwards.

tfds 4.9.10 needs the `importlib_resources` package to prepare datasets (etils imports it while
looking up the registered checksums); install it if preparation fails with `No module named
'importlib_resources'`.

ImageNet (ILSVRC 2012)
----------------------
Manual download only: place `ILSVRC2012_img_train.tar` and `ILSVRC2012_img_val.tar` (from
https://image-net.org after registering) in `<data_dir>/downloads/manual/`; the first `load()`
prepares the TFRecords (hours; ~150 GB of archives and as much again of TFRecords). Decoded ImageNet
does not fit in memory, so this pipeline caches nothing and decodes every epoch. It shuffles the
JPEG bytes within consecutive blocks of 10,000 examples (~1.1 GB) instead of over the whole split;
the split is read in file order, which tfds already shuffled when writing it, so examples still mix
across classes and epochs stay reproducible.

Fashion-MNIST
-------------
Read from gzipped (or plain) IDX files, looked up in `data_dir` (if it holds them), else
`$DCM_FASHION_MNIST_DIR`, else `/usr/share/datasets/fashion-mnist` (Debian `dataset-fashion-mnist`),
else tfds `fashion_mnist`.

Image folders
-------------
`image_folder:PATH` reads `PATH/train/<class>/*` and `PATH/test/<class>/*` (JPEG, PNG, also
BMP/GIF). All files are decoded, converted to RGB and resized to `image_size` once, when the dataset
is built, and any file that fails is reported by name; the images are then held in memory (N * S * S
* 3 bytes)."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import math
import os
import random
import threading
from typing import Callable

import keras
import numpy as np

try:  # `load_arrays` serves Fashion-MNIST's IDX files without TensorFlow (e.g. JAX-only machines)
    import tensorflow as tf
except ImportError:
    tf = None

AUTOTUNE = -1  # tf.data.AUTOTUNE's value, defined without importing TensorFlow

DATASETS: tuple = ("cifar10", "cifar100", "fashion_mnist", "imagenet2012", "image_folder:PATH")

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Computed from the 60,000 training images of the Debian package (pixel values / 255, over all
# pixels); tests/test_data.py recomputes them from the data.
FASHION_MNIST_MEAN = (0.2860406,)
FASHION_MNIST_STD = (0.3530242,)

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
IMAGENET_SHUFFLE_BLOCK = 10_000

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes -> big-endian numpy dtypes (the format stores multi-byte values big-endian).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset as the network sees it."""

    name: str
    num_classes: int
    image_shape: tuple  # (H, W, C) fed to the network
    num_train: int
    num_test: int
    mean: tuple  # per channel, in [0, 1] pixel units
    std: tuple
    class_names: tuple = ()  # image folders: the class folder names, in label order


# --------------------------------------------------------------------------------------------------
# IDX files (Fashion-MNIST)


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a numpy array with its native dtype and dims."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip reports truncation as EOFError
        raise ValueError(f"IDX file {path}: cannot read ({e}).") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"IDX file {path}: bad magic number {raw[:4].hex() or 'empty'} "
                         "(expected 0000<type><ndim>).")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"IDX file {path}: unknown data type code 0x{code:02x}.")
    if ndim == 0:
        raise ValueError(f"IDX file {path}: zero dimensions.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"IDX file {path}: truncated header ({len(raw)} bytes for {ndim} dims).")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"IDX file {path}: payload is {len(raw) - header} bytes, dims {dims} "
                         f"need {expected}.")
    array = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _find_idx(directory: str, stem: str) -> str | None:
    for suffix in (".gz", ""):
        path = os.path.join(directory, stem + suffix)
        if os.path.isfile(path):
            return path
    return None


def _fashion_mnist_dir(data_dir: str | None) -> str | None:
    """The directory holding the Fashion-MNIST IDX files, or None to fall back to tfds."""
    def has_all(d):
        return all(_find_idx(d, s) for pair in _FASHION_FILES.values() for s in pair)

    if data_dir and os.path.isdir(data_dir) and has_all(data_dir):
        return data_dir
    env = os.environ.get("DCM_FASHION_MNIST_DIR")
    if env:
        # An explicit setting that does not hold the files is a mistake, not a cue to fall back.
        if not has_all(env):
            raise ValueError(f"$DCM_FASHION_MNIST_DIR={env} does not hold the four Fashion-MNIST "
                             "IDX files (train-images-idx3-ubyte[.gz], ...).")
        return env
    if has_all(FASHION_MNIST_DEBIAN_DIR):
        return FASHION_MNIST_DEBIAN_DIR
    return None


def _fashion_mnist_arrays(split: str, directory: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _FASHION_FILES[split]
    image_path, label_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"IDX file {image_path}: expected uint8 (N, 28, 28) images, got "
                         f"{images.dtype} {images.shape}.")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"IDX file {label_path}: {labels.shape[0]} labels for "
                         f"{images.shape[0]} images.")
    bad = (labels < 0) | (labels >= 10)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"IDX file {label_path}: labels must lie in [0, 10); {int(bad.sum())} do "
                         f"not (the first: label {labels[i]} of example {i}).")
    return images[..., None], labels.astype(np.int32)


# --------------------------------------------------------------------------------------------------
# Image folders


def _parse_image_folder(name: str) -> str:
    path = name.split(":", 1)[1] if ":" in name else ""
    if not path:
        raise ValueError("image_folder needs a path: use 'image_folder:/path/to/root'.")
    return path


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _check_link(path: str, root: str) -> None:
    if os.path.islink(path) and not _inside(os.path.realpath(path), root):
        raise ValueError(f"image_folder: {path} is a symlink pointing outside {root}; refusing it.")


def _list_images(directory: str, root: str, seen: set) -> list[str]:
    """Image files under `directory`, recursively, sorted; symlinks must stay inside `root`."""
    real = os.path.realpath(directory)
    if real in seen:  # a symlink loop inside the tree
        return []
    seen.add(real)
    files = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        _check_link(entry.path, root)
        if entry.is_dir():
            files.extend(_list_images(entry.path, root, seen))
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            if not entry.is_file():
                raise ValueError(f"image_folder: {entry.path} is not a readable file.")
            files.append(entry.path)
    return files


def _scan_image_folder(path: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names and, per split, the (file, label) pairs of an image folder."""
    if not os.path.isdir(path):
        raise ValueError(f"image_folder: folder {path} does not exist.")
    root = os.path.realpath(path)
    split_dirs = {}
    for split in ("train", "test"):
        d = os.path.join(path, split)
        if os.path.lexists(d):
            _check_link(d, root)
        if not os.path.isdir(d):
            raise ValueError(f"image_folder: {path} has no {split}/ subfolder.")
        split_dirs[split] = d

    def class_dirs(d):
        out = {}
        for entry in os.scandir(d):
            if entry.name.startswith("."):
                continue
            _check_link(entry.path, root)
            if entry.is_dir():
                out[entry.name] = entry.path
        return out

    train_classes = class_dirs(split_dirs["train"])
    if not train_classes:
        raise ValueError(f"image_folder: {split_dirs['train']} has no class subfolders.")
    classes = sorted(train_classes)
    test_classes = class_dirs(split_dirs["test"])
    if set(test_classes) != set(classes):
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        raise ValueError(f"image_folder: test/ classes differ from train/ (missing in test: "
                         f"{missing}, not in train: {extra}).")
    examples = {}
    for split, dirs in (("train", train_classes), ("test", test_classes)):
        pairs = []
        for label, cls in enumerate(classes):
            files = _list_images(dirs[cls], root, set())
            if not files:
                raise ValueError(f"image_folder: class folder {dirs[cls]} holds no images "
                                 f"({'/'.join(IMAGE_EXTENSIONS)}).")
            pairs.extend((f, label) for f in files)
        examples[split] = pairs
    return classes, examples


def _decode_to_rgb(contents: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _image_folder_arrays(pairs: list[tuple[str, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decodes every file once (in parallel); any file that fails is named in a ValueError."""
    files = [f for f, _ in pairs]
    decoded = (tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), files))
               .map(lambda i, f: (i, _decode_to_rgb(tf.io.read_file(f), size)),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
               .ignore_errors())  # a failure drops the element; the missing index names the file
    indices, images = [], []
    for i, x in decoded.batch(1024).as_numpy_iterator():
        indices.append(i)
        images.append(x)
    indices = np.concatenate(indices) if indices else np.zeros([0], np.int64)
    if len(indices) != len(files):
        bad = sorted(set(range(len(files))) - set(indices.tolist()))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"image_folder: cannot decode image {files[bad[0]]}{more}.")
    labels = np.array([label for _, label in pairs], np.int32)
    return np.concatenate(images)[np.argsort(indices)], labels


# --------------------------------------------------------------------------------------------------
# Dataset metadata


_TFDS_COUNTS = {"cifar10": (10, 50_000, 10_000), "cifar100": (100, 50_000, 10_000),
                "imagenet2012": (1000, 1_281_167, 50_000), "fashion_mnist": (10, 60_000, 10_000)}


def _canonical(name: str) -> str:
    if name.startswith("image_folder"):
        _parse_image_folder(name)
        return "image_folder"
    if name not in _TFDS_COUNTS:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASETS)}.")
    return name


def _fixed_size(name: str, native: int, image_size: int | None) -> None:
    if image_size is not None and image_size != native:
        raise ValueError(f"{name} images are {native}x{native}; image_size={image_size} is not "
                         "supported for it.")


def get_info(name: str, data_dir: str | None = None, image_size: int | None = None) -> DatasetInfo:
    """Returns the DatasetInfo of `name` (image folders are scanned, not decoded)."""
    kind = _canonical(name)
    if kind in ("cifar10", "cifar100"):
        _fixed_size(name, 32, image_size)
        classes, n_train, n_test = _TFDS_COUNTS[kind]
        return DatasetInfo(kind, classes, (32, 32, 3), n_train, n_test, CIFAR_MEAN, CIFAR_STD)
    if kind == "fashion_mnist":
        _fixed_size(name, 28, image_size)
        classes, n_train, n_test = _TFDS_COUNTS[kind]
        return DatasetInfo(kind, classes, (28, 28, 1), n_train, n_test, FASHION_MNIST_MEAN,
                           FASHION_MNIST_STD)
    if kind == "imagenet2012":
        size = image_size or 224
        classes, n_train, n_test = _TFDS_COUNTS[kind]
        return DatasetInfo(kind, classes, (size, size, 3), n_train, n_test, IMAGENET_MEAN,
                           IMAGENET_STD)
    size = image_size or 32
    classes, examples = _scan_image_folder(_parse_image_folder(name))
    return DatasetInfo(name, len(classes), (size, size, 3), len(examples["train"]),
                       len(examples["test"]), IMAGENET_MEAN, IMAGENET_STD, tuple(classes))


def stratified_indices(labels, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subset of `n` examples holding every class in proportion.

    Each class gets `n * count / total` examples rounded by largest remainder (ties to the lower
    label), drawn without replacement by a generator keyed by `(seed, label)`, so the subset
    depends only on the labels' order, `n` and `seed`.
    """
    labels = np.asarray(labels).reshape(-1)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    extra = n - int(quota.sum())
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]), i))
    quota[order[:extra]] += 1
    chosen = []
    for label, k in zip(classes, quota):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng([int(seed) & (2**63 - 1), int(label)])
        chosen.append(rng.choice(members, size=int(k), replace=False))
    return np.sort(np.concatenate(chosen))


def _subset_pairs(pairs: list, max_examples: int | None, seed: int | None) -> list:
    """An image folder's (file, label) pairs, cut to a stratified subset of `max_examples`."""
    if max_examples is None:
        return pairs
    index = stratified_indices([label for _, label in pairs], max_examples,
                               0 if seed is None else seed)
    return [pairs[i] for i in index]


def class_counts(name: str, split: str, *, data_dir: str | None = None,
                 max_examples: int | None = None, seed: int | None = None) -> dict | None:
    """Examples per class that `load(name, split, max_examples=..., seed=...)` reads.

    Known without decoding for image folders (keyed by class folder name) and for Fashion-MNIST's
    IDX files (keyed by label); None for tfds sources, which would need a pass over the data.
    """
    kind = _canonical(name)
    if kind == "image_folder":
        classes, examples = _scan_image_folder(_parse_image_folder(name))
        labels = [label for _, label in _subset_pairs(examples[split], max_examples, seed)]
        found = np.bincount(labels, minlength=len(classes))
        return {cls: int(c) for cls, c in zip(classes, found)}
    if kind == "fashion_mnist":
        directory = _fashion_mnist_dir(data_dir)
        if directory is not None:
            labels = read_idx(_find_idx(directory, _FASHION_FILES[split][1]))[:max_examples]
            return {str(k): int(c) for k, c in enumerate(np.bincount(labels, minlength=10))}
    return None


# --------------------------------------------------------------------------------------------------
# Preprocessing


def normalize(image: tf.Tensor, mean: tuple, std: tuple) -> tf.Tensor:
    """Maps pixel values in [0, 255] to float32 `(x / 255 - mean) / std`, per channel."""
    image = tf.cast(image, tf.float32) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def pad_crop_flip(image: tf.Tensor, seed: tf.Tensor, pad: int) -> tf.Tensor:
    """CIFAR-style augmentation: reflect-pad by `pad`, random crop back to size, random h-flip.

    `seed` is a shape-[2] integer tensor; the result is a pure function of (image, seed).
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def random_resized_crop_jpeg(contents: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """ImageNet training crop from JPEG bytes: area (0.08, 1), ratio (3/4, 4/3), resize, h-flip.

    Only the crop window is decoded. Returns float32 in [0, 255], shape (size, size, 3).
    """
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(contents), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=box_seed, min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    image = tf.image.decode_and_crop_jpeg(contents, window, channels=3)
    # Antialiasing matches the PIL resize behind torchvision's RandomResizedCrop.
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return tf.clip_by_value(image, 0.0, 255.0)


def resize_center_crop_jpeg(contents: tf.Tensor, size: int) -> tf.Tensor:
    """ImageNet evaluation: shorter side to round(size * 256 / 224), then a central square crop.

    Returns float32 in [0, 255], shape (size, size, 3).
    """
    image = tf.io.decode_jpeg(contents, channels=3)
    short_target = tf.constant(round(size * 256 / 224), tf.float32)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.round(hw * short_target / tf.reduce_min(hw)), tf.int32)
    new_hw = tf.maximum(new_hw, size)  # guards against rounding just below the crop size
    image = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
    top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
    image = image[top:top + size, left:left + size]
    return tf.clip_by_value(tf.ensure_shape(image, [size, size, 3]), 0.0, 255.0)


# --------------------------------------------------------------------------------------------------
# Pipelines


@dataclasses.dataclass(frozen=True)
class _Source:
    dataset: tf.data.Dataset  # (image, int32 label) in a fixed order
    cache: bool  # whether the images are decoded uint8 that fit in memory
    shuffle_block: int  # examples permuted together; >= the split size means a full shuffle
    train_fn: Callable  # (image, seed[2]) -> image in [0, 255]
    eval_fn: Callable  # image -> image in [0, 255]
    info: DatasetInfo


def _tfds_builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds  # deferred: importing tfds costs seconds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as e:
            raise RuntimeError(
                f"Could not prepare tfds dataset {name!r} in {data_dir or 'the default data_dir'}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Without internet "
                "place the official archives in <data_dir>/downloads/manual/ as the docstring of "
                "dcm_keras.data explains.") from e
    return builder, tfds


def _tfds_split(builder, tfds, split: str, skip_decoding: bool = False) -> tf.data.Dataset:
    decoders = {"image": tfds.decode.SkipDecoding()} if skip_decoding else None
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False,
                            decoders=decoders)
    return ds.map(lambda x, y: (x, tf.cast(y, tf.int32)))


def _pad_for(info: DatasetInfo) -> int:
    """The reflect padding of a dataset's training crop, for `load()` and `load_arrays()`."""
    if info.name in ("cifar10", "cifar100"):
        return 4
    if info.name == "fashion_mnist":
        return 2
    return max(info.image_shape[0] // 8, 1)


def _source(name: str, split: str, data_dir: str | None, image_size: int | None,
            max_examples: int | None, seed: int | None = None) -> _Source:
    kind = _canonical(name)
    _require_tensorflow(f"Reading {name}")
    cap = (lambda n: n if max_examples is None else min(n, max_examples))
    if kind in ("cifar10", "cifar100"):
        _fixed_size(name, 32, image_size)
        builder, tfds = _tfds_builder(kind, data_dir)
        n = _TFDS_COUNTS[kind][1 if split == "train" else 2]
        info = get_info(kind)
        return _Source(_tfds_split(builder, tfds, split), True, cap(n),
                       lambda x, s: pad_crop_flip(x, s, _pad_for(info)), lambda x: x, info)
    if kind == "fashion_mnist":
        _fixed_size(name, 28, image_size)
        directory = _fashion_mnist_dir(data_dir)
        if directory is not None:
            images, labels = _fashion_mnist_arrays(split, directory)
            ds = tf.data.Dataset.from_tensor_slices((images, labels))
            n = len(labels)
        else:
            builder, tfds = _tfds_builder(kind, data_dir)
            ds = _tfds_split(builder, tfds, split)
            n = _TFDS_COUNTS[kind][1 if split == "train" else 2]
        info = get_info(kind)
        return _Source(ds, True, cap(n), lambda x, s: pad_crop_flip(x, s, _pad_for(info)),
                       lambda x: x, info)
    if kind == "imagenet2012":
        size = image_size or 224
        builder, tfds = _tfds_builder(kind, data_dir)
        tfds_split = "train" if split == "train" else "validation"
        return _Source(_tfds_split(builder, tfds, tfds_split, skip_decoding=True), False,
                       IMAGENET_SHUFFLE_BLOCK,
                       lambda x, s: random_resized_crop_jpeg(x, s, size),
                       lambda x: resize_center_crop_jpeg(x, size), get_info(kind, image_size=size))
    size = image_size or 32
    classes, examples = _scan_image_folder(_parse_image_folder(name))
    info = DatasetInfo(name, len(classes), (size, size, 3), len(examples["train"]),
                       len(examples["test"]), IMAGENET_MEAN, IMAGENET_STD, tuple(classes))
    # The pairs are in class order: a prefix would hold the first classes only.
    pairs = _subset_pairs(examples[split], max_examples, seed)
    images, labels = _image_folder_arrays(pairs, size)
    return _Source(tf.data.Dataset.from_tensor_slices((images, labels)), True, len(labels),
                   lambda x, s: pad_crop_flip(x, s, _pad_for(info)), lambda x: x, info)


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


def _check_load_args(split: str, batch_size: int, max_examples: int | None) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}.")


def _require_tensorflow(what: str) -> None:
    if tf is None:
        raise RuntimeError(f"{what} and needs TensorFlow, which is not installed; "
                           "`pip install tensorflow`, or use load_arrays() with Fashion-MNIST's "
                           "IDX files.")


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
    _check_load_args(split, batch_size, max_examples)
    _require_tensorflow("load() builds tf.data pipelines")
    training = split == "train" if training is None else training
    drop_remainder = training if drop_remainder is None else drop_remainder
    src = _source(name, split, data_dir, image_size, max_examples, seed)
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
        seed = random.SystemRandom().getrandbits(62) if seed is None else int(seed)
        key = tf.constant([seed, 0], tf.int64)
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


# --------------------------------------------------------------------------------------------------
# NumPy pipeline (any backend)


def _arrays(name: str, split: str, data_dir: str | None, image_size: int | None,
            max_examples: int | None, seed: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    """A split's uint8 images and int32 labels, decoded once, with the dataset's facts."""
    kind = _canonical(name)
    if kind == "imagenet2012":
        raise ValueError("imagenet2012 does not fit in memory; load_arrays() serves the in-memory "
                         "datasets (cifar10, cifar100, fashion_mnist, image folders): use load().")
    if kind == "fashion_mnist":
        _fixed_size(name, 28, image_size)
        directory = _fashion_mnist_dir(data_dir)
        if directory is not None:  # no TensorFlow needed
            images, labels = _fashion_mnist_arrays(split, directory)
            return images[:max_examples], labels[:max_examples], get_info(kind)
    src = _source(name, split, data_dir, image_size, max_examples, seed)
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
            raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} "
                             f"{images.shape}.")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"{len(labels)} labels for {len(images)} images.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
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
            raise ValueError(f"batch_size={batch_size} with drop_remainder leaves no batch of the "
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
    _check_load_args(split, batch_size, max_examples)
    training = split == "train" if training is None else training
    images, labels, info = _arrays(name, split, data_dir, image_size, max_examples, seed)
    seed = random.SystemRandom().getrandbits(62) if seed is None else int(seed)
    return ArrayDataset(images, labels, batch_size=batch_size, training=training,
                        mean=info.mean, std=info.std, pad=_pad_for(info), seed=seed,
                        drop_remainder=drop_remainder, epoch=epoch)

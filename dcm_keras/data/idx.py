"""Fashion-MNIST from IDX files (gzipped or plain), read with NumPy alone, so `load_arrays()`
serves it without TensorFlow; tfds `fashion_mnist` when no folder holds the files."""

from __future__ import annotations

import dataclasses
import gzip
import math
import os

import numpy as np

from dcm_keras.data._tf import tf
from dcm_keras.data.augment import uint8_source
from dcm_keras.data.info import DatasetInfo, DatasetSpec, Reader, Source
from dcm_keras.data.tfds_source import TfdsReader
from dcm_keras.errors import UserError

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes -> big-endian numpy dtypes (the format stores multi-byte values big-endian).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a numpy array with its native dtype and dims."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip reports truncation as EOFError
        raise UserError(f"IDX file {path}: cannot read ({e}).") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise UserError(f"IDX file {path}: bad magic number {raw[:4].hex() or 'empty'} "
                        "(expected 0000<type><ndim>).")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise UserError(f"IDX file {path}: unknown data type code 0x{code:02x}.")
    if ndim == 0:
        raise UserError(f"IDX file {path}: zero dimensions.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UserError(f"IDX file {path}: truncated header ({len(raw)} bytes for {ndim} dims).")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise UserError(f"IDX file {path}: payload is {len(raw) - header} bytes, dims {dims} "
                        f"need {expected}.")
    array = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _find_idx(directory: str, stem: str) -> str | None:
    for suffix in (".gz", ""):
        path = os.path.join(directory, stem + suffix)
        if os.path.isfile(path):
            return path
    return None


def fashion_mnist_dir(data_dir: str | None) -> str | None:
    """The directory holding the Fashion-MNIST IDX files, or None to fall back to tfds.

    Looked up in `data_dir` (if it holds them), else `$DCM_FASHION_MNIST_DIR`, else
    FASHION_MNIST_DEBIAN_DIR (Debian's `dataset-fashion-mnist`).
    """
    def has_all(d):
        return all(_find_idx(d, s) for pair in FASHION_FILES.values() for s in pair)

    if data_dir and os.path.isdir(data_dir) and has_all(data_dir):
        return data_dir
    env = os.environ.get("DCM_FASHION_MNIST_DIR")
    if env:
        # An explicit setting that does not hold the files is a mistake, not a cue to fall back.
        if not has_all(env):
            raise UserError(f"$DCM_FASHION_MNIST_DIR={env} does not hold the four Fashion-MNIST "
                            "IDX files (train-images-idx3-ubyte[.gz], ...).")
        return env
    if has_all(FASHION_MNIST_DEBIAN_DIR):
        return FASHION_MNIST_DEBIAN_DIR
    return None


def fashion_mnist_arrays(split: str, directory: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's uint8 `(N, 28, 28, 1)` images and int32 labels, checked for shape and range."""
    image_stem, label_stem = FASHION_FILES[split]
    image_path, label_path = _find_idx(directory, image_stem), _find_idx(directory, label_stem)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise UserError(f"IDX file {image_path}: expected uint8 (N, 28, 28) images, got "
                        f"{images.dtype} {images.shape}.")
    if labels.shape != images.shape[:1]:
        raise UserError(f"IDX file {label_path}: {labels.shape[0]} labels for "
                        f"{images.shape[0]} images.")
    bad = (labels < 0) | (labels >= 10)
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(f"IDX file {label_path}: labels must lie in [0, 10); {int(bad.sum())} do "
                         f"not (the first: label {labels[i]} of example {i}).")
    return images[..., None], labels.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class FashionMnistReader(Reader):
    """The IDX files where `fashion_mnist_dir` finds them, else `fallback` (tfds)."""

    fallback: Reader = TfdsReader()

    def source(self, spec: DatasetSpec, name: str, split: str, data_dir: str | None,
               image_size: int | None, max_examples: int | None, seed: int | None) -> Source:
        info = spec.info(name, image_size)
        directory = fashion_mnist_dir(data_dir)
        if directory is None:
            return self.fallback.source(spec, name, split, data_dir, image_size, max_examples,
                                        seed)
        images, labels = fashion_mnist_arrays(split, directory)
        return uint8_source(tf.data.Dataset.from_tensor_slices((images, labels)), len(labels),
                            max_examples, info, spec.pad_for(info))

    def arrays(self, spec: DatasetSpec, name: str, split: str, data_dir: str | None,
               image_size: int | None, max_examples: int | None
               ) -> tuple[np.ndarray, np.ndarray, DatasetInfo] | None:
        info = spec.info(name, image_size)
        directory = fashion_mnist_dir(data_dir)
        if directory is None:
            return None
        images, labels = fashion_mnist_arrays(split, directory)
        return images[:max_examples], labels[:max_examples], info

    def class_counts(self, spec: DatasetSpec, name: str, split: str, data_dir: str | None,
                     max_examples: int | None, seed: int | None) -> dict | None:
        directory = fashion_mnist_dir(data_dir)
        if directory is None:
            return None
        labels = read_idx(_find_idx(directory, FASHION_FILES[split][1]))[:max_examples]
        return {str(k): int(c) for k, c in enumerate(np.bincount(labels, minlength=10))}

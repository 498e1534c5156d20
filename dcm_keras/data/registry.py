"""The registered datasets, one `DatasetSpec` each, and the look-ups every pipeline goes through."""

from __future__ import annotations

from dcm_keras.data._tf import require_tensorflow
from dcm_keras.data.idx import FashionMnistReader
from dcm_keras.data.image_folder import ImageFolderReader, parse_image_folder
from dcm_keras.data.info import DatasetInfo, DatasetSpec, Source
from dcm_keras.data.tfds_source import ImageNetReader, TfdsReader
from dcm_keras.errors import UserError

CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Computed from the 60,000 training images of the Debian package (pixel values / 255, over all
# pixels); tests/test_data.py recomputes them from the data.
FASHION_MNIST_MEAN = (0.2860406,)
FASHION_MNIST_STD = (0.3530242,)

IMAGE_FOLDER = "image_folder"  # named `image_folder:PATH`; the path selects the folder

REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Adds `spec` to REGISTRY under its name (which must be new)."""
    if spec.name in REGISTRY:
        raise ValueError(f"dataset {spec.name!r} is registered already.")
    REGISTRY[spec.name] = spec
    return spec


for _name, _classes in (("cifar10", 10), ("cifar100", 100)):
    register(DatasetSpec(_name, TfdsReader(), CIFAR_MEAN, CIFAR_STD, (32, 32, 3), _classes,
                         50_000, 10_000, pad=4))
register(DatasetSpec("fashion_mnist", FashionMnistReader(), FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                     (28, 28, 1), 10, 60_000, 10_000, pad=2))
register(DatasetSpec("imagenet2012", ImageNetReader(), IMAGENET_MEAN, IMAGENET_STD, (224, 224, 3),
                     1000, 1_281_167, 50_000, resizable=True, in_memory=False))
register(DatasetSpec(IMAGE_FOLDER, ImageFolderReader(), IMAGENET_MEAN, IMAGENET_STD, (32, 32, 3),
                     resizable=True))

DATASETS: tuple = tuple(f"{n}:PATH" if n == IMAGE_FOLDER else n for n in REGISTRY)


def lookup(name: str) -> DatasetSpec:
    """The registered record of a dataset name; UserError names the valid ones."""
    if name.startswith(IMAGE_FOLDER):
        parse_image_folder(name)  # the path is part of the name
        return REGISTRY[IMAGE_FOLDER]
    if name not in REGISTRY:
        raise UserError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASETS)}.")
    return REGISTRY[name]


def get_info(name: str, data_dir: str | None = None, image_size: int | None = None) -> DatasetInfo:
    """Returns the DatasetInfo of `name` (image folders are scanned, not decoded)."""
    spec = lookup(name)
    return spec.reader.info(spec, name, image_size)


def class_counts(name: str, split: str, *, data_dir: str | None = None,
                 max_examples: int | None = None, seed: int | None = None) -> dict | None:
    """Examples per class that `load(name, split, max_examples=..., seed=...)` reads.

    Known without decoding for image folders (keyed by class folder name) and for Fashion-MNIST's
    IDX files (keyed by label); None for tfds sources, which would need a pass over the data.
    """
    spec = lookup(name)
    return spec.reader.class_counts(spec, name, split, data_dir, max_examples, seed)


def source(name: str, split: str, data_dir: str | None, image_size: int | None,
           max_examples: int | None, seed: int | None = None) -> Source:
    """A split of `name` as the tf.data pipeline reads it (needs TensorFlow)."""
    spec = lookup(name)
    require_tensorflow(f"Reading {name}")
    return spec.reader.source(spec, name, split, data_dir, image_size, max_examples, seed)

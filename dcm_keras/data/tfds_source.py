"""Datasets read through tensorflow-datasets (tfds): CIFAR-10/100, ImageNet, and Fashion-MNIST when
no IDX files are found. Preparing them offline is described in docs/data.md."""

from __future__ import annotations

import dataclasses

from dcm_keras.data._tf import tf
from dcm_keras.data.augment import random_resized_crop_jpeg, resize_center_crop_jpeg, uint8_source
from dcm_keras.data.info import DatasetSpec, Reader, Source

# Decoded ImageNet does not fit in memory: its JPEG bytes are shuffled within consecutive blocks
# of this many examples (~1.1 GB) of a split that tfds already shuffled when writing it.
IMAGENET_SHUFFLE_BLOCK = 10_000


def tfds_builder(name: str, data_dir: str | None):
    """The prepared tfds builder of `name` (preparing it first if need be) and the tfds module."""
    import tensorflow_datasets as tfds  # deferred: importing tfds costs seconds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as e:
            raise RuntimeError(
                f"Could not prepare tfds dataset {name!r} in {data_dir or 'the default data_dir'}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Without internet "
                "place the official archives in <data_dir>/downloads/manual/ as the project's "
                "docs/data.md explains.") from e
    return builder, tfds


def tfds_split(builder, tfds, split: str, skip_decoding: bool = False) -> tf.data.Dataset:
    """A split as `(image, int32 label)` in file order; `skip_decoding` keeps the JPEG bytes."""
    decoders = {"image": tfds.decode.SkipDecoding()} if skip_decoding else None
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False,
                            decoders=decoders)
    return ds.map(lambda x, y: (x, tf.cast(y, tf.int32)))


@dataclasses.dataclass(frozen=True)
class TfdsReader(Reader):
    """A tfds dataset of small images, decoded once and held in memory (CIFAR)."""

    def source(self, spec: DatasetSpec, name: str, split: str, data_dir: str | None,
               image_size: int | None, max_examples: int | None, seed: int | None) -> Source:
        info = spec.info(name, image_size)
        builder, tfds = tfds_builder(spec.name, data_dir)
        n = info.num_train if split == "train" else info.num_test
        return uint8_source(tfds_split(builder, tfds, split), n, max_examples, info,
                            spec.pad_for(info))


@dataclasses.dataclass(frozen=True)
class ImageNetReader(Reader):
    """ILSVRC 2012 from tfds as JPEG bytes, decoded (and cropped) anew every epoch."""

    def source(self, spec: DatasetSpec, name: str, split: str, data_dir: str | None,
               image_size: int | None, max_examples: int | None, seed: int | None) -> Source:
        info = spec.info(name, image_size)
        size = info.image_shape[0]
        builder, tfds = tfds_builder(spec.name, data_dir)
        tfds_name = "train" if split == "train" else "validation"
        return Source(tfds_split(builder, tfds, tfds_name, skip_decoding=True), False,
                      IMAGENET_SHUFFLE_BLOCK, lambda x, s: random_resized_crop_jpeg(x, s, size),
                      lambda x: resize_center_crop_jpeg(x, size), info)

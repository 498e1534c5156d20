"""Datasets read through tensorflow-datasets (tfds): CIFAR-10/100, ImageNet, and Fashion-MNIST when
no IDX files are found. Preparing them offline is described in docs/data.md."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import urllib.parse

from dcm_keras.data._tf import tf
from dcm_keras.data.augment import random_resized_crop_jpeg, resize_center_crop_jpeg, uint8_source
from dcm_keras.data.info import DatasetSpec, Reader, Source

# Decoded ImageNet does not fit in memory: its JPEG bytes are shuffled within consecutive blocks
# of this many examples (~1.1 GB) of a split that tfds already shuffled when writing it.
IMAGENET_SHUFFLE_BLOCK = 10_000
# How long a download host may take to accept a connection before the data counts as unreachable.
REACHABLE_TIMEOUT_S = 5.0


def reachable(url: str, timeout: float = REACHABLE_TIMEOUT_S) -> bool:
    """Whether `url`'s host accepts a TCP connection within `timeout` seconds (DNS included)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result = []

    def connect():
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    # getaddrinfo has no timeout of its own: a daemon thread bounds the whole attempt.
    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def _local_copy(builder) -> bool:
    """Whether tfds may find the archives without a download: in the manual directory under their
    registered names, or (a cached earlier download) in `<data_dir>/downloads/`."""
    downloads = os.path.join(builder._data_dir_root, "downloads")
    manual = os.path.join(downloads, "manual")
    names = [info.filename for info in (getattr(builder, "url_infos", None) or {}).values()
             if info.filename]
    cached = os.listdir(downloads) if os.path.isdir(downloads) else []
    return any(os.path.exists(os.path.join(manual, n)) for n in names) or any(
        n.split(".")[0] in c for n in names for c in cached if c not in ("manual", "extracted"))


def tfds_builder(name: str, data_dir: str | None):
    """The prepared tfds builder of `name` (preparing it first if need be) and the tfds module."""
    import tensorflow_datasets as tfds  # deferred: importing tfds costs seconds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        urls = list(getattr(builder, "url_infos", None) or {})
        # tfds would retry each download for minutes before failing: say at once what to do.
        # Under tfds.testing.mock_data download_and_prepare is a no-op that serves fake data.
        mocked = "mock" in getattr(type(builder).download_and_prepare, "__qualname__", "")
        if urls and not mocked and not _local_copy(builder) and not reachable(urls[0]):
            raise RuntimeError(
                f"tfds dataset {name!r} is not prepared in {builder._data_dir_root}, its archives "
                f"are not in {os.path.join(builder._data_dir_root, 'downloads', 'manual')}, and "
                f"{urllib.parse.urlsplit(urls[0]).hostname} cannot be reached to download them. "
                "Prepare it offline as the project's docs/data.md explains (or pass data_dir= "
                "where a prepared copy is).")
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

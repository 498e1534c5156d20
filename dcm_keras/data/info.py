"""What the package knows about a dataset: `DatasetInfo` (the public facts a network needs) and
`DatasetSpec` (the registered record of one dataset: its facts, normalisation, padding and reader).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from dcm_keras.errors import UserError


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


@dataclasses.dataclass(frozen=True)
class Source:
    """One split as the tf.data pipeline reads it, before batching."""

    dataset: object  # tf.data.Dataset of (image, int32 label) in a fixed order
    cache: bool  # whether the images are decoded uint8 that fit in memory
    shuffle_block: int  # examples permuted together; >= the split size means a full shuffle
    train_fn: Callable  # (image, seed[2]) -> image in [0, 255]
    eval_fn: Callable  # image -> image in [0, 255]
    info: DatasetInfo


class Reader:
    """How a registered dataset's examples are read; subclasses override what their source has."""

    def info(self, spec: DatasetSpec, name: str, image_size: int | None) -> DatasetInfo:
        """The dataset's facts; `name` is what the caller passed (image folders carry a path)."""
        return spec.info(name, image_size)

    def source(self, spec: DatasetSpec, name: str, split: str, data_dir: str | None,
               image_size: int | None, max_examples: int | None, seed: int | None) -> Source:
        """The split for `load()`; needs TensorFlow."""
        raise NotImplementedError

    def arrays(self, spec: DatasetSpec, name: str, split: str, data_dir: str | None,
               image_size: int | None, max_examples: int | None
               ) -> tuple[np.ndarray, np.ndarray, DatasetInfo] | None:
        """uint8 images, int32 labels and facts read without TensorFlow, or None when the split
        has to be decoded through `source()`."""
        return None

    def class_counts(self, spec: DatasetSpec, name: str, split: str, data_dir: str | None,
                     max_examples: int | None, seed: int | None) -> dict | None:
        """Examples per class, when known without decoding; None otherwise."""
        return None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset: its facts, normalisation, training padding and reader."""

    name: str
    reader: Reader
    mean: tuple  # per channel, in [0, 1] pixel units
    std: tuple
    image_shape: tuple  # (H, W, C); H and W are the default size when `resizable`
    num_classes: int = 0  # 0 when the data tells (image folders), as for the two counts
    num_train: int = 0
    num_test: int = 0
    resizable: bool = False  # `image_size` may change H and W
    pad: int | None = None  # reflect padding of the training crop; None: an eighth of the side
    in_memory: bool = True  # the decoded split fits in memory, so `load_arrays()` serves it

    def info(self, name: str, image_size: int | None) -> DatasetInfo:
        """The registered facts at `image_size`, which a fixed-size dataset refuses to change."""
        native, _, channels = self.image_shape
        if not self.resizable and image_size is not None and image_size != native:
            raise UserError(f"{name} images are {native}x{native}; image_size={image_size} is not "
                            "supported for it.")
        size = image_size or native
        return DatasetInfo(name, self.num_classes, (size, size, channels), self.num_train,
                           self.num_test, self.mean, self.std)

    def pad_for(self, info: DatasetInfo) -> int:
        """The reflect padding of the training crop, for `load()` and `load_arrays()` alike."""
        return self.pad if self.pad is not None else max(info.image_shape[0] // 8, 1)

"""Input pipelines for DCM training: CIFAR-10/100, Fashion-MNIST, ImageNet and image folders.

`load()` returns a batched `tf.data.Dataset` of normalised float32 images and int32 labels;
`load_arrays()` returns the same kind of batches as a `keras.utils.PyDataset` over NumPy arrays, for
any Keras backend (without TensorFlow for Fashion-MNIST's IDX files). `get_info()` gives the facts a
network needs (classes, image shape, normalisation).

Layout: `info` (DatasetInfo and the per-dataset record, DatasetSpec), `registry` (one record per
dataset, registered by name), one module per source (`idx` for Fashion-MNIST's IDX files,
`image_folder`, `tfds_source`), `augment` (normalisation and augmentation ops), `pipeline` (tf.data)
and `arrays` (NumPy). Where each dataset is looked for, and how to prepare CIFAR and ImageNet
without internet, is in docs/data.md.
"""

from dcm_keras.data._tf import AUTOTUNE
from dcm_keras.data.arrays import ArrayDataset, load_arrays
from dcm_keras.data.augment import (normalize, pad_crop_flip, random_resized_crop_jpeg,
                                    resize_center_crop_jpeg)
from dcm_keras.data.idx import FASHION_MNIST_DEBIAN_DIR, read_idx
from dcm_keras.data.image_folder import IMAGE_EXTENSIONS, stratified_indices
from dcm_keras.data.info import DatasetInfo, DatasetSpec
from dcm_keras.data.pipeline import load
from dcm_keras.data.registry import (CIFAR_MEAN, CIFAR_STD, DATASETS, FASHION_MNIST_MEAN,
                                     FASHION_MNIST_STD, IMAGENET_MEAN, IMAGENET_STD, REGISTRY,
                                     class_counts, get_info, register)
from dcm_keras.data.tfds_source import IMAGENET_SHUFFLE_BLOCK

__all__ = ["AUTOTUNE", "ArrayDataset", "CIFAR_MEAN", "CIFAR_STD", "DATASETS", "DatasetInfo",
           "DatasetSpec", "FASHION_MNIST_DEBIAN_DIR", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
           "IMAGENET_MEAN", "IMAGENET_SHUFFLE_BLOCK", "IMAGENET_STD", "IMAGE_EXTENSIONS", "REGISTRY",
           "class_counts", "get_info", "load", "load_arrays", "normalize", "pad_crop_flip",
           "random_resized_crop_jpeg", "read_idx", "register", "resize_center_crop_jpeg",
           "stratified_indices"]

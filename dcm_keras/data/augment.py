"""Preprocessing and augmentation ops of the tf.data pipeline (every random op is stateless)."""

from __future__ import annotations

from dcm_keras.data._tf import tf
from dcm_keras.data.info import DatasetInfo, Source


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


def uint8_source(dataset: tf.data.Dataset, num_examples: int, max_examples: int | None,
                 info: DatasetInfo, pad: int) -> Source:
    """A `Source` over decoded uint8 images that fit in memory: cached, shuffled as a whole,
    trained on with `pad_crop_flip` and evaluated as they are."""
    block = num_examples if max_examples is None else min(num_examples, max_examples)
    return Source(dataset, True, block, lambda x, s: pad_crop_flip(x, s, pad), lambda x: x, info)

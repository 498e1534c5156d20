"""Image folders: `image_folder:PATH` reads `PATH/train/<class>/*` and `PATH/test/<class>/*`.

JPEG and PNG (also BMP and GIF) files are decoded, converted to RGB and resized once, when the
dataset is built; a file that fails is reported by name. The images are then held in memory.
Other files in the class folders (a `.webp` image, notes) are left out with a warning that counts
them by extension and names one; hidden files (".DS_Store") are left out silently.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import warnings

import numpy as np

from dcm_keras.data._tf import AUTOTUNE, tf
from dcm_keras.data.augment import uint8_source
from dcm_keras.data.info import DatasetInfo, DatasetSpec, Reader, Source
from dcm_keras.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def parse_image_folder(name: str) -> str:
    """The PATH of an `image_folder:PATH` dataset name."""
    path = name.split(":", 1)[1] if ":" in name else ""
    if not path:
        raise UserError("image_folder needs a path: use 'image_folder:/path/to/root'.")
    return path


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _check_link(path: str, root: str) -> None:
    if os.path.islink(path) and not _inside(os.path.realpath(path), root):
        raise UserError(f"image_folder: {path} is a symlink pointing outside {root}; refusing it.")


def _list_images(directory: str, root: str, seen: set, skipped: list) -> list[str]:
    """Image files under `directory`, recursively, sorted; symlinks must stay inside `root`.

    Other files are appended to `skipped`."""
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
            files.extend(_list_images(entry.path, root, seen, skipped))
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            if not entry.is_file():
                raise UserError(f"image_folder: {entry.path} is not a readable file.")
            files.append(entry.path)
        else:
            skipped.append(entry.path)
    return files


def _warn_skipped(path: str, skipped: list[str]) -> None:
    if not skipped:
        return
    kinds = collections.Counter(os.path.splitext(f)[1].lower() or "no extension" for f in skipped)
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
    warnings.warn(f"image_folder: {path} has {len(skipped)} file(s) in its class folders that "
                  f"are not {'/'.join(IMAGE_EXTENSIONS)} images ({counts}; e.g. {skipped[0]}); "
                  "they are left out of the dataset. Convert them or move them out to silence "
                  "this.", UserWarning, stacklevel=2)


def scan_image_folder(path: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names and, per split, the (file, label) pairs of an image folder."""
    if not os.path.isdir(path):
        raise UserError(f"image_folder: folder {path} does not exist.")
    root = os.path.realpath(path)
    split_dirs = {}
    for split in ("train", "test"):
        d = os.path.join(path, split)
        if os.path.lexists(d):
            _check_link(d, root)
        if not os.path.isdir(d):
            raise UserError(f"image_folder: {path} has no {split}/ subfolder.")
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
        raise UserError(f"image_folder: {split_dirs['train']} has no class subfolders.")
    classes = sorted(train_classes)
    test_classes = class_dirs(split_dirs["test"])
    if set(test_classes) != set(classes):
        missing = sorted(set(classes) - set(test_classes))
        extra = sorted(set(test_classes) - set(classes))
        raise UserError(f"image_folder: test/ classes differ from train/ (missing in test: "
                        f"{missing}, not in train: {extra}).")
    examples, skipped = {}, []
    for split, dirs in (("train", train_classes), ("test", test_classes)):
        pairs = []
        for label, cls in enumerate(classes):
            before = len(skipped)
            files = _list_images(dirs[cls], root, set(), skipped)
            if not files:
                others = (f"; it holds {len(skipped) - before} other file(s), e.g. "
                          f"{skipped[before]}" if len(skipped) > before else "")
                raise UserError(f"image_folder: class folder {dirs[cls]} holds no images "
                                f"({'/'.join(IMAGE_EXTENSIONS)}){others}.")
            pairs.extend((f, label) for f in files)
        examples[split] = pairs
    _warn_skipped(path, skipped)
    return classes, examples


def _decode_to_rgb(contents: tf.Tensor, size: int) -> tf.Tensor:
    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _image_folder_arrays(pairs: list[tuple[str, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decodes every file once (in parallel); any file that fails is named in a UserError."""
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
        raise UserError(f"image_folder: cannot decode image {files[bad[0]]}{more}.")
    labels = np.array([label for _, label in pairs], np.int32)
    return np.concatenate(images)[np.argsort(indices)], labels


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


def _folder_info(spec: DatasetSpec, name: str, image_size: int | None
                 ) -> tuple[DatasetInfo, dict[str, list[tuple[str, int]]]]:
    classes, examples = scan_image_folder(parse_image_folder(name))
    info = dataclasses.replace(spec.info(name, image_size), num_classes=len(classes),
                               num_train=len(examples["train"]), num_test=len(examples["test"]),
                               class_names=tuple(classes))
    return info, examples


@dataclasses.dataclass(frozen=True)
class ImageFolderReader(Reader):
    """An `image_folder:PATH` dataset: the folder is scanned for its facts, decoded for its data."""

    def info(self, spec: DatasetSpec, name: str, image_size: int | None) -> DatasetInfo:
        return _folder_info(spec, name, image_size)[0]

    def source(self, spec: DatasetSpec, name: str, split: str, data_dir: str | None,
               image_size: int | None, max_examples: int | None, seed: int | None) -> Source:
        info, examples = _folder_info(spec, name, image_size)
        # The pairs are in class order: a prefix would hold the first classes only.
        pairs = _subset_pairs(examples[split], max_examples, seed)
        images, labels = _image_folder_arrays(pairs, info.image_shape[0])
        return uint8_source(tf.data.Dataset.from_tensor_slices((images, labels)), len(labels),
                            max_examples, info, spec.pad_for(info))

    def class_counts(self, spec: DatasetSpec, name: str, split: str, data_dir: str | None,
                     max_examples: int | None, seed: int | None) -> dict | None:
        classes, examples = scan_image_folder(parse_image_folder(name))
        labels = [label for _, label in _subset_pairs(examples[split], max_examples, seed)]
        found = np.bincount(labels, minlength=len(classes))
        return {cls: int(c) for cls, c in zip(classes, found)}

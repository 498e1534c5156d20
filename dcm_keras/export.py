"""Model files: `.keras` files written atomically with stock layers and read back with clear errors,
and serving SavedModels. Extracting the deployable network is `dcm_keras.surgery`'s job.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Optional

import keras

from dcm_keras import archives
# Importing these registers DCM and the network classes with Keras, which `load_network` needs.
from dcm_keras._keras_compat import Functional
from dcm_keras.errors import UserError
from dcm_keras.model import DCM  # noqa: F401
from dcm_keras.networks.common import BatchNormalization


def _is_plain_functional(model: keras.Model) -> bool:
    return type(model) is Functional


def stock_layers(model: keras.Model) -> keras.Model:
    """`model` with dcm_keras's BatchNormalization replaced by Keras's own, weights copied.

    The two compute the same function (dcm_keras's only runs it through TensorFlow's fused
    kernel), but a file holding Keras's class loads wherever Keras does, without `dcm_keras`.
    Models without such layers, and models that are not plain functional ones (a registered
    network class, `DCM`), are returned unchanged.
    """
    def holds_bn(m):
        return any(type(layer) is BatchNormalization
                   or (_is_plain_functional(layer) and holds_bn(layer)) for layer in m.layers)

    if not _is_plain_functional(model) or not holds_bn(model):
        return model

    def stock(layer):
        if _is_plain_functional(layer):
            return stock_layers(layer)  # a nested network, e.g. behind an input contract
        if type(layer) is not BatchNormalization:
            return layer  # shared, as in `model`
        twin = keras.layers.BatchNormalization.from_config(layer.get_config())
        twin.build(_bn_input_shape(layer))
        twin.set_weights(layer.get_weights())
        return twin

    return keras.models.clone_model(model, clone_function=stock)


def _bn_input_shape(layer: keras.layers.BatchNormalization) -> tuple:
    # Building reads only the size of the normalised axis, which may be channels-first (axis=1);
    # the moving mean has that size whether or not the layer has `gamma` (scale=False).
    ndim = layer.input_spec.ndim if layer.input_spec is not None else 4
    shape = [None] * max(ndim, layer.axis + 1, -layer.axis)
    shape[layer.axis] = int(layer.moving_mean.shape[0])
    return tuple(shape)


def save_network(model: keras.Model, path: str, overwrite: bool = False) -> str:
    """Saves a model to a `.keras` file, refusing to replace an existing file unless asked.

    A plain functional model (e.g. from `export_network`) is saved with Keras's own layers only
    (`stock_layers`), so `keras.saving.load_model` reads it without importing `dcm_keras`. The
    file is written under a new temporary name in the same folder and renamed into place: a kill
    never leaves a truncated file, and a symbolic link at `path` is replaced, not written through.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise UserError(f"Model files must end in .keras, got {path!r}.")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (pass "
                              "overwrite=True to replace it).")
    directory, base = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Cannot save {path}: there is no folder {directory}.")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{base[:-len('.keras')]}.", suffix=".tmp.keras",
                                   dir=directory)
    except OSError as error:  # e.g. a read-only folder: name the user's path, not the temporary
        raise type(error)(error.errno, f"Cannot save {path}: {error.strerror}") from None
    os.close(fd)
    try:
        stock_layers(model).save(tmp, overwrite=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    return path


def load_network(path: str, *, max_expanded_bytes: Optional[int] = None) -> keras.Model:
    """Loads a `.keras` file with `safe_mode=True`, with a clear error for a bad file.

    Before reading anything, the file's members are checked against caps on their decompressed
    sizes and config.json against a nesting limit (`dcm_keras.archives`): a small file that
    would expand to gigabytes is refused at once. `max_expanded_bytes` replaces the cap on the
    members together (default: `archives.expanded_cap`, at least 256 MiB and 20 x the file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path}.")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a .keras model file (not a zip archive: truncated or "
                        "foreign).")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            archives.check_sizes(path, members, os.path.getsize(path), max_expanded_bytes)
            names = {info.filename for info in members}
            bad = archive.testzip()
            config = archive.read("config.json") if bad is None and "config.json" in names else b""
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise UserError(f"{path} is a corrupt .keras file: {error}.") from None
    if bad is not None:
        raise UserError(f"{path} is a corrupt .keras file: member {bad} fails its CRC check.")
    if "config.json" not in names:
        raise UserError(f"{path} is not a .keras model file (no config.json inside).")
    archives.check_config_depth(path, config)
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except RecursionError:  # nesting within the limit that Keras's deserialiser still refuses
        raise UserError(f"{path}: config.json nests too deeply to load.") from None
    except ValueError as error:  # e.g. safe_mode refusing a Lambda layer: Keras's words suffice
        raise UserError(f"{path} cannot be loaded: {error}") from None
    except (TypeError, KeyError, AttributeError, IndexError, OSError) as error:
        # A foreign or damaged config (an unknown class, a missing field, bad weights).
        raise UserError(f"{path} is not a loadable Keras model ({type(error).__name__}: "
                        f"{error}).") from None
    if _is_plain_functional(model):
        # Keras 3.15's ONNX export refuses a model that was never called, even a functional one
        # whose input signature it knows; a symbolic call (no computation) lets
        # `model.export(path, format="onnx")` work as loaded.
        model(keras.tree.map_structure(lambda t: keras.KerasTensor(t.shape, t.dtype),
                                       model.input))
    return model


def export_saved_model(model: keras.Model, path: str) -> str:
    """Writes a serving TensorFlow SavedModel (TensorFlow backend only)."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("SavedModel export needs the TensorFlow backend "
                           f"(current backend: {keras.backend.backend()}).")
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; refusing to overwrite it.")
    model.export(path, format="tf_saved_model")
    return path

"""Deployable networks: the main path of a trained network, without its auxiliary heads."""

from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Optional

import keras

from dcm_keras.connections import FINAL_HEAD


def export_network(network: keras.Model, head: str = FINAL_HEAD, *, preprocessing=None,
                   precision: str = "float32", resize: Optional[bool] = None) -> keras.Model:
    """A plain functional model from `network`'s input to one head's logits.

    Only the layers on the path to that head are kept, so a network trained with auxiliary heads
    exports with exactly the parameters of the network without them. Logits are float32.

    Args:
        network: a functional network returning a dict of logits (or logits).
        head: the head to export ("logits", or e.g. "aux1").
        preprocessing: None exports the bare network, which takes normalised images. A
            `dcm_keras.data.DatasetInfo` (what `data.get_info` returns) exports a model that takes
            the dataset's raw pixel values (0-255) and normalises (and, for image folders,
            resizes) them itself with stock Keras layers that also record mean, std, image shape
            and class names (`dcm_keras.shipping`).
        precision: "float32" (default) computes in float32 whatever policy the network trained
            in (rebuilt, weights copied); "training" keeps its policy and shares its weights.
        resize: with `preprocessing`, whether the model takes images of any size and resizes
            them (None: as the dataset's pipeline does, i.e. for image folders). Its antialiased
            resize is TensorFlow's `ScaleAndTranslate`, which neither TFLite's built-in ops nor
            ONNX have: `resize=False` exports a fixed-size input that converts to both.
    """
    from dcm_keras import shipping

    if precision not in shipping.PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; valid: "
                         f"{', '.join(shipping.PRECISIONS)}.")
    output = network.output
    if isinstance(output, dict):
        if head not in output:
            raise ValueError(f"Network {network.name!r} has no head {head!r}; "
                             f"its heads are {', '.join(output)}.")
        output = output[head]
    if keras.backend.standardize_dtype(output.dtype) != "float32":
        output = keras.layers.Activation("linear", dtype="float32", name=f"{head}_float32")(output)
    name = network.name if head == FINAL_HEAD else f"{network.name}_{head}"
    # `network.input` keeps the network's own input structure (a single tensor for the usual
    # one-input network); `network.inputs` would always be a list, which makes the exported
    # model expect `[images]` and gives its SavedModel a list-typed serving signature.
    bare = keras.Model(inputs=network.input, outputs=output, name=name)
    if precision == "float32":
        bare = shipping.float32_network(bare)
    if preprocessing is None:
        return bare
    return shipping.with_input_contract(
        bare, mean=preprocessing.mean, std=preprocessing.std,
        image_shape=preprocessing.image_shape, class_names=preprocessing.class_names,
        resize=shipping.needs_resize(preprocessing) if resize is None else bool(resize))


def _is_plain_functional(model: keras.Model) -> bool:
    cls = type(model)
    return cls.__name__ == "Functional" and cls.__module__.startswith("keras.")


def stock_layers(model: keras.Model) -> keras.Model:
    """`model` with dcm_keras's BatchNormalization replaced by Keras's own, weights copied.

    The two compute the same function (dcm_keras's only runs it through TensorFlow's fused
    kernel), but a file holding Keras's class loads wherever Keras does, without `dcm_keras`.
    Models without such layers, and models that are not plain functional ones (a registered
    network class, `DCM`), are returned unchanged.
    """
    from dcm_keras.networks.common import BatchNormalization

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
        ndim = layer.input_spec.ndim if layer.input_spec is not None else 4
        twin.build((None,) * (ndim - 1) + tuple(layer.gamma.shape))
        twin.set_weights(layer.get_weights())
        return twin

    return keras.models.clone_model(model, clone_function=stock)


def save_network(model: keras.Model, path: str, overwrite: bool = False) -> str:
    """Saves a model to a `.keras` file, refusing to replace an existing file unless asked.

    A plain functional model (e.g. from `export_network`) is saved with Keras's own layers only
    (`stock_layers`), so `keras.saving.load_model` reads it without importing `dcm_keras`. The
    file is written under a new temporary name in the same folder and renamed into place: a kill
    never leaves a truncated file, and a symbolic link at `path` is replaced, not written through.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"Model files must end in .keras, got {path!r}.")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (pass "
                              "overwrite=True to replace it).")
    directory, base = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{base[:-len('.keras')]}.", suffix=".tmp.keras",
                               dir=directory)
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


def load_network(path: str) -> keras.Model:
    """Loads a `.keras` file with `safe_mode=True`, with a clear error for a bad file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path}.")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .keras model file (not a zip archive: truncated or "
                         "foreign).")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path} is a corrupt .keras file: {error}.") from None
    if bad is not None:
        raise ValueError(f"{path} is a corrupt .keras file: member {bad} fails its CRC check.")
    if "config.json" not in names:
        raise ValueError(f"{path} is not a .keras model file (no config.json inside).")
    import dcm_keras.networks  # noqa: F401  (registers the network classes)
    import dcm_keras.model  # noqa: F401  (registers DCM)

    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except ValueError as error:  # e.g. safe_mode refusing a Lambda layer: Keras's words suffice
        raise ValueError(f"{path} cannot be loaded: {error}") from None
    except (TypeError, KeyError, AttributeError, IndexError, OSError) as error:
        # A foreign or damaged config (an unknown class, a missing field, bad weights).
        raise ValueError(f"{path} is not a loadable Keras model ({type(error).__name__}: "
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

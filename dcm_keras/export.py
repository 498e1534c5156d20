"""Deployable networks: the main path of a trained network, without its auxiliary heads."""

from __future__ import annotations

import os
import zipfile

import keras

from dcm_keras.connections import FINAL_HEAD


def export_network(network: keras.Model, head: str = FINAL_HEAD) -> keras.Model:
    """A plain functional model from `network`'s input to one head's logits.

    Only the layers on the path to that head are kept, so a network trained with auxiliary heads
    exports with exactly the parameters of the network without them. Weights are shared, not
    copied. Logits are returned in float32 even when the network ran in mixed precision.
    """
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
    return keras.Model(inputs=network.input, outputs=output, name=name)


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

    if not _is_plain_functional(model) or not any(
            type(layer) is BatchNormalization for layer in model.layers):
        return model

    def stock(layer):
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
    (`stock_layers`), so `keras.saving.load_model` reads it without importing `dcm_keras`.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"Model files must end in .keras, got {path!r}.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it.")
    stock_layers(model).save(path, overwrite=True)
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
        return keras.saving.load_model(path, safe_mode=True)
    except ValueError as error:  # e.g. safe_mode refusing a Lambda layer: Keras's words suffice
        raise ValueError(f"{path} cannot be loaded: {error}") from None
    except (TypeError, KeyError, AttributeError, IndexError, OSError) as error:
        # A foreign or damaged config (an unknown class, a missing field, bad weights).
        raise ValueError(f"{path} is not a loadable Keras model ({type(error).__name__}: "
                         f"{error}).") from None


def export_saved_model(model: keras.Model, path: str) -> str:
    """Writes a serving TensorFlow SavedModel (TensorFlow backend only)."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("SavedModel export needs the TensorFlow backend "
                           f"(current backend: {keras.backend.backend()}).")
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; refusing to overwrite it.")
    model.export(path, format="tf_saved_model")
    return path

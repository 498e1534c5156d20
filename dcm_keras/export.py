"""Model files: `.keras` files written atomically with stock layers and read back with clear errors,
serving SavedModels, and TFLite / ONNX / SavedModel conversions checked against Keras before they
take their name. Extracting the deployable network is `dcm_keras.deployable`'s job.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from typing import NamedTuple, Optional, Tuple

import keras
import numpy as np

from dcm_keras import archives, atomic, shipping
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


def _writable_target(path: str, overwrite: bool, verb: str) -> Tuple[str, str]:
    """(folder, name) of `path`; refuses an existing file unless `overwrite`, or a missing folder."""
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (pass "
                              "overwrite=True to replace it).")
    directory, base = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Cannot {verb} {path}: there is no folder {directory}.")
    return directory, base


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
    _writable_target(path, overwrite, "save")
    with atomic.replacing(path, verb="save") as tmp:
        stock_layers(model).save(tmp, overwrite=True)
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
        _symbolic_call(model)
    return model


def _symbolic_call(model: keras.Model) -> None:
    # Keras 3.15's ONNX export refuses a model that was never called, even a functional one
    # whose input signature it knows; a symbolic call (no computation) lets
    # `model.export(path, format="onnx")` work.
    model(keras.tree.map_structure(lambda t: keras.KerasTensor(t.shape, t.dtype), model.input))


def export_saved_model(model: keras.Model, path: str) -> str:
    """Writes a serving TensorFlow SavedModel (TensorFlow backend only)."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("SavedModel export needs the TensorFlow backend "
                           f"(current backend: {keras.backend.backend()}).")
    if os.path.exists(path):
        raise FileExistsError(f"{path} already exists; refusing to overwrite it.")
    model.export(path, format="tf_saved_model")
    return path


FORMATS = ("tflite", "onnx", "saved_model")
_SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx", "saved_model": ""}
_KERAS_FORMATS = {"tflite": "litert", "onnx": "onnx"}
# Largest |converted - Keras| logit allowed, as a fraction of the largest |Keras logit|. The
# converters compute the same float32 function with other kernels and summation orders: 6e-7 was
# measured (docs/shipping.md); a wrong or missing op moves logits by a large fraction of them.
CONVERSION_TOLERANCE = 1e-4


class Conversion(NamedTuple):
    """A checked conversion: where it was written and how far its logits were from Keras's."""
    path: str
    difference: float  # max |converted - Keras| / max |Keras| over the check inputs


def convert_network(model: keras.Model, path: str, format: str, *, overwrite: bool = False,
                    samples: int = 4, seed: int = 0) -> Conversion:
    """Converts `model` to a TFLite file, an ONNX file or a SavedModel folder, checked first.

    The conversion is Keras's own `model.export` (TFLite limited to its built-in ops, so no Flex
    delegate is needed where it runs). The result is written under a temporary name beside `path`,
    run (LiteRT's interpreter, else TensorFlow's; onnxruntime; `tf.saved_model.load`) on `samples`
    random inputs (raw pixel values for a network with an input contract) and compared with the
    Keras model's logits; only if they agree within `CONVERSION_TOLERANCE` is it renamed to
    `path`. A failed conversion leaves nothing behind and raises UserError naming the ops the
    target lacks. A network that resizes inside converts to TFLite and ONNX only in its fixed-size
    form, `dcm_keras.shipping.fixed_size(model)`.
    """
    if format not in FORMATS:
        raise UserError(f"Unknown format {format!r}; valid: {', '.join(FORMATS)}.")
    path, suffix = os.fspath(path).rstrip(os.sep) or os.fspath(path), _SUFFIXES[format]
    if not path.endswith(suffix):
        raise UserError(f"A {format} file must end in {suffix}, got {path!r}.")
    directory, base = _writable_target(path, overwrite, "write")
    if format != "onnx" and keras.backend.backend() != "tensorflow":
        raise UserError(f"The {format} conversion needs the TensorFlow backend (current backend: "
                        f"{keras.backend.backend()}).")
    if isinstance(model.input, (list, tuple, dict)):
        raise UserError(f"Model {model.name!r} has several inputs; only one-image-input networks "
                        "are converted.")
    inputs = _check_inputs(model, samples, seed)
    expected = keras.ops.convert_to_numpy(model(inputs, training=False))
    stem = base[:-len(suffix)] if suffix else base
    if format == "saved_model":
        tmp = tempfile.mkdtemp(prefix=f".{stem}.", suffix=".tmp", dir=directory)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{suffix}", dir=directory)
        os.close(fd)
    try:
        _export(model, tmp, format)
        got = _RUNNERS[format](tmp, inputs)
        difference = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))
        if not difference <= CONVERSION_TOLERANCE:  # also catches NaN
            raise UserError(f"The {format} conversion of {model.name!r} computes other logits "
                            f"than Keras: off by {difference:.2g} of the largest logit (allowed: "
                            f"{CONVERSION_TOLERANCE:g}); nothing written to {path}.")
        os.chmod(tmp, 0o755 if format == "saved_model" else 0o644)
        _replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        raise
    return Conversion(path, difference)


def _check_inputs(model: keras.Model, samples: int, seed: int) -> np.ndarray:
    contract = shipping.input_contract(model)
    shape = tuple(model.input_shape[1:])
    size = contract["image_shape"] if contract else [32] * len(shape)
    shape = (samples,) + tuple(size[i] if d is None else d for i, d in enumerate(shape))
    rng = np.random.default_rng(seed)
    if contract:  # raw pixel values, as the network is fed
        return rng.integers(0, 256, shape).astype("float32")
    return rng.standard_normal(shape).astype("float32")


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _export(model: keras.Model, tmp: str, format: str) -> None:
    kwargs = {}
    if format == "tflite":
        import tensorflow as tf

        kwargs["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
    if not getattr(model, "_called", True):
        _symbolic_call(model)
    # tf2onnx only logs the TensorFlow ops ONNX lacks, and writes a file onnxruntime refuses:
    # its records are taken here (errors become the exception below), not printed.
    errors, logger = _Collect(), logging.getLogger("tf2onnx")
    logger.addHandler(errors)
    propagate, logger.propagate = logger.propagate, False
    try:
        if format == "saved_model":
            # `model.export` serves `model(x)`, whose `training` a layer's default can set (files
            # written before `shipping.with_input_contract` recorded training=False for "resize").
            archive = keras.export.ExportArchive()
            archive.track(model)
            archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[
                keras.InputSpec(shape=model.input.shape, dtype=model.input.dtype)])
            archive.write_out(tmp, verbose=False)
        else:
            with warnings.catch_warnings():  # Keras's tf2onnx patch probes `np.object`
                warnings.filterwarnings("ignore", "In the future `np.object`", FutureWarning)
                model.export(tmp, format=_KERAS_FORMATS[format], verbose=False, **kwargs)
    except Exception as error:
        ops = re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", str(error))
        raise _unsupported(model, format, ops, error) from error
    finally:
        logger.removeHandler(errors)
        logger.propagate = propagate
    ops = [op for m in errors.messages if "Unsupported ops" in m
           for op in re.findall(r"'(\w+)'", m)]
    if ops:
        raise _unsupported(model, format, ops, None)


def _unsupported(model: keras.Model, format: str, ops, error) -> UserError:
    what = (f"{format} lacks the TensorFlow op{'s' * (len(ops) > 1)} {', '.join(sorted(set(ops)))}"
            if ops else f"{type(error).__name__}: {str(error).strip().splitlines()[-1]}")
    hint = ""
    contract = shipping.input_contract(model)
    if contract and contract["resize"]:
        height, width = contract["image_shape"][:2]
        hint = (" Its in-model resize (the 'resize' layer, ScaleAndTranslate) is the cause: "
                "convert dcm_keras.shipping.fixed_size(model), which takes images already "
                f"resized to {height}x{width}.")
    return UserError(f"Cannot convert {model.name!r} to {format}: {what}; nothing written.{hint}")


def _run_tflite(path: str, inputs: np.ndarray) -> np.ndarray:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():  # TF 2.21's interpreter warns that it is deprecated
        warnings.filterwarnings("ignore", r"\s*Warning: tf\.lite\.Interpreter is deprecated")
        runner = Interpreter(model_path=path).get_signature_runner()
    (name,) = runner.get_input_details()
    return np.asarray(next(iter(runner(**{name: inputs}).values())))


def _run_onnx(path: str, inputs: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError as error:
        raise UserError("Checking the ONNX file needs onnxruntime (pip install onnxruntime, or "
                        "the project's extra: pip install -e '.[onnx]'); nothing written.") from error

    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types are not importable by name
        ops = re.findall(r"No Op registered for (\w+)", str(error))
        raise UserError(f"onnxruntime refuses the converted file: "
                        f"{'it lacks the op ' + ', '.join(ops) if ops else error}; nothing "
                        "written.") from error
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def _run_saved_model(path: str, inputs: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(path)  # the reference keeps its variables alive during the call
    return loaded.serve(inputs).numpy()


_RUNNERS = {"tflite": _run_tflite, "onnx": _run_onnx, "saved_model": _run_saved_model}


def _replace(tmp: str, path: str) -> None:
    # A folder (a SavedModel) cannot be renamed over another: the old one goes aside first.
    if os.path.isdir(path) and not os.path.islink(path):
        aside = tempfile.mkdtemp(prefix=f"{tmp}.old", dir=os.path.dirname(tmp))
        os.rename(path, os.path.join(aside, "old"))
        os.replace(tmp, path)
        shutil.rmtree(aside)
    elif os.path.isdir(tmp) and os.path.lexists(path):
        os.remove(path)  # a file or a link where the SavedModel folder goes
        os.replace(tmp, path)
    else:
        os.replace(tmp, path)

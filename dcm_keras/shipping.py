"""What a shipped network carries: its input contract (raw pixels in) and float32 arithmetic.

A network trains on normalised images, `(pixels / 255 - mean) / std`, possibly resized, and
possibly in mixed precision. `with_input_contract` wraps it so the exported model takes the
dataset's raw pixel values (0-255, any numeric dtype Keras converts) and applies the same steps
with stock Keras layers, each a readable record of the contract once loaded:

    Input "pixels" -> [Resizing "resize"] -> Rescaling "rescale" (scale 1/255)
        -> Rescaling "normalize" (scale 1/std, offset -mean/std, per channel)
        -> [Identity "class_names>..."] -> the bare network (a nested model, `model.layers[-1]`)

(Rescaling rather than Normalization for the second step: Normalization holds its mean and
variance as captured tensors, which tf2onnx turns into extra graph inputs.)

Class names have no field of their own in any stock layer, so they travel in the name of an
Identity layer, each escaped to the characters TensorFlow allows in scope names (`_escape`).
`input_contract(model)` reads all of it back; it needs only Keras, so a loaded file explains
itself without `dcm_keras` (the README shows the three lines that do it by hand).

`float32_network` rebuilds a network whose layers compute in a mixed policy as the same graph under
float32 (weights copied, not shared): TFLite's converter and Keras's ONNX export take float32
graphs only, and an exported file should not compute in bfloat16 on a device that lacks it.
"""

from __future__ import annotations

import math
import re
from typing import Dict, Optional, Sequence

import keras

from dcm_keras.errors import UserError

RAW_INPUT = "pixels"
CLASS_NAMES_PREFIX = "class_names>"
PRECISIONS = ("float32", "training")
_SAFE = re.compile(r"[A-Za-z0-9_-]")


def _escape(name: str) -> str:
    # TensorFlow scope names allow [A-Za-z0-9_.>-] (and Keras forbids "/"): every other byte
    # becomes ".xx", with "." itself escaped, so the encoding is reversible.
    return "".join(c if _SAFE.fullmatch(c) else "".join(f".{b:02x}" for b in c.encode())
                   for c in name)


def _unescape(text: str) -> str:
    return re.sub(rb"\.([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  text.encode()).decode()


def _policies(model: keras.Model) -> set:
    return {layer.dtype_policy.name for layer in model._flatten_layers(include_self=False)}


def float32_network(model: keras.Model) -> keras.Model:
    """`model` computing in float32: itself if it already does, else a float32 rebuild.

    The rebuild (`keras.models.clone_model` with each layer re-created from its config under the
    float32 policy) has the same layers, names and graph; its weights are copied from `model`
    (mixed-precision variables are float32 already, so the copy is exact).
    """
    if _policies(model) <= {"float32"}:
        return model

    def in_float32(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    rebuilt = keras.models.clone_model(model, clone_function=in_float32)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def with_input_contract(network: keras.Model, *, mean: Sequence[float], std: Sequence[float],
                        image_shape: Sequence[int], class_names: Sequence[str] = (),
                        resize: bool = False) -> keras.Model:
    """`network` behind stock Keras layers that take raw pixel values (0-255).

    Args:
        network: a model from normalised images `(pixels / 255 - mean) / std` to logits.
        mean, std: per channel, in [0, 1] pixel units (`dcm_keras.data.DatasetInfo`'s).
        image_shape: (height, width, channels) the network takes.
        class_names: recorded in the model (e.g. an image folder's class folders, label order).
        resize: take images of any height and width and resize them to `image_shape` (bilinear,
            antialiased: what `dcm_keras.data` does to image-folder files).
    """
    height, width, channels = (int(d) for d in image_shape)
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise UserError(f"mean and std need 1 or {channels} values (one per channel); got "
                        f"mean={mean}, std={std}.")
    if not all(s > 0 and math.isfinite(s) for s in std):
        raise UserError(f"std must be positive and finite, got {std}.")
    expected = tuple(network.input_shape[1:])
    if expected != (height, width, channels):
        raise UserError(f"Network {network.name!r} takes images of shape {expected}, not "
                        f"{(height, width, channels)}.")
    shape = (None, None, channels) if resize else (height, width, channels)
    pixels = keras.Input(shape, dtype="float32", name=RAW_INPUT)
    x = pixels
    if resize:
        # Keras's image preprocessing layers default to `training=True` and hand that on to the
        # layers after them: called without `training` (`model(x)`, a SavedModel's `serve`), the
        # network's BatchNormalization would use batch statistics. Recorded in the graph (and the
        # file), `training=False` holds unless the caller passes `training` itself.
        x = keras.layers.Resizing(height, width, interpolation="bilinear", antialias=True,
                                  dtype="float32", name="resize")(x, training=False)
    x = keras.layers.Rescaling(1.0 / 255.0, dtype="float32", name="rescale")(x)
    x = keras.layers.Rescaling([1.0 / s for s in std], [-m / s for m, s in zip(mean, std)],
                               dtype="float32", name="normalize")(x)
    if class_names:
        label = CLASS_NAMES_PREFIX + ">".join(_escape(str(c)) for c in class_names)
        x = keras.layers.Identity(dtype="float32", name=label)(x)
    return keras.Model(pixels, network(x), name=network.name)


def fixed_size(model: keras.Model) -> keras.Model:
    """The fixed-size form of a network that resizes inside (an image-folder `net1.keras`).

    The same layers from "rescale" on, weights shared, behind a new raw-pixel input at the
    training size: it still normalises (and records its class names) inside, but takes images
    already resized to `input_contract(model)["image_shape"]` (as `dcm_keras.data` resizes image
    files: bilinear, antialiased). The in-model resize is TensorFlow's `ScaleAndTranslate`, which
    neither TFLite's built-in ops nor ONNX have; this form converts to both. A model without a
    "resize" layer is returned as it is.
    """
    contract = input_contract(model)
    if contract is None or not contract["resize"]:
        return model
    chain = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if [layer.name for layer in chain[:2]] != ["resize", "rescale"]:
        # Only the linear chain `with_input_contract` builds can be cut after its first layer.
        raise UserError(f"Model {model.name!r} has a 'resize' layer but not the input contract "
                        f"chain of dcm_keras.shipping (layers: {[l.name for l in chain]}).")
    pixels = keras.Input(tuple(contract["image_shape"]), dtype="float32", name=RAW_INPUT)
    x = pixels
    for layer in chain[1:]:
        x = layer(x)
    return keras.Model(pixels, x, name=model.name)


def input_contract(model: keras.Model) -> Optional[Dict[str, object]]:
    """The input contract a model carries (see the module docstring), or None for a bare network.

    Returns `{"input": "pixels", "pixel_range": [0, 255], "mean": [...], "std": [...],
    "image_shape": [H, W, C], "resize": bool, "class_names": [...]}`.
    """
    names = {layer.name: layer for layer in model.layers}
    if "normalize" not in names or "rescale" not in names:
        return None
    norm = names["normalize"]
    scale = _floats(norm.scale)
    std = [_tidy(1.0 / s) for s in scale]
    mean = [_tidy(-o / s) for o, s in zip(_floats(norm.offset), scale)]
    classes = next((n[len(CLASS_NAMES_PREFIX):] for n in names
                    if n.startswith(CLASS_NAMES_PREFIX)), None)
    network = model.layers[-1]
    return {
        "input": RAW_INPUT,
        "pixel_range": [0, 255],
        "mean": mean,
        "std": std,
        "image_shape": [int(d) for d in network.input_shape[1:]],
        "resize": "resize" in names,
        "class_names": [_unescape(c) for c in classes.split(">")] if classes else [],
    }


def _floats(value) -> list:
    return [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def _tidy(x: float) -> float:
    # Undoes the last-bit noise of 1/(1/std) and offset*std; float32 arithmetic is far coarser.
    return float(f"{x:.10g}")


def describe(info) -> Dict[str, object]:
    """The input contract of a `dcm_keras.data.DatasetInfo`, as `input_contract` reports it."""
    return {"input": RAW_INPUT, "pixel_range": [0, 255], "mean": list(info.mean),
            "std": list(info.std), "image_shape": list(info.image_shape),
            "resize": needs_resize(info), "class_names": list(info.class_names)}


def needs_resize(info) -> bool:
    """Whether the dataset's raw images vary in size (image folders), so the model resizes."""
    return info.name.startswith("image_folder")

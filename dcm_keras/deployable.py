"""Deployable networks: the path of a trained network to one head, without the other heads.

This is graph work only (which layers to keep, in which precision, behind which input contract);
writing and reading model files is `dcm_keras.export`'s job.
"""

from __future__ import annotations

from typing import Optional

import keras

from dcm_keras import shipping
from dcm_keras.connections import FINAL_HEAD
from dcm_keras.errors import UserError


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
    if precision not in shipping.PRECISIONS:
        raise UserError(f"Unknown precision {precision!r}; valid: "
                        f"{', '.join(shipping.PRECISIONS)}.")
    output = network.output
    if isinstance(output, dict):
        if head not in output:
            raise UserError(f"Network {network.name!r} has no head {head!r}; "
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

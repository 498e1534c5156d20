"""Checks of what `DCM` is fed, each answering a mistake with a message that names it.

Without them Keras trains on wrong input without complaint: labels outside `[0, classes)` one-hot
encode to zeros (a cross-entropy of 0), images of another size pass through global average pooling,
integer pixels are cast to float without normalisation, and an empty dataset gives an empty history.

The checks cost nothing per step:

- the shapes and dtypes of images and labels are checked when a step is traced (`call`,
  `compute_loss`), from static shapes;
- label *values* are checked once per `fit` / `evaluate` call when the data are in memory (NumPy
  arrays, lists, eager tensors): one vectorised pass over the labels. A `tf.data.Dataset` is not
  scanned (that would take a pass over the data); `dcm_keras.data` validates the labels it reads
  when it builds a pipeline;
- an empty dataset is refused before `fit` when its size is known (arrays, a dataset of known
  cardinality), and otherwise detected after `fit` when no training step ran.

`network_heads` checks the networks `DCM` is given, and `refusals` leaves a model usable after a
check refused data while a step was being traced.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Tuple

import keras
import numpy as np

from dcm_keras.connections import FINAL_HEAD
from dcm_keras.errors import UserError


class InputError(UserError):
    """Data that `DCM` refuses (a ValueError, so existing handlers still catch it)."""


def network_heads(network: keras.Model, position: Optional[int] = None) -> List[str]:
    """The head names of a network, shallow to deep, with `"logits"` last.

    Raises a clear error for a model that is not functional or has no `"logits"` output, and a
    TypeError naming `position` (0-based, in DCM's list) for anything that is not a Keras model.
    """
    if not isinstance(network, keras.Model):
        where = "" if position is None else f" as net{position + 1}"
        got = f"{type(network).__name__} {network!r}" if isinstance(network, str) else \
            type(network).__name__
        raise TypeError(f"Expected a keras.Model{where}, got a {got}: DCM takes built "
                        "functional networks, e.g. dcm_keras.networks.build('wrn_16_2', "
                        "num_classes); network names are accepted by experiments.train's --nets, "
                        "not by DCM.")
    hint = ("dcm_keras.networks.attach_heads(model) turns a functional or Sequential classifier "
            "into one, adding auxiliary heads.")
    if isinstance(network, keras.Sequential):
        raise UserError(f"Network {network.name!r} is a Sequential model, which returns one "
                        f"tensor; DCM needs a dict of logits per head: {hint}")
    try:
        output = network.output
    except (AttributeError, ValueError):
        raise UserError(
            f"Network {network.name!r} is not a functional model: DCM needs a model built as "
            "keras.Model(inputs, {'aux1': ..., 'logits': ...}) so its heads are known; "
            f"{hint}") from None
    if not isinstance(output, dict) or FINAL_HEAD not in output:
        got = sorted(output) if isinstance(output, dict) else type(output).__name__
        raise UserError(
            f"Network {network.name!r} must return a dict of logits with a 'logits' entry "
            f"(optionally 'aux1', 'aux2', ... before it); its output is {got}. {hint}")
    for key, tensor in output.items():
        if len(tensor.shape) != 2:
            raise UserError(f"Head {key!r} of network {network.name!r} must output logits of "
                            f"shape (batch, classes), got {tuple(tensor.shape)}.")
    heads = [k for k in output if k != FINAL_HEAD]
    return heads + [FINAL_HEAD]


def _in_memory(value) -> Optional[np.ndarray]:
    """`value` as a NumPy array when it is in-memory data (not a dataset or a symbolic tensor)."""
    if value is None or isinstance(value, (dict, str, bytes)):
        return None
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple)):
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):
            return None
        return array if array.dtype != object else None
    if hasattr(value, "__array__") and hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            return np.asarray(value)  # eager TF tensors, JAX arrays
        except Exception:  # symbolic tensors refuse
            return None
    return None


def check_label_values(labels, num_classes: int, what: str = "labels") -> None:
    """Refuses in-memory labels that are not class indices in `[0, num_classes)`."""
    y = _in_memory(labels)
    if y is None:
        return
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = (" (one-hot labels? pass their argmax)" if y.ndim == 2 and y.shape[1] == num_classes
                else "")
        raise InputError(f"DCM {what} must be class indices of shape (N,) or (N, 1); got shape "
                         f"{y.shape}{hint}.")
    if y.dtype.kind not in "iuf":
        raise InputError(f"DCM {what} must be integer class indices; got dtype {y.dtype}.")
    if y.dtype.kind == "f":
        non_integer = ~np.isfinite(y) | (y != np.round(np.nan_to_num(y)))
        if non_integer.any():
            i = int(np.argmax(non_integer))
            raise InputError(f"DCM {what} must be integer class indices; {what}[{i}] is {y[i]}.")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        values = np.unique(y[bad])
        shown = ", ".join(str(v.item()) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        raise InputError(f"DCM {what} must lie in [0, {num_classes}) for {num_classes} classes; "
                         f"{int(bad.sum())} of {len(y)} do not (values {shown}; the first is "
                         f"{what}[{i}] = {y[i].item()}).")


def is_tf_dataset(x) -> bool:
    """Whether `x` is a `tf.data.Dataset` (checked without importing TensorFlow)."""
    return callable(getattr(x, "cardinality", None)) and hasattr(x, "element_spec") and (
        type(x).__module__.startswith("tensorflow"))


def check_not_empty(x, what: str) -> None:
    """Refuses in-memory data with no example and a `tf.data.Dataset` known to be empty."""
    array = _in_memory(x)
    if array is not None and array.ndim >= 1 and len(array) == 0:
        raise InputError(f"The {what} data are empty (0 examples).")
    cardinality = getattr(x, "cardinality", None)
    if array is None and callable(cardinality) and type(x).__module__.startswith("tensorflow"):
        try:
            size = int(cardinality())
        except Exception:
            return
        if size == 0:
            raise InputError(f"The {what} dataset is empty (0 batches).")


def image_spec(networks) -> Optional[Tuple[tuple, str]]:
    """`(shape without batch axis, dtype)` the networks' single image input expects, or None."""
    specs = set()
    for net in networks:
        inputs = getattr(net, "inputs", None)
        if not inputs or len(inputs) != 1:
            return None
        specs.add((tuple(inputs[0].shape[1:]), keras.backend.standardize_dtype(inputs[0].dtype)))
    return specs.pop() if len(specs) == 1 else None


def images_spec(x):
    """What `check_images` can look at for `fit`'s `x`: an array, or a dataset's image spec.

    A `tf.data.Dataset` of `(images, labels)` gives the `TensorSpec` of its images; anything else
    whose images cannot be seen without reading it (a generator, a PyDataset) gives None.
    """
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    spec = getattr(x, "element_spec", None)
    if isinstance(spec, (tuple, list)) and spec:
        spec = spec[0]
    return spec if hasattr(spec, "shape") and hasattr(spec, "dtype") else None


def check_images(images, spec: Optional[Tuple[tuple, str]]) -> None:
    """Refuses a batch whose static shape or dtype does not fit the networks (trace time)."""
    if spec is None or images is None or not hasattr(images, "shape") or not hasattr(
            images, "dtype"):
        return
    shape, dtype = spec
    got = (None,) + tuple(images.shape)[1:]  # an array's length is not the batch size
    expected = (None,) + shape
    if len(got) != len(expected) or any(
            a is not None and b is not None and a != b for a, b in zip(got[1:], shape)):
        raise InputError(f"DCM's networks take images of shape {expected} (batch first); got a "
                         f"batch of shape {got}.")
    got_dtype = keras.backend.standardize_dtype(images.dtype)
    if "float" in dtype and "float" not in got_dtype:
        raise InputError(f"DCM's networks take floating-point images ({dtype}), normalised as in "
                         f"training (dcm_keras.data does it); got {got_dtype} images, which Keras "
                         "would cast without normalising.")


def check_label_spec(labels) -> None:
    """Refuses labels whose static shape or dtype cannot be class indices (trace time)."""
    if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
        return
    shape = tuple(labels.shape)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if len(shape) > 2 or (len(shape) == 2 and shape[1] not in (1, None)) or len(shape) == 0:
        raise InputError(f"DCM labels must be class indices of shape (batch,) or (batch, 1); got "
                         f"shape {shape} (one-hot labels? pass their argmax).")
    if "int" not in dtype and "float" not in dtype:
        raise InputError(f"DCM labels must be integer class indices; got dtype {dtype}.")


class StepCounter(keras.callbacks.Callback):
    """Counts the epochs `fit` started and the training steps it ran."""

    epochs = steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs += 1

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def check(self) -> None:
        if self.epochs and not self.steps:
            raise InputError("DCM.fit ran no training step: the training data yielded no batch "
                             "(an empty dataset, or fewer examples than one batch with "
                             "drop_remainder=True).")


@contextlib.contextmanager
def refusals(model: keras.Model) -> Iterator[None]:
    """Drops `model`'s step functions when a check refuses data while they are traced.

    A refusal raised inside the first trace of a `tf.function` leaves that function
    half-traced: its next trace, on correct data, would create the optimizer's variables on
    a "non-first call" and fail. Fresh step functions trace from scratch.
    """
    kept = []
    if keras.backend.backend() == "jax":
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)  # so that its values can be kept
        kept = _variable_values(model)
    try:
        yield
    except InputError:
        model.train_function = model.test_function = model.predict_function = None
        # Keras's JAX trainer detaches every variable's value while a step runs and
        # re-attaches them only after one has run: a refusal in the first trace would leave
        # the model without weights.
        for variable, value in kept:
            if getattr(variable, "_value", 0) is None:
                variable.assign(value)
        for variable in model.metrics_variables:  # compiled metrics built during the trace
            if getattr(variable, "_value", 0) is None:
                variable.assign(keras.ops.zeros(variable.shape, variable.dtype))
        raise


def _variable_values(model: keras.Model) -> list:
    optimizer = getattr(model, "optimizer", None)
    variables = (list(model.variables) + list(model.metrics_variables)
                 + (list(optimizer.variables) if optimizer is not None else []))
    unique = {id(v): v for v in variables}.values()
    return [(v, v.value) for v in unique if getattr(v, "_value", None) is not None]

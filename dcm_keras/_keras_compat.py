"""Every use of Keras's private API in dcm_keras (and its experiments), checked at import.

Keras 3 keeps a few things dcm_keras needs outside its public API: the metric container its
monitoring callbacks search (`MetricsList`), the functional model class (`Functional`), the loss
scaling `Model.compute_loss` implementations apply under tf.distribute, and two private methods
that dcm_keras overrides (`BackupAndRestore._save_model` for crash-safe checkpoints, the TensorFlow
trainer's `_maybe_symbolic_build` for multi-worker training). They are all declared here, with the
signature the code was written against, and importing this module checks each one against the
installed Keras. A missing or changed one raises `KerasCompatibilityError` naming the Keras version
and the symbol, instead of an override going silently dead (Keras would stop calling it, and
checkpoints would fall back to Keras's non-atomic writes) or a call failing deep inside `fit`.

An override of a private method is written with `@override(Base)` above it: the decorator accepts
only a method declared in `PRIVATE_METHODS` (so every override is listed here), re-checks Keras's
signature and checks that the override's own parameters match it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from typing import Callable, Sequence, Tuple, TypeVar

import keras

WRITTEN_FOR = "3.15"
_F = TypeVar("_F", bound=Callable)


class KerasCompatibilityError(ImportError):
    """The installed Keras lacks, or has changed, a private symbol dcm_keras relies on."""

    def __init__(self, symbol: str, problem: str):
        super().__init__(
            f"dcm_keras relies on Keras's private {symbol}, which {problem} in the installed "
            f"Keras {keras.__version__} (dcm_keras was written for Keras {WRITTEN_FOR}); install "
            f"Keras {WRITTEN_FOR} or update dcm_keras/_keras_compat.py and the code that uses it.")
        self.symbol = symbol


def private_import(module: str, name: str):
    """`module.name` from inside `keras.src`, or `KerasCompatibilityError` if it is gone."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise KerasCompatibilityError(f"{module}.{name}", "does not exist") from None


def check_signature(owner, name: str, parameters: Sequence[str]) -> Callable:
    """`owner.name`, after checking it is callable with exactly these parameter names.

    `owner` is a class (for methods, `parameters` starts with "self") or a module.
    """
    symbol = f"{getattr(owner, '__name__', owner)}.{name}"
    target = getattr(owner, name, None)
    if target is None or not callable(target):
        raise KerasCompatibilityError(symbol, "does not exist")
    try:
        found = tuple(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        raise KerasCompatibilityError(symbol, "has no readable signature") from None
    if found != tuple(parameters):
        raise KerasCompatibilityError(
            symbol, f"takes ({', '.join(found)}) instead of ({', '.join(parameters)})")
    return target


@dataclasses.dataclass(frozen=True)
class PrivateMethod:
    """A private Keras method dcm_keras overrides; `backends` empty means every backend."""

    owner: type
    name: str
    parameters: Tuple[str, ...]
    backends: Tuple[str, ...] = ()

    def applies(self) -> bool:
        """Whether the current backend's Keras has (and calls) this method."""
        return not self.backends or keras.backend.backend() in self.backends

    def check(self) -> None:
        """Raises `KerasCompatibilityError` unless the method exists with `parameters`."""
        check_signature(self.owner, self.name, self.parameters)


PRIVATE_METHODS = (
    # experiments/rundir/checkpoints.py: BackupAndRestore.on_epoch_end calls it to write a
    # checkpoint; the override writes it atomically.
    PrivateMethod(keras.callbacks.BackupAndRestore, "_save_model", ("self",)),
    # dcm_keras/multi_worker.py: the TensorFlow trainer's fit/evaluate call it on the first batch.
    PrivateMethod(keras.Model, "_maybe_symbolic_build", ("self", "iterator", "data_batch"),
                  backends=("tensorflow",)),
)


@dataclasses.dataclass(frozen=True)
class PrivateAttribute:
    """A private attribute dcm_keras reads or sets on Keras objects.

    Attributes are set at run time, so they cannot be looked up on the class; the check reads
    the Keras source of `owner` (a class or module) for an access to `.name`.
    """

    owner: object
    name: str
    backends: Tuple[str, ...] = ()

    def applies(self) -> bool:
        """Whether the current backend's Keras uses this attribute."""
        return not self.backends or keras.backend.backend() in self.backends

    def check(self) -> None:
        """Raises `KerasCompatibilityError` unless Keras's source still uses the attribute."""
        symbol = f"{getattr(self.owner, '__qualname__', self.owner)}.{self.name}"
        try:
            source = inspect.getsource(self.owner)
        except (OSError, TypeError):
            raise KerasCompatibilityError(symbol, "has no readable source") from None
        if not re.search(rf"\.{re.escape(self.name)}\b", source):
            raise KerasCompatibilityError(symbol, "is no longer used")


def override(owner: type) -> Callable[[_F], _F]:
    """Decorator for a method overriding `owner`'s private method of the same name.

    Raises `KerasCompatibilityError` when Keras no longer has that method with the declared
    signature, and `TypeError` when the method is not declared in `PRIVATE_METHODS` or its own
    parameters differ from Keras's.
    """

    def mark(method: _F) -> _F:
        name = method.__name__
        declared = next((m for m in PRIVATE_METHODS if m.owner is owner and m.name == name), None)
        if declared is None:
            raise TypeError(f"{method.__qualname__} overrides {owner.__name__}.{name}, which is "
                            "not declared in dcm_keras._keras_compat.PRIVATE_METHODS.")
        own = tuple(inspect.signature(method).parameters)
        if own != declared.parameters:
            raise TypeError(f"{method.__qualname__} takes ({', '.join(own)}), but Keras calls "
                            f"{owner.__name__}.{name} with ({', '.join(declared.parameters)}).")
        if declared.applies():
            declared.check()
        return method

    return mark


def check_all() -> None:
    """Checks every private symbol dcm_keras uses; runs when this module is imported."""
    for symbol in PRIVATE_METHODS + PRIVATE_ATTRIBUTES:
        if symbol.applies():
            symbol.check()
    check_signature(MetricsList, "__init__", ("self", "metrics", "name", "output_name"))
    check_signature(_loss_module, "scale_loss_for_distribution", ("value",))
    if not (isinstance(Functional, type) and issubclass(Functional, keras.Model)):
        raise KerasCompatibilityError("keras.src.models.functional.Functional",
                                      "is no longer a keras.Model subclass")


# Keras's ModelCheckpoint, EarlyStopping and ReduceLROnPlateau (mode="auto") read a metric's
# direction only from metrics inside this container (keras/src/callbacks/monitor_callback.py).
MetricsList = private_import("keras.src.trainers.compile_utils", "MetricsList")
# The class of every plain functional model (`keras.Model(inputs, outputs)`).
Functional = private_import("keras.src.models.functional", "Functional")
# Divides a loss by the number of replicas under tf.distribute (a no-op elsewhere), as Keras's own
# compute_loss does; Keras then sums the replicas' gradients.
scale_loss_for_distribution = private_import("keras.src.losses.loss", "scale_loss_for_distribution")
_loss_module = importlib.import_module("keras.src.losses.loss")


PRIVATE_ATTRIBUTES = (
    # experiments/rundir/checkpoints.py restores a backup itself and sets what Keras's callback
    # sets: the model's starting epoch for fit and the callback's epoch counter.
    PrivateAttribute(keras.callbacks.BackupAndRestore, "_initial_epoch"),
    PrivateAttribute(keras.callbacks.BackupAndRestore, "_current_epoch"),
    # mark_lower_is_better: the monitoring callbacks read a metric's direction from it.
    PrivateAttribute(private_import("keras.src.callbacks.monitor_callback", "MonitorCallback"),
                     "_direction"),
    # dcm_keras/validation.py re-attaches variable values a failed JAX trace detached.
    PrivateAttribute(private_import("keras.src.backend.common.variables", "Variable"), "_value"),
    # dcm_keras/multi_worker.py reads the strategy a model was built under.
    PrivateAttribute(private_import("keras.src.trainers.trainer", "Trainer"),
                     "_distribute_strategy"),
)


def mark_lower_is_better(metric: keras.metrics.Metric) -> keras.metrics.Metric:
    """Gives `metric` the direction ("down") Keras's monitoring callbacks read, as Keras's own
    loss metrics carry it, and returns it."""
    metric._direction = "down"
    return metric


check_all()

"""dcm_keras._keras_compat: Keras's private API, checked at import, and no override left dead."""

import inspect
import json
import os

import keras
import numpy as np
import pytest

from dcm_keras import DCM, _keras_compat as compat, networks
from dcm_keras.multi_worker import MultiWorkerFixes
from experiments.rundir.checkpoints import LEGACY_WEIGHTS_FILE, METADATA_FILE, \
    AtomicBackupAndRestore


def test_the_installed_keras_passes_the_check():
    compat.check_all()
    for method in compat.PRIVATE_METHODS:
        if method.applies():
            method.check()


class _Lacking:
    pass


class _Changed:
    def _save_model(self, epoch):
        pass


@pytest.mark.parametrize("owner,problem", [(_Lacking, "does not exist"),
                                           (_Changed, r"takes \(self, epoch\) instead of \(self\)")])
def test_a_missing_or_changed_method_fails_loudly(owner, problem):
    with pytest.raises(compat.KerasCompatibilityError, match=problem) as error:
        compat.PrivateMethod(owner, "_save_model", ("self",)).check()
    message = str(error.value)
    assert f"{owner.__name__}._save_model" in message and keras.__version__ in message
    assert isinstance(error.value, ImportError)


def test_a_private_attribute_keras_stopped_using_fails_loudly():
    class Plain:
        def method(self):
            return self.public

    compat.PrivateAttribute(Plain, "public").check()
    with pytest.raises(compat.KerasCompatibilityError, match="_gone.*is no longer used"):
        compat.PrivateAttribute(Plain, "_gone").check()
    # Every attribute dcm_keras touches is declared against the installed Keras's source.
    for attribute in compat.PRIVATE_ATTRIBUTES:
        attribute.check()
    names = {a.name for a in compat.PRIVATE_ATTRIBUTES}
    assert {"_initial_epoch", "_current_epoch", "_direction", "_value"} <= names


def test_a_missing_private_import_fails_loudly():
    with pytest.raises(compat.KerasCompatibilityError, match="keras.src.models.nothing_here.X"):
        compat.private_import("keras.src.models.nothing_here", "X")
    with pytest.raises(compat.KerasCompatibilityError, match="MetricsList.Nope"):
        compat.private_import("keras.src.trainers.compile_utils", "MetricsList.Nope")


def test_an_override_of_a_method_keras_no_longer_has_cannot_be_defined(monkeypatch):
    monkeypatch.setattr(compat, "PRIVATE_METHODS",
                        (compat.PrivateMethod(_Lacking, "_save_model", ("self",)),))
    with pytest.raises(compat.KerasCompatibilityError, match="_Lacking._save_model"):
        class Callback(_Lacking):
            @compat.override(_Lacking)
            def _save_model(self):
                pass


def test_an_override_must_be_declared_and_match_keras_signature():
    with pytest.raises(TypeError, match="not declared"):
        class Undeclared(keras.callbacks.BackupAndRestore):
            @compat.override(keras.callbacks.BackupAndRestore)
            def _load_model(self):
                pass
    with pytest.raises(TypeError, match=r"takes \(self, epoch\)"):
        class Mismatched(keras.callbacks.BackupAndRestore):
            @compat.override(keras.callbacks.BackupAndRestore)
            def _save_model(self, epoch):
                pass


def _private_overrides(cls, keras_base):
    """Names of private methods `cls` (or a dcm_keras/experiments class in its MRO) defines that
    `keras_base` also has: overrides of Keras's private API."""
    names = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith(("dcm_keras", "experiments")):
            continue
        for name, value in vars(klass).items():
            private = name.startswith("_") and not name.startswith("__")
            if private and inspect.isfunction(value) and hasattr(keras_base, name):
                names.add(name)
    return names


@pytest.mark.parametrize("cls,keras_base", [
    (AtomicBackupAndRestore, keras.callbacks.BackupAndRestore),
    (DCM, keras.Model),
])
def test_every_private_override_is_declared(cls, keras_base):
    declared = {m.name for m in compat.PRIVATE_METHODS if m.applies()}
    assert _private_overrides(cls, keras_base) <= declared


def test_every_declared_private_method_is_overridden_somewhere():
    overriding = {keras.callbacks.BackupAndRestore: AtomicBackupAndRestore,
                  keras.Model: MultiWorkerFixes}
    for method in compat.PRIVATE_METHODS:
        assert method.name in vars(overriding[method.owner]), method


def test_keras_calls_the_atomic_checkpoint_write_during_fit(tmp_path):
    """The crash-safe `_save_model` is what `fit` runs, never Keras's non-atomic one."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    backup = str(tmp_path / "backup")
    model.fit(x, x[:, :2], epochs=2, batch_size=4, verbose=0,
              callbacks=[AtomicBackupAndRestore(backup)])
    with open(os.path.join(backup, METADATA_FILE)) as f:
        meta = json.load(f)
    assert {k: meta[k] for k in ("epoch", "batch", "weights")} == {
        "epoch": 2, "batch": 0, "weights": "epoch0002.weights.h5"}
    assert meta["size"] == os.path.getsize(os.path.join(backup, "epoch0002.weights.h5"))
    assert sorted(os.listdir(backup)) == sorted([METADATA_FILE, "epoch0002.weights.h5"])
    assert LEGACY_WEIGHTS_FILE not in os.listdir(backup)


@pytest.mark.requires_tensorflow("the TensorFlow trainer is the one with _maybe_symbolic_build")
def test_keras_calls_the_multi_worker_override_during_fit(monkeypatch):
    calls = []
    original = MultiWorkerFixes._maybe_symbolic_build

    def spy(self, iterator=None, data_batch=None):
        calls.append(type(self).__name__)
        return original(self, iterator=iterator, data_batch=data_batch)

    monkeypatch.setattr(MultiWorkerFixes, "_maybe_symbolic_build", spy)
    inputs = keras.Input((4,))
    net = keras.Model(inputs, {"logits": keras.layers.Dense(3)(inputs)}, name="tiny")
    dcm = DCM([net], connections="none")
    dcm.compile(optimizer="sgd")
    x = np.zeros((4, 4), "float32")
    dcm.fit(x, np.zeros(4, "int32"), epochs=1, batch_size=4, verbose=0)
    assert calls and set(calls) == {"DCM"}


def test_networks_use_the_checked_functional_class():
    net = networks.build("wrn_10_1", 10, input_shape=(8, 8, 3))
    assert isinstance(net, compat.Functional)

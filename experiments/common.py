"""Helpers shared by the scripts that do no file I/O: methods, flag checks, versions, messages.

Reading and writing files (run folders, JSON, atomic writes) is `experiments.rundir`'s, which
imports this module; this module imports nothing of it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import sys
import types
from typing import Dict, List, Optional, Tuple


def light_library_module(name: str) -> types.ModuleType:
    """`dcm_keras.<name>`, a library module that imports nothing heavy (`errors`, `precision`,
    `atomic`),
    without running `dcm_keras/__init__`, which starts Keras and TensorFlow.

    The scripts check their flags and files before the backend starts (0.3 s against 7 s for a
    mistake). The module is registered under its own name, so a later `import dcm_keras` reuses
    this very module object: there is one `UserError` class, whichever was imported first.
    """
    full = f"dcm_keras.{name}"
    if full not in sys.modules:
        package = importlib.util.find_spec("dcm_keras")  # locates the package, runs nothing
        path = os.path.join(package.submodule_search_locations[0], f"{name}.py")
        spec = importlib.util.spec_from_file_location(full, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[full]
            raise
    return sys.modules[full]


# The one error type of user mistakes, the library's: the scripts end with its one-line message.
UserError = light_library_module("errors").UserError

__all__ = ["METHODS", "UserError", "light_library_module", "check_path_flag", "check_output_file",
           "steady_epoch_seconds", "check_data_dir", "check_name",
           "error_percent", "versions", "one_line", "image_folder_summary"]

# method -> (auxiliary heads?, connections preset). The paper's Table 1 names.
METHODS: Dict[str, Tuple[bool, str]] = {
    "baseline": (False, "none"),
    "dsn": (True, "none"),
    "dks": (True, "dks"),
    "dml": (False, "final"),
    "dcm": (True, "dense"),
    "same_stage": (True, "same_stage"),
    "cross_stage": (True, "cross_stage"),
}


def check_path_flag(value: Optional[str], flag: str) -> None:
    """Refuses an empty path: `--model_dir=$UNSET` would otherwise write into the current folder.
    """
    if value is not None and not value.strip():
        raise UserError(f"{flag} is empty ({value!r}); give a path (an unset shell variable "
                        "expands to nothing).")


def check_output_file(path: Optional[str], flag: str) -> None:
    """Refuses an output file path that cannot be written as a file (empty, a folder, or below
    a file), before any work whose result it would hold."""
    if path is None:
        return
    check_path_flag(path, flag)
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise UserError(f"{flag} {path} is a folder; give a file path, e.g. "
                        f"{os.path.join(path, 'result.json')}.")
    parent = os.path.dirname(full)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{flag} {path} cannot be created: {parent} is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be created: {parent} is not writable.")


def steady_epoch_seconds(history: List[dict]) -> Optional[float]:
    """Median training time of an epoch (without validation), leaving out the first epoch.

    The first epoch also traces the step functions; so does the first epoch after a resume,
    which the median absorbs.
    """
    seconds = [row["train_seconds"] for row in history if row.get("train_seconds", 0) > 0]
    if len(seconds) > 1:
        seconds = seconds[1:]
    return statistics.median(seconds) if seconds else None


def check_data_dir(data_dir: Optional[str]) -> None:
    """Refuses a `--data_dir` that does not exist.

    The data module would otherwise fall back to other locations (Fashion-MNIST) or try to
    download into it (tfds), hiding a mistyped path.
    """
    if data_dir and not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir {data_dir} does not exist (create it first if tfds "
                                "should download into it).")


def check_name(value: str, what: str) -> str:
    """Refuses a file or folder name that could leave the folder it is joined to.

    Names built from flags or config files (network names, run names) become path components;
    an absolute path, a separator, `..` or a leading dot would let them escape or hide.
    """
    if (not isinstance(value, str) or not value or value in (".", "..") or value.startswith(".")
            or os.sep in value or (os.altsep and os.altsep in value) or "\0" in value):
        raise UserError(f"{what} {value!r} is not a plain name (no path separators, no leading "
                        "dot, not '..').")
    return value


def error_percent(accuracy: float) -> float:
    """Top-k error in percent from an accuracy in [0, 1], without the float32 noise of the
    metric (float32 0.8 gives 20.0, not 19.999998807907104). Four decimals keep every count:
    one example of N is 100 / N points, 0.0002 for N = 500,000."""
    return round(100.0 * (1.0 - float(accuracy)), 4)


def versions() -> Dict[str, str]:
    """Versions of the software a result was produced with."""
    import importlib.metadata

    import keras

    import dcm_keras

    out = {"python": platform.python_version(), "keras": keras.__version__,
           "backend": keras.backend.backend(), "dcm_keras": dcm_keras.__version__}
    for package in ("tensorflow", "jax", "jaxlib", "torch"):  # read without importing them
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def one_line(error: BaseException) -> str:
    """An exception as a single line, for `sys.exit(f"error: ...")`."""
    text = " ".join(str(error).split())
    return text or type(error).__name__


def image_folder_summary(dataset: str, info, num_train: int, num_test: int) -> str:
    """One line on what an image folder holds and what a run uses of it (`info`: its
    `dcm_keras.data.DatasetInfo`), so a wrong folder or a forgotten class shows before training."""
    names = list(info.class_names or ())
    shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    used = "" if (num_train, num_test) == (info.num_train, info.num_test) else (
        f"; using {num_train} and {num_test} (stratified subsets)")
    height, width, channels = info.image_shape
    return (f"Image folder {dataset[len('image_folder:'):]}: {info.num_classes} classes ({shown}), "
            f"{info.num_train} training and {info.num_test} test images{used}; resized to "
            f"{height}x{width}x{channels}.")

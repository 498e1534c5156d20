"""Helpers shared by the experiment scripts: methods, run-directory files, versions.

Kept free of TensorFlow imports so `compare.py` can read results without paying for them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from typing import Dict, Iterator, List, Optional, Tuple, Union

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

FLAGS_FILE = "flags.json"
FLAGFILE = "flagfile.txt"
RESULTS_FILE = "results.json"
HISTORY_FILE = "history.csv"
BACKUP_DIR = "backup"
LOG_DIR = "logs"
PLOT_FILE = "test_error.png"
# Flags that locate things rather than define the experiment: a resumed run may change them.
NOT_IDENTITY = ("model_dir", "data_dir", "overwrite")


class UserError(ValueError):
    """A mistake in the command line, a config file or a run directory, which the user can fix.

    The scripts end with its one-line message instead of a traceback. A ValueError, so callers
    that caught the ValueErrors raised before still catch it. (The library's own type,
    `dcm_keras.errors.UserError`, is not its base: importing dcm_keras starts TensorFlow, which
    these checks run before.)
    """


class DamagedJSON(ValueError):
    """Text that is not valid JSON, or nested too deeply for Python to read; `msg` says which
    (and `pos` where, when known), as `json.JSONDecodeError` does."""

    def __init__(self, msg: str, pos: Optional[int] = None):
        super().__init__(msg if pos is None else f"{msg} at character {pos}")
        self.msg, self.pos = msg, pos


def parse_json(data: Union[str, bytes]):
    """`data` parsed as JSON: the one reader of every JSON file and flag the scripts read.

    Raises DamagedJSON (a ValueError) for anything unreadable, so the callers' one-line "damaged"
    message covers it: invalid JSON, undecodable bytes, and nesting deeper than the interpreter
    can recurse (`[[[[...`), which `json.loads` answers with a RecursionError, not a ValueError.
    """
    try:
        return json.loads(data)
    except json.JSONDecodeError as error:
        raise DamagedJSON(error.msg, error.pos) from None
    except UnicodeDecodeError as error:
        raise DamagedJSON(f"not UTF-8 text ({error.reason})", error.start) from None
    except RecursionError:
        raise DamagedJSON("nested deeper than Python can read (about "
                          f"{sys.getrecursionlimit()} levels)") from None
    except ValueError as error:  # e.g. an integer past Python's 4,300-digit conversion limit
        raise DamagedJSON(str(error)) from None


def read_json(path: str) -> Optional[dict]:
    """The JSON object in `path`, or None when the file is absent or unreadable (half-written)."""
    try:
        with open(path, "rb") as f:
            value = parse_json(f.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def load_json_object(path: str, what: str) -> dict:
    """The JSON object in file `path`; UserError naming `what`, the path and the problem when it
    is missing, damaged or not an object."""
    try:
        with open(path, "rb") as f:
            value = parse_json(f.read())
    except OSError as error:
        raise UserError(f"{what} {path} cannot be read ({error.strerror or one_line(error)}).")
    except DamagedJSON as error:
        raise UserError(f"{what} {path} is damaged: {error}.") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold a JSON object, not a {type(value).__name__}.")
    return value


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


def _stem_and_extension(name: str) -> Tuple[str, str]:
    """`name` split before its extension, `.weights.h5` (Keras insists on it) counting as one."""
    if name.endswith(".weights.h5"):
        return name[:-len(".weights.h5")], ".weights.h5"
    return os.path.splitext(name)


@contextlib.contextmanager
def replacing(path: str) -> Iterator[str]:
    """Yields a new temporary path beside `path`; once the caller has written it, moves it there.

    Every file the scripts write goes through here, so a kill never leaves a truncated file and a
    symbolic link planted at `path` at any moment is replaced, never written through: the
    temporary file gets a fresh random name (created with O_EXCL, which follows no link) and
    `os.replace` swaps it in. It keeps `path`'s extension, by which savefig and Keras choose the
    format. On an error the temporary file is removed and `path` is left as it was.
    """
    directory, base = os.path.split(os.path.abspath(path))
    stem, ext = _stem_and_extension(base)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Writes a text file atomically (see `replacing`)."""
    with replacing(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json(path: str, value) -> None:
    """Writes JSON atomically, so a kill never leaves a truncated file behind (see `replacing`)."""
    write_text(path, json.dumps(value, indent=2, sort_keys=False, default=_json_default) + "\n")


def check_free_space(directory: str, needed: int, what: str,
                     where: Optional[str] = None) -> None:
    """Raises OSError(ENOSPC) with a clear message when `directory` has less than `needed` bytes.

    Checked before large writes: HDF5 reacts to a full disk with a storm of errors and can crash
    the process, and a failed write is better refused before it starts. The message names
    `where` (the folder as the user knows it), else `directory` with a `/proc/self/fd/N` path
    (a folder held open) resolved to the folder it is.
    """
    free = shutil.disk_usage(directory).free
    if free < needed:
        if where is None:
            where = directory
            if directory.startswith("/proc/self/fd/"):
                with contextlib.suppress(OSError):
                    where = os.readlink(directory)
        raise OSError(errno.ENOSPC, f"not enough disk space for {what}: it needs about "
                      f"{needed / 2**20:.1f} MiB and {where} has {free / 2**20:.1f} MiB free")


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def completed_results(model_dir: str) -> Optional[dict]:
    """The results of a finished run in `model_dir`, or None if it has not finished."""
    results = read_json(os.path.join(model_dir, RESULTS_FILE))
    return results if results and results.get("complete") else None


def read_history(path: str) -> List[dict]:
    """Per-epoch rows of a history.csv file, one per epoch (the last write wins; see
    `run_dir.parse_history`), or [] when there is none."""
    if not os.path.isfile(path):
        return []
    from experiments.run_dir import parse_history  # it imports this module

    with open(path, newline="") as f:
        return parse_history(f.read())


def flag_differences(old: dict, new: dict) -> List[str]:
    """`name: old -> new` for each flag that defines the experiment and differs.

    Flags that only locate things (NOT_IDENTITY) may change between a run and its resumption.
    """
    diffs = []
    for name, value in new.items():
        if name in NOT_IDENTITY:
            continue
        if json.dumps(old.get(name)) != json.dumps(value):
            diffs.append(f"{name}: {old.get(name)!r} -> {value!r}")
    return diffs


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


def check_no_symlinks(root: str, *relative: str) -> None:
    """Refuses to write `root/<relative>` when it would go through a symbolic link.

    `root` is the folder the user named and may itself be a link; below it, no component of a path
    the scripts write (a file, or a folder they create) may be a link, wherever it points: writing
    through one would put files outside the folder the user named, or clobber another file inside.
    """
    root = os.path.abspath(root)
    for rel in relative:
        path = os.path.normpath(os.path.join(root, rel))
        if os.path.commonpath([root, path]) != root:
            raise UserError(f"{rel!r} would be written outside {root}.")
        current = root
        for part in os.path.relpath(path, root).split(os.sep):
            if part in ("", os.curdir):
                continue
            current = os.path.join(current, part)
            if os.path.islink(current):
                raise UserError(f"{current} is a symbolic link (to {os.readlink(current)}); "
                                "refusing to write through it. Remove it, or choose another "
                                "folder.")
            if not os.path.isdir(current):
                break  # nothing below it exists yet, so nothing below it can be a link


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

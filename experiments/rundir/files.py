"""The files of a run folder by name, and how the scripts read and write files given by path.

JSON is read through `parse_json`, which turns every unreadable text (a RecursionError included)
into `DamagedJSON`; files are written atomically through `dcm_keras.atomic.replacing`. Paths
built from flags are checked for symbolic links (`check_no_symlinks`) and disks for room
(`check_free_space`) before large writes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from typing import Optional, Union

from experiments.common import UserError, light_library_module, one_line

# The library's atomic write, loaded without dcm_keras/__init__ (which starts TensorFlow): the
# scripts check and write their files before the backend starts.
replacing = light_library_module("atomic").replacing

FLAGS_FILE = "flags.json"
FLAGFILE = "flagfile.txt"
RESULTS_FILE = "results.json"
HISTORY_FILE = "history.csv"
BACKUP_DIR = "backup"
LOG_DIR = "logs"
PLOT_FILE = "test_error.png"

__all__ = ["FLAGS_FILE", "FLAGFILE", "RESULTS_FILE", "HISTORY_FILE", "BACKUP_DIR", "LOG_DIR",
           "PLOT_FILE", "DamagedJSON", "parse_json", "read_json", "load_json_object", "replacing",
           "write_text", "write_json", "json_default", "check_free_space", "check_no_symlinks"]


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


def write_text(path: str, text: str) -> None:
    """Writes a text file atomically (see `dcm_keras.atomic.replacing`)."""
    with replacing(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json(path: str, value) -> None:
    """Writes JSON atomically, so a kill never leaves a truncated file behind (see `replacing`)."""
    write_text(path, json.dumps(value, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(value):
    """What `json.dumps` writes for the values it does not know: numpy scalars, tuples, sets."""
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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

"""Atomic file replacement: a file written by path is complete or absent, never truncated.

`replacing` is the one way `save_network` and the experiment scripts (`experiments.rundir.files`,
their plots and tables) write a file given by path. It imports nothing of dcm_keras's, so the
scripts use it too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator, Tuple


def stem_and_extension(name: str) -> Tuple[str, str]:
    """`name` split before its extension, `.weights.h5` (Keras insists on it) counting as one."""
    if name.endswith(".weights.h5"):
        return name[:-len(".weights.h5")], ".weights.h5"
    return os.path.splitext(name)


@contextlib.contextmanager
def replacing(path: str, verb: str = "write") -> Iterator[str]:
    """Yields a new temporary path beside `path`; once the caller has written it, moves it there.

    A kill never leaves a truncated file, and a symbolic link planted at `path` at any moment is
    replaced, never written through: the temporary file gets a fresh random name (created with
    O_EXCL, which follows no link) and `os.replace` swaps it in. It keeps `path`'s extension, by
    which savefig and Keras choose the format. On an error the temporary file is removed and
    `path` is left as it was. When the temporary file cannot be created (a read-only folder, say),
    the OSError of the same type names `path`, not the temporary: "Cannot <verb> <path>: ...".
    """
    directory, base = os.path.split(os.path.abspath(path))
    stem, ext = stem_and_extension(base)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=directory)
    except OSError as error:
        raise type(error)(error.errno, f"Cannot {verb} {path}: {error.strerror}") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise

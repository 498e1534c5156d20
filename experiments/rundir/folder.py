"""A folder held open (`Folder`): every file and subfolder reached relative to its descriptor.

Files are created, replaced, read and removed with `dir_fd` and `O_NOFOLLOW`, subfolders opened
once with `O_DIRECTORY | O_NOFOLLOW` and checked to be still there before each write; libraries
that need a path get `/proc/self/fd/<fd>/<name>` (`Folder.proc_path`). What the package promises
as a whole is in `experiments/rundir/__init__.py`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional

from dcm_keras.atomic import stem_and_extension
from experiments.common import UserError
from experiments.rundir import files

if TYPE_CHECKING:
    from experiments.rundir.directory import RunDirectory

# Temporaries of `Folder.replacing`, `dcm_keras.atomic.replacing` (so `save_network`):
# `.<stem>.<random 8>.tmp<ext>`. Only these (for the stems of the run's own files) are swept
# beyond the manifest: a library makes them under names the manifest cannot know in advance.
TEMPORARY = re.compile(r"\.(?P<stem>.+)\.[A-Za-z0-9_]{8}\.tmp(?P<ext>\.[A-Za-z0-9.]+)")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def temporary_name(name: str) -> str:
    """A fresh temporary name for `name` in the form the sweeps recognise (`TEMPORARY`)."""
    stem, ext = stem_and_extension(name)
    return f".{stem}.{secrets.token_hex(4)}.tmp{ext}"


def describe_entry(folder: "Folder", name: str) -> str:
    """What is at `name` now, for an error message: 'a symbolic link to X', 'missing', ..."""
    try:
        info = os.stat(name, dir_fd=folder.fd, follow_symlinks=False)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(info.st_mode):
        return f"a symbolic link to {os.readlink(name, dir_fd=folder.fd)}"
    return "a folder" if stat.S_ISDIR(info.st_mode) else "a file"


def link_error(path: str, target: str) -> UserError:
    """The error for a symbolic link at `path` (pointing to `target`) where a write would go."""
    return UserError(f"{path} is a symbolic link (to {target}); refusing to write through it. "
                     "Remove it, or choose another folder.")


def open_no_follow(dir_fd: int, dir_path: str, name: str, flags: int) -> int:
    """`name` in the folder `dir_fd` opened with O_NOFOLLOW; a link there is one clear error."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise link_error(os.path.join(dir_path, name),
                             os.readlink(name, dir_fd=dir_fd)) from None
        raise


class Folder:
    """A folder held open: every operation is relative to its descriptor and follows no link."""

    def __init__(self, fd: int, path: str, root: "RunDirectory", relative: str,
                 parent: Optional["Folder"] = None, name: Optional[str] = None):
        self.fd, self.path, self.root, self.relative = fd, path, root, relative
        self.parent, self.name = parent, name
        self._children: Dict[str, Folder] = {}

    # --- names ---------------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self.relative}{name}"

    def proc_path(self, name: str = "") -> str:
        """A path to `name` that resolves through this open folder (for libraries wanting one)."""
        base = f"/proc/self/fd/{self.fd}"
        if not os.path.isdir(base):  # no /proc: the folder's path (no protection from renames)
            base = self.path
        return os.path.join(base, name) if name else base

    def lstat(self, name: str) -> Optional[os.stat_result]:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def is_link(self, name: str) -> bool:
        info = self.lstat(name)
        return info is not None and stat.S_ISLNK(info.st_mode)

    def names(self) -> List[str]:
        return sorted(os.listdir(self.fd))

    # --- subfolders ----------------------------------------------------------------------------

    def child(self, name: str, create: bool = True) -> Optional["Folder"]:
        """Subfolder `name`, opened once (created if `create`); None when absent and not created.

        Raises UserError for a link (or a file) at `name`.
        """
        if name in self._children:
            self._children[name].check_still_there()
            return self._children[name]
        path = os.path.join(self.path, name)
        if create:
            self.root.record(self._key(name) + "/")
            try:
                os.mkdir(name, 0o755, dir_fd=self.fd)
            except FileExistsError:
                pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR):
                if self.is_link(name):
                    raise link_error(path, os.readlink(name, dir_fd=self.fd)) from None
                raise UserError(f"{path} is a file, not a folder; remove it, or choose another "
                                "folder.") from None
            raise
        folder = Folder(fd, path, self.root, self._key(name) + "/", parent=self, name=name)
        self._children[name] = folder
        return folder

    def check_still_there(self) -> None:
        """Raises UserError when this subfolder's name no longer leads to the folder held open."""
        if self.parent is None:
            return
        now = self.parent.lstat(self.name)
        held = os.fstat(self.fd)
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise UserError(f"{self.path} was replaced while the run was writing to it (it is now "
                            f"{describe_entry(self.parent, self.name)}); refusing to write "
                            "through it. Remove it and re-run the command to resume.")

    # --- files ---------------------------------------------------------------------------------

    def open_read(self, name: str) -> Optional[int]:
        """A descriptor of regular file `name` (None when absent); UserError for a link."""
        try:
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise link_error(os.path.join(self.path, name),
                                 os.readlink(name, dir_fd=self.fd)) from None
            raise

    def read_bytes(self, name: str) -> Optional[bytes]:
        fd = self.open_read(name)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def checksum(self, name: str) -> Optional[tuple]:
        """`(size, sha256 hex)` of regular file `name`, or None when it is absent."""
        fd = self.open_read(name)
        if fd is None:
            return None
        digest = hashlib.sha256()
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
            return f.tell(), digest.hexdigest()

    @contextlib.contextmanager
    def replacing(self, name: str, warn_replaced: bool = False) -> Iterator[str]:
        """Yields a path to a new temporary file; once written, renames it to `name`.

        The temporary file is recorded in the manifest before it is created (O_EXCL, follows no
        link) and is fsynced before the rename. A link at `name` is replaced, never followed;
        `warn_replaced` prints a warning when something other than what this process last wrote
        there was found (see `HistoryFile`).
        """
        self.check_still_there()
        tmp = temporary_name(name)
        self.root.record(self._key(name), self._key(tmp))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=self.fd)
        os.close(fd)
        try:
            yield self.proc_path(tmp)
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise UserError(f"{os.path.join(self.path, tmp)} was replaced while it was "
                                    "written; refusing to use it.")
                os.fchmod(fd, 0o644)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.check_still_there()
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            self.root.unrecord(self._key(tmp))
            raise
        self.root.unrecord(self._key(tmp))

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.replacing(name) as tmp:
            with open(tmp, "wb") as f:  # a fresh file of ours, reached through the open folder
                f.write(data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def write_json(self, name: str, value) -> None:
        """JSON without bare NaN or Infinity (invalid JSON): a ValueError names the problem."""
        self.write_text(name, json.dumps(value, indent=2, allow_nan=False,
                                         default=files.json_default) + "\n")

    def remove(self, name: str) -> None:
        """Removes file `name` (a link itself, never its target) and forgets it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)
        self.root.unrecord(self._key(name))

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        for child in self._children.values():
            child.close()
        self._children.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


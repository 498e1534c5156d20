"""The run directory of `experiments.train` as one guarded object (docs/run_directory.md).

`RunDirectory.open` opens `--model_dir` once; every file and subfolder of the run is then created,
replaced, read and removed relative to that open folder (`dir_fd`, `O_NOFOLLOW`, `O_DIRECTORY`),
so renaming the folder or planting a symbolic link anywhere inside it never redirects a write:

- a subfolder (`backup/`, `logs/`) is opened once, refusing a link, and is checked to be still
  there before each write into it: one that has become a link (or another folder) stops the run
  with an error instead of being written through;
- files are written under a fresh temporary name and renamed into place, replacing a link planted
  at their name instead of following it; libraries that need a path (Keras, h5py, matplotlib, the
  TensorBoard writer) get `/proc/self/fd/<fd>/<name>`, which resolves through the open folder;
- the chief holds an exclusive `flock` on `.dcm_lock` for the run's whole life: a second process
  on the same folder stops with one line naming the holder's PID;
- `.dcm_manifest.json` lists every file the run wrote (temporaries included, recorded before they
  are created), so `--overwrite` and the sweeps of stale files remove exactly those and nothing
  the user keeps in the folder. A run written before the manifest existed is adopted once: the
  names such a run writes are recorded as it is opened.

Kept free of TensorFlow imports, like `experiments.common`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import secrets
import stat
import weakref
from typing import Dict, Iterable, Iterator, List, Optional

from experiments import common
from experiments.common import UserError

LOCK_FILE = ".dcm_lock"
MANIFEST_FILE = ".dcm_manifest.json"
# What a run wrote before the manifest existed (adopted when such a run is opened).
_LEGACY_BACKUP = re.compile(r"epoch\d{4}\.weights\.h5|training_metadata\.json|latest\.weights\.h5")
_EVENTS = re.compile(r"events\.out\.tfevents\..+")
# Temporaries of `replacing`, `common.replacing` and `dcm_keras.save_network`: `.<stem>.<random
# 8>.tmp<ext>`. Only these (for the stems of the run's own files) are swept beyond the manifest:
# a library makes them under names the manifest cannot know in advance.
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.[A-Za-z0-9_]{8}\.tmp(?P<ext>\.[A-Za-z0-9.]+)")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _stem_and_extension(name: str):
    return common._stem_and_extension(name)


def _temporary_name(name: str) -> str:
    stem, ext = _stem_and_extension(name)
    return f".{stem}.{secrets.token_hex(4)}.tmp{ext}"


def _describe_entry(folder: "Folder", name: str) -> str:
    """What is at `name` now, for an error message: 'a symbolic link to X', 'missing', ..."""
    try:
        info = os.stat(name, dir_fd=folder.fd, follow_symlinks=False)
    except FileNotFoundError:
        return "missing"
    if stat.S_ISLNK(info.st_mode):
        return f"a symbolic link to {os.readlink(name, dir_fd=folder.fd)}"
    return "a folder" if stat.S_ISDIR(info.st_mode) else "a file"


def link_error(path: str, target: str) -> UserError:
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
                            f"{_describe_entry(self.parent, self.name)}); refusing to write "
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
        tmp = _temporary_name(name)
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
                                         default=common._json_default) + "\n")

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


class RunDirectory(Folder):
    """`--model_dir` held open, with its lock and its manifest of what the run wrote."""

    @classmethod
    def open(cls, path: str, lock: bool, create: bool = True,
             manifest: bool = True) -> Optional["RunDirectory"]:
        """Opens (creating it if `create`) the folder at `path`, which may itself be a link.

        With `lock`, takes the run's lock or raises UserError naming the process holding it.
        Without `manifest`, what is written is remembered in memory only (a scratch folder, or
        a backup folder used on its own). Returns None when the folder does not exist and
        `create` is false.
        """
        path = os.path.abspath(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotADirectoryError(f"--model_dir {path} is a file, not a directory.")
        created = []
        if create:
            missing, parent = [], path
            while not os.path.lexists(parent):
                missing.append(parent)
                parent = os.path.dirname(parent)
            for folder in reversed(missing):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(folder, 0o755)
                    created.append(folder)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if create:
                raise
            return None
        run = cls(fd, path, None, "")
        run.root = run
        run._created = created
        run._lock_fd = None
        run._manifest = None if manifest else []
        run._persist = manifest
        if lock:
            try:
                run._take_lock()
            except BaseException:
                run.close()
                raise
        return run

    # --- the lock ------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        for _ in range(10):
            fd = open_no_follow(self.fd, self.path, LOCK_FILE, os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UserError(f"{self.path} is in use by another run (process {holder}); wait "
                                "for it to end or stop it, then re-run this command.") from None
            # The holder before us may have removed the file after we opened it: lock the file
            # that is at the name now, not an orphan.
            there, held = self.lstat(LOCK_FILE), os.fstat(fd)
            if there is not None and (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._lock_fd = fd
                return
            os.close(fd)
        raise UserError(f"cannot take the lock of {self.path} (its lock file keeps changing).")

    def close(self) -> None:
        """Releases the lock (removing its file) and removes a folder `open` created, if empty."""
        if getattr(self, "_lock_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.unlink(LOCK_FILE, dir_fd=self.fd)
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        super().close()
        for folder in reversed(getattr(self, "_created", [])):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only while empty: nothing was written
        self._created = []

    def keep(self) -> None:
        """The run has written something: `close` keeps the folders `open` created."""
        self._created = []

    # --- the manifest --------------------------------------------------------------------------

    def _load_manifest(self) -> List[str]:
        if self._manifest is None:
            data = self.read_bytes(MANIFEST_FILE)
            names: List[str] = []
            if data is not None:
                try:
                    value = common.parse_json(data)
                    names = [n for n in value.get("files", []) if _valid_entry(n)]
                except (ValueError, AttributeError, TypeError):
                    print(f"warning: {os.path.join(self.path, MANIFEST_FILE)} is unreadable; "
                          "only the files this run writes from now on are known as its own.",
                          flush=True)
            self._manifest = list(dict.fromkeys(names))
        return self._manifest

    def _save_manifest(self) -> None:
        if not self._persist:
            return
        text = json.dumps({"files": self._manifest}, indent=0) + "\n"
        tmp = _temporary_name(MANIFEST_FILE)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.rename(tmp, MANIFEST_FILE, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        self.keep()

    def has_manifest(self) -> bool:
        return self.lstat(MANIFEST_FILE) is not None

    def recorded(self) -> List[str]:
        return list(self._load_manifest())

    def record(self, *keys: str) -> None:
        """Adds relative paths (a folder ends in '/') to the manifest, before they are written."""
        manifest = self._load_manifest()
        new = [k for k in keys if k not in manifest]
        if new:
            manifest.extend(new)
            self._save_manifest()

    def unrecord(self, *keys: str) -> None:
        manifest = self._load_manifest()
        if any(k in manifest for k in keys):
            self._manifest = [k for k in manifest if k not in keys]
            self._save_manifest()

    def adopt(self, names: Iterable[str]) -> None:
        """Records what a run written before the manifest existed left here (legacy runs)."""
        keys = [n for n in names if self.lstat(n) is not None]
        for folder, pattern, subfolders in (("backup", _LEGACY_BACKUP, ("",)),
                                            ("logs", _EVENTS, ("train/", "validation/"))):
            if self.lstat(folder) is None or self.is_link(folder):
                continue
            keys.append(f"{folder}/")
            for sub in subfolders:
                try:
                    entries = os.listdir(self.proc_path(f"{folder}/{sub}"))
                except OSError:
                    continue
                if sub:
                    keys.append(f"{folder}/{sub}")
                keys += [f"{folder}/{sub}{n}" for n in entries if pattern.fullmatch(n)]
        self.record(*keys)

    def remove_recorded(self, under: str = "", keep: Iterable[str] = ()) -> None:
        """Removes every recorded file (below folder `under`, e.g. 'backup/') but `keep`, then
        the recorded folders left empty; what the user put there stays."""
        keep = set(keep)
        files = [k for k in self.recorded() if k.startswith(under) and not k.endswith("/")
                 and k not in keep]
        for key in files:
            folder, name = self._folder_of(key)
            if folder is None:
                self.unrecord(key)
                continue
            folder.remove(name)
        folders = [k for k in self.recorded() if k.startswith(under) and k.endswith("/")
                   and k not in keep]
        for key in sorted(folders, key=len, reverse=True):
            parent, name = self._folder_of(key.rstrip("/"))
            if parent is not None:
                with contextlib.suppress(OSError):  # still holds the user's files: kept
                    os.rmdir(name, dir_fd=parent.fd)
                    child = parent._children.pop(name, None)
                    if child is not None:
                        child.close()
                    self.unrecord(key)
            else:
                self.unrecord(key)

    def _folder_of(self, key: str):
        """`(open folder, name)` of a relative path; the folder None when it is gone or a link."""
        *parts, name = key.split("/")
        folder: Folder = self
        for part in parts:
            try:
                folder = folder.child(part, create=False)
            except UserError:
                return None, name
            if folder is None:
                return None, name
        return folder, name

    def sweep_temporaries(self, folder: Folder, names: Iterable[str]) -> None:
        """Removes the temporaries a killed process left for `names` in `folder`: the recorded
        ones, and those of the libraries' `.<stem>.<8 characters>.tmp<ext>` form."""
        wanted = {_stem_and_extension(n) for n in names}
        for entry in folder.names():
            match = _TEMPORARY.fullmatch(entry)
            recorded = folder._key(entry) in self.recorded() and ".tmp" in entry
            if recorded or (match and (match["stem"], match["ext"]) in wanted):
                info = folder.lstat(entry)
                if info is not None and not stat.S_ISDIR(info.st_mode):
                    folder.remove(entry)


def open_folder(path) -> Optional[RunDirectory]:
    """An existing folder given by path, opened on its own (no lock, no manifest file)."""
    return RunDirectory.open(os.fspath(path), lock=False, create=False, manifest=False)


def _valid_entry(key) -> bool:
    """A manifest entry: a relative path of plain names inside the run folder."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\0" in key:
        return False
    return all(part not in ("", ".", "..") for part in key.rstrip("/").split("/"))


# --- history.csv ---------------------------------------------------------------------------------


def parse_history(text: str) -> List[dict]:
    """Per-epoch rows of a history.csv text, one per epoch (the last row of an epoch wins)."""
    rows: Dict[int, dict] = {}
    for row in csv.DictReader(io.StringIO(text, newline="")):
        if None in row or None in row.values():
            continue  # too few or too many fields: a line cut short by a kill
        try:
            epoch = int(row.pop("epoch"))
        except (ValueError, KeyError):
            continue
        parsed = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value)
            except (TypeError, ValueError):
                parsed[key] = math.nan
        rows[epoch] = {"epoch": epoch, **parsed}
    return [rows[e] for e in sorted(rows)]


def history_text(rows: List[dict]) -> str:
    """history.csv for `rows`: `epoch`, then every key in sorted order (as Keras's CSVLogger)."""
    keys = sorted({k for row in rows for k in row if k != "epoch"})
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=["epoch"] + keys, restval="NA", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (v if not (isinstance(v, float) and math.isnan(v)) else "NA")
                         for k, v in row.items()})
    return out.getvalue()


def _close_all(descriptors: List[int]) -> None:
    while descriptors:
        with contextlib.suppress(OSError):
            os.close(descriptors.pop())


class HistoryFile:
    """history.csv, rewritten whole (atomically) after every epoch from the rows kept in memory.

    A link or another file put at its name during the run is replaced, with a warning, by the
    complete history: the run's results never depend on what is at the name when it ends. What
    the run last wrote there is held open, so its inode number cannot be given to a file or link
    put there instead (which then passed for it), and the type is compared as well.
    """

    def __init__(self, folder: Folder, name: str = common.HISTORY_FILE):
        self.folder, self.name = folder, name
        data = folder.read_bytes(name)
        self.rows = parse_history(data.decode(errors="replace")) if data else []
        self._held: List[int] = []  # the descriptor of what is at the name, while held
        weakref.finalize(self, _close_all, self._held)
        self._hold()

    def _hold(self) -> None:
        _close_all(self._held)
        try:
            fd = self.folder.open_read(self.name)
        except UserError:  # a link put there since: the next `add` says so and replaces it
            fd = None
        if fd is not None:
            self._held.append(fd)

    def _replaced(self) -> bool:
        """Whether what is at the name now is not the file this run last wrote (or found)."""
        if not self._held:
            return False
        now, held = self.folder.lstat(self.name), os.fstat(self._held[0])
        return now is None or (now.st_dev, now.st_ino, stat.S_IFMT(now.st_mode)) != (
            held.st_dev, held.st_ino, stat.S_IFMT(held.st_mode))

    def add(self, epoch: int, logs: dict) -> None:
        row = {"epoch": int(epoch)}
        for key, value in sorted(logs.items()):
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                row[key] = math.nan
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        if self._replaced():
            print(f"warning: {os.path.join(self.folder.path, self.name)} was replaced or removed "
                  f"during the run (it is now {_describe_entry(self.folder, self.name)}); "
                  "rewriting it from the rows this run keeps.", flush=True)
        self.folder.write_text(self.name, history_text(self.rows))
        self._hold()

    def close(self) -> None:
        """Lets go of the file held open (also done when the object is collected)."""
        _close_all(self._held)

    def complete_rows(self) -> List[dict]:
        """The rows with every key of any epoch, NaN where an epoch has none (as history.csv's
        NA): epochs without evaluation still carry the `val_*` keys."""
        keys = sorted({k for row in self.rows for k in row})
        return [{k: row.get(k, math.nan) for k in keys} for row in self.rows]


# --- opening --model_dir for a training run -------------------------------------------------------


def network_file(k: int) -> str:
    """The exported file of network k (0-based) in --model_dir."""
    return f"net{k + 1}.keras"


def run_files(num_nets: int) -> List[str]:
    """The files a run of `num_nets` networks writes at the top of --model_dir."""
    return [common.FLAGS_FILE, common.FLAGFILE, common.HISTORY_FILE, common.RESULTS_FILE,
            common.PLOT_FILE] + [network_file(k) for k in range(num_nets)]


def identity(flags_json: dict) -> dict:
    """The flags that define the experiment (flags.json less its locations)."""
    return {k: v for k, v in flags_json.items() if k not in common.NOT_IDENTITY}


def without_nan(value):
    """`value` with every NaN or infinite float replaced by None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(v) for v in value]
    return value


class TrainingRun:
    """--model_dir as a run of experiments.train sees it: opened, locked (on the chief) and
    checked against the flags; `start` then clears a replaced run and records the new one."""

    def __init__(self, folder: Optional[RunDirectory], previous: Optional[dict], replace: bool,
                 complete: bool, path: str):
        self.folder, self.previous, self.replace, self.complete = folder, previous, replace, \
            complete
        self.path = path

    @classmethod
    def open(cls, model_dir: str, flags_json: dict, overwrite: bool,
             chief: bool) -> "TrainingRun":
        """Opens --model_dir: new, resumed or replaced, or `complete` (this run, finished).

        Refuses (UserError) a folder in use by another process, one holding a run with other
        flags (unless `overwrite`), a damaged flags.json, files of the user's under the names a
        run writes, and links among them. Only the chief locks and creates the folder; the other
        workers of a multi-worker run only read it.
        """
        common.check_path_flag(model_dir, "--model_dir")  # '' is the current folder otherwise
        path = os.path.abspath(model_dir)
        folder = RunDirectory.open(path, lock=chief, create=chief, manifest=chief)
        if folder is None:  # a non-chief worker before the chief has made the folder
            return cls(None, None, False, False, path)
        try:
            return cls._check(folder, flags_json, overwrite, chief)
        except BaseException:
            folder.close()
            raise

    @classmethod
    def _check(cls, folder: RunDirectory, flags_json: dict, overwrite: bool,
               chief: bool) -> "TrainingRun":
        path, num_nets = folder.path, len(flags_json["nets"])
        previous = _read_flags(folder, overwrite)
        replace, complete = False, False
        if previous is not None:
            diffs = common.flag_differences(previous, flags_json)
            if diffs and not overwrite:
                raise UserError(f"{path} holds a run with different flags ({'; '.join(diffs)}); "
                                "use another --model_dir or pass --overwrite to replace it.")
            lost = []
            results = _read_json(folder, common.RESULTS_FILE)
            if not diffs and results is not None and results.get("complete"):
                lost = [network_file(k) for k in range(num_nets)
                        if not _is_file(folder, network_file(k))]
                if not lost:
                    complete = True
                elif not overwrite:  # a finished run keeps no other copy of its weights
                    raise UserError(f"Run in {path} finished, but {', '.join(lost)} "
                                    f"{'is' if len(lost) == 1 else 'are'} gone and a finished "
                                    "run keeps no backup to export from; pass --overwrite to "
                                    "train it again, or use another --model_dir.")
            replace = bool(diffs or lost) or previous == {}
        if chief:
            # Links are refused before anything is written (or, with --overwrite, removed).
            for name in run_files(num_nets) + [MANIFEST_FILE]:
                if folder.is_link(name):
                    raise link_error(os.path.join(path, name), os.readlink(name, dir_fd=folder.fd))
            logs = folder.child(common.LOG_DIR, create=False)
            if logs is not None:
                logs.child("train", create=False), logs.child("validation", create=False)
            folder.child(common.BACKUP_DIR, create=False)
            if previous is not None and not folder.has_manifest():
                prev_nets = previous.get("nets")
                folder.adopt(run_files(len(prev_nets) if isinstance(prev_nets, list)
                                       else num_nets))
        if previous is None and chief and not overwrite and not folder.has_manifest():
            # No flags.json, yet files under the names a run writes: not this script's run (it
            # writes flags.json first), so they are the user's. Never replace them unasked.
            taken = sorted(n for n in run_files(num_nets) + [common.BACKUP_DIR, common.LOG_DIR]
                           if folder.lstat(n) is not None)
            if taken:
                raise UserError(f"{path} holds {', '.join(taken)} but no flags.json, so not a "
                                "run of this script; use another --model_dir or pass --overwrite "
                                "to replace them.")
        return cls(folder, previous, replace, complete, path)

    def backup_folder(self, create: bool) -> Optional[Folder]:
        return self.folder.child(common.BACKUP_DIR, create=create) if self.folder else None

    def start(self, flags_json: dict, flagfile: str) -> None:
        """Clears the replaced run (exactly the files it recorded), sweeps stale temporaries and
        records this run's flags (chief only)."""
        folder = self.folder
        if self.replace:
            folder.remove_recorded()
        folder.sweep_temporaries(folder, run_files(len(flags_json["nets"])))
        backup = folder.child(common.BACKUP_DIR)
        folder.sweep_temporaries(backup, [])
        folder.write_json(common.FLAGS_FILE, flags_json)
        folder.write_text(common.FLAGFILE, flagfile)

    def finish(self) -> None:
        """Removes the backup (the exported networks and results.json now hold the run)."""
        self.folder.remove_recorded(under=common.BACKUP_DIR + "/")


def log_folders(folder: Folder) -> List[Folder]:
    """`logs/`, `logs/train/`, `logs/validation/` of a run folder, opened (refusing links)."""
    logs = folder.child(common.LOG_DIR)
    return [logs, logs.child("train"), logs.child("validation")]


def record_event_files(folders: List[Folder]) -> None:
    """Records TensorBoard's event files in the run's log folders (checked to be still there)."""
    for folder in folders[1:]:
        folder.check_still_there()
        folder.root.record(*[folder._key(n) for n in folder.names() if _EVENTS.fullmatch(n)])


def _read_json(folder: Folder, name: str):
    try:
        data = folder.read_bytes(name)
        value = common.parse_json(data) if data is not None else None
    except (OSError, ValueError, UserError):
        return None
    return value if isinstance(value, dict) else None


def _is_file(folder: Folder, name: str) -> bool:
    info = folder.lstat(name)
    return info is not None and stat.S_ISREG(info.st_mode)


def _read_flags(folder: RunDirectory, overwrite: bool) -> Optional[dict]:
    """The recorded flags.json; None when there is none, {} when damaged and `overwrite`."""
    path = os.path.join(folder.path, common.FLAGS_FILE)
    data = folder.read_bytes(common.FLAGS_FILE)
    if data is None:
        return None
    try:
        value = common.parse_json(data)
        problem = None if isinstance(value, dict) else "not a JSON object"
    except common.DamagedJSON as error:
        problem = str(error)
    if problem is None:
        return value
    if overwrite:
        print(f"note: {path} is damaged ({problem}); --overwrite replaces the run.", flush=True)
        return {}
    raise UserError(f"{path} is damaged ({problem}; {len(data)} bytes): the run's record of its "
                    "flags is written whole, so it was cut short or edited from outside. Restore "
                    "it, or pass --overwrite to replace the run in this folder.")


# --- what experiments.compare reads and writes in a run's folder ----------------------------------


def completed_results(path: str) -> Optional[dict]:
    """The results.json of a finished run in folder `path` (read without following a link
    inside it), or None when there is none."""
    folder = open_folder(path) if os.path.isdir(path) else None
    if folder is None:
        return None
    try:
        results = _read_json(folder, common.RESULTS_FILE)
    finally:
        folder.close()
    return results if results and results.get("complete") else None


def open_log(path: str, name: str):
    """Folder `path` (created if needed) and its log file `name` opened for appending, refusing
    a link at `name`: the file object (the caller closes it)."""
    folder = RunDirectory.open(path, lock=False, manifest=False)
    folder.keep()
    try:
        fd = open_no_follow(folder.fd, folder.path, name, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    finally:
        folder.close()
    return os.fdopen(fd, "a")

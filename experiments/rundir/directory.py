"""`--model_dir` held open as one folder (`RunDirectory`): its lock and its manifest.

The chief holds an exclusive `flock` on `.dcm_lock` for the run's whole life, and
`.dcm_manifest.json` lists every file the run wrote (temporaries included, recorded before they are
created), so `--overwrite` and the sweeps of stale files remove exactly those (see
`experiments/rundir/__init__.py` for the package's promises).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
from typing import Iterable, List, Optional

from dcm_keras.atomic import stem_and_extension
from experiments.common import UserError
from experiments.rundir import files
from experiments.rundir.folder import TEMPORARY, Folder, open_no_follow, temporary_name

LOCK_FILE = ".dcm_lock"
MANIFEST_FILE = ".dcm_manifest.json"
# What a run wrote before the manifest existed (adopted when such a run is opened).
_LEGACY_BACKUP = re.compile(r"epoch\d{4}\.weights\.h5|training_metadata\.json|latest\.weights\.h5")
EVENTS = re.compile(r"events\.out\.tfevents\..+")  # TensorBoard's event files


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
                    value = files.parse_json(data)
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
        tmp = temporary_name(MANIFEST_FILE)
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
                                            ("logs", EVENTS, ("train/", "validation/"))):
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
        wanted = {stem_and_extension(n) for n in names}
        for entry in folder.names():
            match = TEMPORARY.fullmatch(entry)
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


"""--model_dir as a run of `experiments.train` sees it (`TrainingRun`), and the run's files by name.

`TrainingRun.open` opens, locks and checks the folder against the flags; `start` clears a replaced
run (exactly the files it recorded) and records the new one. `completed_results` and `open_log` are
what `experiments.compare` reads and writes in a run's folder.
"""

from __future__ import annotations

import math
import os
import stat
from typing import List, Optional

from experiments import common
from experiments.common import UserError
from experiments.config import flag_differences
from experiments.rundir import files
from experiments.rundir.directory import EVENTS, MANIFEST_FILE, RunDirectory, open_folder
from experiments.rundir.folder import Folder, link_error, open_no_follow


def network_file(k: int) -> str:
    """The exported file of network k (0-based) in --model_dir."""
    return f"net{k + 1}.keras"


def run_files(num_nets: int) -> List[str]:
    """The files a run of `num_nets` networks writes at the top of --model_dir."""
    return [files.FLAGS_FILE, files.FLAGFILE, files.HISTORY_FILE, files.RESULTS_FILE,
            files.PLOT_FILE] + [network_file(k) for k in range(num_nets)]


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
            diffs = flag_differences(previous, flags_json)
            if diffs and not overwrite:
                raise UserError(f"{path} holds a run with different flags ({'; '.join(diffs)}); "
                                "use another --model_dir or pass --overwrite to replace it.")
            lost = []
            results = _read_json(folder, files.RESULTS_FILE)
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
            logs = folder.child(files.LOG_DIR, create=False)
            if logs is not None:
                logs.child("train", create=False), logs.child("validation", create=False)
            folder.child(files.BACKUP_DIR, create=False)
            if previous is not None and not folder.has_manifest():
                prev_nets = previous.get("nets")
                folder.adopt(run_files(len(prev_nets) if isinstance(prev_nets, list)
                                       else num_nets))
        if previous is None and chief and not overwrite and not folder.has_manifest():
            # No flags.json, yet files under the names a run writes: not this script's run (it
            # writes flags.json first), so they are the user's. Never replace them unasked.
            taken = sorted(n for n in run_files(num_nets) + [files.BACKUP_DIR, files.LOG_DIR]
                           if folder.lstat(n) is not None)
            if taken:
                raise UserError(f"{path} holds {', '.join(taken)} but no flags.json, so not a "
                                "run of this script; use another --model_dir or pass --overwrite "
                                "to replace them.")
        return cls(folder, previous, replace, complete, path)

    def backup_folder(self, create: bool) -> Optional[Folder]:
        return self.folder.child(files.BACKUP_DIR, create=create) if self.folder else None

    def start(self, flags_json: dict, flagfile: str) -> None:
        """Clears the replaced run (exactly the files it recorded), sweeps stale temporaries and
        records this run's flags (chief only)."""
        folder = self.folder
        if self.replace:
            folder.remove_recorded()
        folder.sweep_temporaries(folder, run_files(len(flags_json["nets"])))
        backup = folder.child(files.BACKUP_DIR)
        folder.sweep_temporaries(backup, [])
        folder.write_json(files.FLAGS_FILE, flags_json)
        folder.write_text(files.FLAGFILE, flagfile)

    def finish(self) -> None:
        """Removes the backup (the exported networks and results.json now hold the run)."""
        self.folder.remove_recorded(under=files.BACKUP_DIR + "/")


def log_folders(folder: Folder) -> List[Folder]:
    """`logs/`, `logs/train/`, `logs/validation/` of a run folder, opened (refusing links)."""
    logs = folder.child(files.LOG_DIR)
    return [logs, logs.child("train"), logs.child("validation")]


def record_event_files(folders: List[Folder]) -> None:
    """Records TensorBoard's event files in the run's log folders (checked to be still there)."""
    for folder in folders[1:]:
        folder.check_still_there()
        folder.root.record(*[folder._key(n) for n in folder.names() if EVENTS.fullmatch(n)])


def _read_json(folder: Folder, name: str):
    try:
        data = folder.read_bytes(name)
        value = files.parse_json(data) if data is not None else None
    except (OSError, ValueError, UserError):
        return None
    return value if isinstance(value, dict) else None


def _is_file(folder: Folder, name: str) -> bool:
    info = folder.lstat(name)
    return info is not None and stat.S_ISREG(info.st_mode)


def _read_flags(folder: RunDirectory, overwrite: bool) -> Optional[dict]:
    """The recorded flags.json; None when there is none, {} when damaged and `overwrite`."""
    path = os.path.join(folder.path, files.FLAGS_FILE)
    data = folder.read_bytes(files.FLAGS_FILE)
    if data is None:
        return None
    try:
        value = files.parse_json(data)
        problem = None if isinstance(value, dict) else "not a JSON object"
    except files.DamagedJSON as error:
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
        results = _read_json(folder, files.RESULTS_FILE)
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

"""history.csv: one row per epoch, rewritten whole after every epoch (`HistoryFile`), and read.

A kill between logging an epoch and backing it up re-runs that epoch after the resume: the last
row of an epoch wins, and a line cut short by a kill is skipped.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import stat
import weakref
from typing import Dict, List

from experiments.common import UserError
from experiments.rundir import files
from experiments.rundir.folder import Folder, describe_entry


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

    def __init__(self, folder: Folder, name: str = files.HISTORY_FILE):
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
                  f"during the run (it is now {describe_entry(self.folder, self.name)}); "
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


def read_history(path: str) -> List[dict]:
    """Per-epoch rows of a history.csv file given by path, one per epoch (the last write wins; see
    `parse_history`), or [] when there is none."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as f:
        return parse_history(f.read())

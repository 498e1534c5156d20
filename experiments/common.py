"""Helpers shared by the experiment scripts: methods, run-directory files, versions.

Kept free of TensorFlow imports so `compare.py` can read results without paying for them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
from typing import Dict, List, Optional, Tuple

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


def read_json(path: str) -> Optional[dict]:
    """The JSON object in `path`, or None when the file is absent or unreadable (half-written)."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_json(path: str, value) -> None:
    """Writes JSON atomically, so a kill never leaves a truncated file behind."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


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
    """Per-epoch rows of a Keras CSVLogger file, one per epoch (the last write wins).

    A run killed between logging an epoch and backing it up re-runs that epoch after resuming,
    so the file can hold an epoch twice; the later row belongs to the weights that were kept.
    """
    if not os.path.isfile(path):
        return []
    rows: Dict[int, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if None in row or None in row.values():
                continue  # too few or too many fields: a line cut short by a kill
            try:
                epoch = int(row.pop("epoch"))
            except ValueError:
                continue
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value)
                except (TypeError, ValueError):
                    parsed[key] = math.nan
            rows[epoch] = {"epoch": epoch, **parsed}
    return [rows[e] for e in sorted(rows)]


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


def error_percent(accuracy: float) -> float:
    """Top-k error in percent from an accuracy in [0, 1]."""
    return 100.0 * (1.0 - float(accuracy))


def versions() -> Dict[str, str]:
    """Versions of the software a result was produced with."""
    import keras
    import tensorflow as tf

    import dcm_keras

    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "dcm_keras": dcm_keras.__version__}


def one_line(error: BaseException) -> str:
    """An exception as a single line, for `sys.exit(f"error: ...")`."""
    text = " ".join(str(error).split())
    return text or type(error).__name__

"""Crash-safe checkpoints for `experiments.train`: the run's backup/ folder.

Why not `keras.callbacks.BackupAndRestore` as it is
---------------------------------------------------
Keras 3.15's `BackupAndRestore._save_model` (keras/src/callbacks/backup_and_restore.py) overwrites
`latest.weights.h5` in place, then overwrites `training_metadata.json` (the finished epoch) in
place; neither write is atomic and nothing ties the two together. A SIGKILL

1. while the weights are written leaves a truncated HDF5 file next to the previous metadata: the
   restart cannot load it (an OSError; only `double_checkpoint=True` keeps a copy to fall back
   to, and that copy is made non-atomically too), so the run cannot resume;
2. between the two writes leaves epoch-e weights next to metadata that says epoch e-1: the restart
   loads them without complaint and trains epoch e a second time on top of weights that already
   include it, silently changing the result;
3. while the metadata is written leaves truncated JSON, which `json.loads` refuses at restart.

`AtomicBackupAndRestore` writes every checkpoint under a fresh name (`epochNNNN.weights.h5`,
through a temporary file that is fsynced and then renamed) and only then *commits* it by
atomically replacing `training_metadata.json`, which names that weights file. The metadata file is
the single commit point: wherever a kill lands, the directory holds the last committed checkpoint,
complete, and whatever else the run wrote there (a partial temporary file, the uncommitted
weights of the next epoch) is ignored and removed by the next save; files of the user's stay (the
run's manifest says which are its own: experiments/rundir/directory.py). The metadata also records
the weights file's size and SHA-256 and the run's flags, and a checkpoint that disagrees with them,
or claims an epoch the run does not have, is refused (`check_metadata`). It can back up only
every Nth epoch (and always the last one; Keras's `save_freq` counts batches, not epochs). It also
refuses to back up an epoch whose loss is not finite, and can restore from another directory than
it writes to (the non-chief workers of a multi-worker run write their backups to a scratch folder
but restore the chief's).

Test hooks (environment variables; for the fault tests, not for users)
-----------------------------------------------------------------------
`DCM_DEBUG_PAUSE=<point>[@<epoch>]:<seconds>[,...]` makes the process print
`[debug] pause at <point> (epoch <n>)` on stdout and sleep at one of these points, so that a test
can SIGKILL it there deterministically:

- `checkpoint`: inside a checkpoint write, after the new weights file is in place and before the
  metadata commits it (the moment Keras's own callback is torn);
- `epoch_end`: at the end of every epoch, before its backup is written (or skipped: see
  `backup_every`);
- `export`: after `net1.keras` is written and before the other networks and `results.json`.

`@<epoch>` restricts the pause to that (1-based) epoch. With `DCM_DEBUG_RELEASE=<path>` a pause
also ends as soon as that file exists, so a test that acts during the pause need not wait it out.
"""

from __future__ import annotations

import json
import math
import os
import stat
import time
from typing import Optional

import keras
import numpy as np

from dcm_keras import _keras_compat as compat
from dcm_keras.guards import NonFiniteLossError
from experiments import common
from experiments.common import UserError
from experiments.config import flag_differences
from experiments.rundir import files
from experiments.rundir.directory import RunDirectory, open_folder

METADATA_FILE = "training_metadata.json"
LEGACY_WEIGHTS_FILE = "latest.weights.h5"  # what keras.callbacks.BackupAndRestore writes
PAUSE_VARIABLE = "DCM_DEBUG_PAUSE"
RELEASE_VARIABLE = "DCM_DEBUG_RELEASE"


class CheckpointError(ValueError):
    """A backup directory whose committed checkpoint cannot be used."""


def debug_pause(point: str, epoch: Optional[int] = None) -> None:
    """Sleeps at `point` when $DCM_DEBUG_PAUSE asks for it (see the module docstring)."""
    spec = os.environ.get(PAUSE_VARIABLE)
    if not spec:
        return
    for item in spec.split(","):
        where, _, seconds = item.strip().rpartition(":")
        name, _, at_epoch = where.partition("@")
        if name != point or (at_epoch and epoch is not None and int(at_epoch) != epoch):
            continue
        print(f"[debug] pause at {point}" + (f" (epoch {epoch})" if epoch else ""), flush=True)
        release = os.environ.get(RELEASE_VARIABLE)
        deadline = time.monotonic() + float(seconds)
        while (left := deadline - time.monotonic()) > 0:
            if release and os.path.exists(release):
                break
            time.sleep(min(0.1, left) if release else left)


def read_metadata(folder) -> Optional[dict]:
    """The committed checkpoint of a backup folder (a `rundir.folder.Folder`), or None when there
    is none (or no folder).

    Raises CheckpointError for a metadata file that exists but is unreadable (it is only ever
    replaced atomically, so this means damage from outside, not a kill).
    """
    if isinstance(folder, (str, os.PathLike)):  # a backup folder given by path
        opened = open_folder(folder)
        try:
            return read_metadata(opened)
        finally:
            if opened is not None:
                opened.close()
    if folder is None:
        return None
    path = os.path.join(folder.path, METADATA_FILE)
    try:
        data = folder.read_bytes(METADATA_FILE)
        if data is None:
            return None
        meta = files.parse_json(data)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"the backup metadata {path} is unreadable "
                              f"({common.one_line(error)}){START_OVER}") from None
    if not isinstance(meta, dict) or not _is_int(meta.get("epoch")):
        raise CheckpointError(f"the backup metadata {path} holds no epoch{START_OVER}")
    return meta


def committed_epoch(folder) -> int:
    """The number of finished epochs a backup folder holds (0 when it holds none)."""
    try:
        meta = read_metadata(folder)
    except (CheckpointError, OSError):
        return 0
    return int(meta["epoch"]) if meta else 0


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def weights_name(epoch: int) -> str:
    return f"epoch{epoch:04d}.weights.h5"


START_OVER = ("; pass --overwrite to train the run again from the start (or move the backup "
              "folder away).")


def check_metadata(folder, meta: dict, epochs: Optional[int], identity: Optional[dict]) -> str:
    """The weights file a committed checkpoint names, once it is found consistent.

    Consistent: the epoch within `1..epochs`, the weights file named after that epoch, a regular
    file of the recorded size and SHA-256, and the recorded flags equal to `identity` (the run's
    flags.json less its locations). Raises CheckpointError naming the first inconsistency. A
    checkpoint of an earlier version (no size, checksum or flags recorded) is accepted with a
    note when the rest holds.
    """
    where = folder.path
    epoch, name = meta["epoch"], meta.get("weights", LEGACY_WEIGHTS_FILE)
    if epoch < 1 or (epochs is not None and epoch > epochs):
        raise CheckpointError(f"the backup in {where} claims {epoch} finished epochs, but the run "
                              f"has {epochs}: it is not this run's{START_OVER}")
    legacy = "sha256" not in meta
    if not isinstance(name, str) or name not in (weights_name(epoch),) + (
            (LEGACY_WEIGHTS_FILE,) if legacy else ()):
        raise CheckpointError(f"the backup metadata in {where} names the weights file {name!r}, "
                              f"not {weights_name(epoch)!r} of its epoch {epoch}{START_OVER}")
    try:
        found = folder.checksum(name)
    except UserError:  # a link planted at the weights file's name
        raise CheckpointError(f"the backup weights {os.path.join(where, name)} are a symbolic "
                              f"link, not the file committed{START_OVER}") from None
    if found is None:
        raise CheckpointError(f"the backup in {where} commits {name}, which is missing"
                              f"{START_OVER}")
    if legacy:
        print(f"note: the backup in {where} was written by an earlier version, which recorded "
              "no checksum: its weights are used unverified.", flush=True)
    elif [found[0], found[1]] != [meta.get("size"), meta.get("sha256")]:
        raise CheckpointError(f"the backup weights {os.path.join(where, name)} are not the ones "
                              f"committed (size {found[0]} bytes, recorded {meta.get('size')}, or "
                              f"their checksum differs){START_OVER}")
    if identity is not None and isinstance(meta.get("flags"), dict):
        diffs = flag_differences(meta["flags"], identity)
        if diffs:
            raise CheckpointError(f"the backup in {where} was made with other flags "
                                  f"({'; '.join(diffs)}){START_OVER}")
    elif identity is not None and not legacy:
        raise CheckpointError(f"the backup metadata in {where} records no flags{START_OVER}")
    return name


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` (epoch-end saves) whose checkpoints survive a kill.

    Args:
        folder: the `rundir.folder.Folder` checkpoints are written to (or a path: a folder of
            its own).
        restore_folder: the one the checkpoint to resume from is read from (default: `folder`;
            None: there is none).
        backup_every: back up at the end of every Nth epoch (counted from the first epoch of
            training, not of this `fit`) and of the last epoch `fit` trains. A resumed run
            restarts from the last backup, so it trains up to N - 1 epochs again.
        epochs: the run's epochs (a checkpoint claiming more is refused).
        identity: the flags recorded with every checkpoint and checked when restoring.
        backup_dir: the backup's path, for Keras and messages (default: `folder`'s); `folder`
            may then be None until it is set, before `fit`.
    """

    def __init__(self, folder, restore_folder=..., backup_every: int = 1,
                 epochs: Optional[int] = None, identity: Optional[dict] = None,
                 backup_dir: Optional[str] = None):
        if isinstance(backup_every, bool) or not isinstance(backup_every, int) or backup_every < 1:
            raise ValueError(f"backup_every must be an integer >= 1, got {backup_every!r}.")
        if isinstance(folder, (str, os.PathLike)):  # a folder of its own, outside a run
            folder = RunDirectory.open(os.fspath(folder), lock=False, manifest=False)
            if restore_folder is ...:
                restore_folder = folder
        super().__init__(backup_dir=backup_dir or folder.path, save_freq="epoch",
                         delete_checkpoint=False)
        self.folder = folder
        self.restore_folder = folder if restore_folder is ... else restore_folder
        self.backup_every = backup_every
        self.epochs, self.identity = epochs, identity
        self._restored = False
        self._unsaved = None  # (epoch, logs) of a finished epoch not backed up yet

    def restore(self, model: Optional[keras.Model] = None) -> int:
        """Loads the committed checkpoint (weights, optimizer state) into the model.

        Returns the number of finished epochs it holds (0, loading nothing, when there is none).
        Raises CheckpointError for a checkpoint that is not consistent (`check_metadata`).
        """
        if model is not None:
            self.set_model(model)
        model = self.model
        folder = self.restore_folder
        meta = read_metadata(folder)
        self._restored = True
        if meta is None:
            return 0
        name = check_metadata(folder, meta, self.epochs, self.identity)
        before = folder.lstat(name)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # its state is in the checkpoint
        path = os.path.join(folder.path, name)
        try:
            model.load_weights(folder.proc_path(name))
        except Exception as error:  # h5py/Keras raise OSError, ValueError, KeyError, ...
            raise CheckpointError(f"the backup checkpoint {path} cannot be loaded "
                                  f"({type(error).__name__}: {error}){START_OVER}") from None
        after = folder.lstat(name)
        if after is None or (after.st_ino, after.st_mtime_ns) != (before.st_ino,
                                                                  before.st_mtime_ns):
            raise CheckpointError(f"the backup checkpoint {path} changed while it was loaded.")
        epoch = int(meta["epoch"])
        model._initial_epoch = epoch  # what Keras's callback sets for `fit` to start from
        self._current_epoch = epoch
        return epoch

    def start_over(self) -> None:
        """Makes `fit` start from the model as it is, ignoring any checkpoint there is."""
        self._restored = True

    def on_train_begin(self, logs=None):
        if not self._restored:
            self.restore()

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            # Never back up weights that a diverged epoch produced; keep the last good ones. (The
            # library's guard, which `DCM.fit` adds, stops at the batch before this is reached.)
            raise NonFiniteLossError(
                f"the training loss became {float(loss)} at epoch {epoch + 1}: training diverged "
                "(is --lr too high?) and was stopped before that epoch could be backed up", epoch,
                None, float(loss))
        debug_pause("epoch_end", epoch + 1)
        finished = epoch + 1
        last = self.params.get("epochs") if self.params else None
        # The last epoch is always backed up: a finished run's state is complete on disk (the
        # export after `fit` may be killed, and the rerun must find every epoch trained).
        if finished % self.backup_every == 0 or last is None or finished >= last:
            self._unsaved = None
            super().on_epoch_end(epoch, logs)  # Keras's epoch-end save, through `_save_model`
        else:
            self._unsaved = (epoch, logs)

    def on_train_end(self, logs=None):
        if self._unsaved is not None:  # `fit` stopped early (`stop_training`): back up its end
            epoch, epoch_logs = self._unsaved
            self._unsaved = None
            super().on_epoch_end(epoch, epoch_logs)
        super().on_train_end(logs)

    def checkpoint_bytes(self) -> int:
        """About how much disk a checkpoint takes (weights, optimizer state, HDF5 overhead).

        Before the first step a new run's optimizer has no state yet: its slots are counted as
        they will be (one per trainable weight for SGD with momentum, two otherwise, as Adam),
        or the estimate came out at about half a checkpoint.
        """
        def nbytes(v) -> int:
            return int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize

        optimizer = self.model.optimizer
        variables = list(self.model.weights)
        size = sum(nbytes(v) for v in variables)
        if optimizer is not None and getattr(optimizer, "built", True):
            slots = list(optimizer.variables)
            size += sum(nbytes(v) for v in slots)
        elif optimizer is not None:
            per_weight = (int(bool(getattr(optimizer, "momentum", 0)))
                          if isinstance(optimizer, keras.optimizers.SGD) else 2)
            slots = list(self.model.trainable_weights) * per_weight
            size += sum(nbytes(v) for v in slots)
        else:
            slots = []
        return int(size * 1.1) + (len(variables) + len(slots)) * 4096 + 2**20

    def check_room(self, out) -> None:
        """Refuses to start a run whose checkpoints cannot fit in `out` (its run folder, a
        `rundir.folder.Folder`): at its peak it holds two at once (the committed one and the next,
        written before the older is removed), less a committed checkpoint already on disk,
        which the first save replaces. The message names the run folder."""
        needed = 2 * self.checkpoint_bytes()
        try:
            meta = read_metadata(self.restore_folder)
        except (CheckpointError, OSError):
            meta = None
        if meta and isinstance(meta.get("weights"), str) and self.restore_folder is self.folder:
            info = self.folder.lstat(meta["weights"])
            if info is not None and stat.S_ISREG(info.st_mode):
                needed -= info.st_size
        files.check_free_space(out.proc_path(), needed, "this run's checkpoints",
                                where=out.path)

    @compat.override(keras.callbacks.BackupAndRestore)  # checks Keras still calls it, as (self)
    def _save_model(self):
        folder = self.folder
        folder.check_still_there()  # a backup/ replaced by a link is refused, not written through
        epoch = self._current_epoch
        name = weights_name(epoch)
        # HDF5 meets a full disk with a storm of errors and can crash the process: refuse first.
        # The margin covers HDF5's per-dataset overhead and the metadata file.
        files.check_free_space(folder.proc_path(), self.checkpoint_bytes(),
                                f"the checkpoint of epoch {epoch}", where=folder.path)
        with folder.replacing(name) as tmp:
            self.model.save_weights(tmp, overwrite=True)
        size, sha256 = folder.checksum(name)
        debug_pause("checkpoint", epoch)
        meta = {"epoch": epoch, "batch": 0, "weights": name, "size": size, "sha256": sha256}
        if self.identity is not None:
            meta["flags"] = self.identity
        folder.write_text(METADATA_FILE, json.dumps(meta, allow_nan=False))  # the commit
        folder.fsync()  # the renames themselves survive a power cut
        # Only what this run recorded goes: the user's own files in backup/ stay.
        root = folder.root
        for key in root.recorded():
            if key.startswith(folder.relative) and not key.endswith("/"):
                other = key[len(folder.relative):]
                if "/" not in other and other not in (name, METADATA_FILE):
                    folder.remove(other)

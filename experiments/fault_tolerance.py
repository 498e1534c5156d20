"""Fault tolerance for `experiments.train`: crash-safe checkpoints and a stop on a diverged loss.

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
complete, and whatever else is there (a partial temporary file, the uncommitted weights of the
next epoch) is ignored and removed by the next save. It can back up only every Nth epoch (and
always the last one; Keras's `save_freq` counts batches, not epochs). It also refuses to back up
an epoch whose loss is not finite, and can restore from another directory than it writes to (the
non-chief workers of a multi-worker run write their backups to a scratch folder but restore the
chief's).

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

`@<epoch>` restricts the pause to that (1-based) epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import keras
import numpy as np

from dcm_keras import _keras_compat as compat
from experiments import common

METADATA_FILE = "training_metadata.json"
LEGACY_WEIGHTS_FILE = "latest.weights.h5"  # what keras.callbacks.BackupAndRestore writes
PAUSE_VARIABLE = "DCM_DEBUG_PAUSE"


class CheckpointError(ValueError):
    """A backup directory whose committed checkpoint cannot be used."""


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss."""

    def __init__(self, loss: float, epoch: int, batch: Optional[int]):
        self.loss, self.epoch, self.batch = loss, epoch, batch
        where = f"epoch {epoch + 1}" + ("" if batch is None else f", batch {batch + 1}")
        super().__init__(f"the training loss became {loss} at {where}")


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
        time.sleep(float(seconds))


def read_metadata(directory: str) -> Optional[dict]:
    """The committed checkpoint of a backup directory, or None when there is none.

    Raises CheckpointError for a metadata file that exists but is unreadable (it is only ever
    replaced atomically, so this means damage from outside, not a kill).
    """
    path = os.path.join(directory, METADATA_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"the backup metadata {path} is unreadable ({error}); delete "
                              f"{directory} to start the run over.") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("epoch"), int):
        raise CheckpointError(f"the backup metadata {path} holds no epoch; delete {directory} "
                              "to start the run over.")
    return meta


def committed_epoch(directory: str) -> int:
    """The number of finished epochs a backup directory holds (0 when it holds none)."""
    meta = read_metadata(directory)
    return int(meta["epoch"]) if meta else 0


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # never follows a link
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` (epoch-end saves) whose checkpoints survive a kill.

    Args:
        backup_dir: where checkpoints are written.
        restore_dir: where the checkpoint to resume from is read (default: `backup_dir`).
        backup_every: back up at the end of every Nth epoch (counted from the first epoch of
            training, not of this `fit`) and of the last epoch `fit` trains. A resumed run
            restarts from the last backup, so it trains up to N - 1 epochs again.
    """

    def __init__(self, backup_dir: str, restore_dir: Optional[str] = None,
                 backup_every: int = 1):
        if isinstance(backup_every, bool) or not isinstance(backup_every, int) or backup_every < 1:
            raise ValueError(f"backup_every must be an integer >= 1, got {backup_every!r}.")
        super().__init__(backup_dir=backup_dir, save_freq="epoch", delete_checkpoint=False)
        self.restore_dir = restore_dir or backup_dir
        self.backup_every = backup_every
        self._restored = False
        self._unsaved = None  # (epoch, logs) of a finished epoch not backed up yet

    def restore(self, model: Optional[keras.Model] = None) -> int:
        """Loads the committed checkpoint (weights, optimizer state) into the model.

        Returns the number of finished epochs it holds (0, loading nothing, when there is none).
        """
        if model is not None:
            self.set_model(model)
        model = self.model
        meta = read_metadata(self.restore_dir)
        self._restored = True
        if meta is None:
            return 0
        name = meta.get("weights", LEGACY_WEIGHTS_FILE)
        if not isinstance(name, str) or os.path.basename(name) != name:
            raise CheckpointError(f"the backup metadata in {self.restore_dir} names an invalid "
                                  f"weights file {name!r}.")
        path = os.path.join(self.restore_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"the backup in {self.restore_dir} commits {name}, which is "
                                  f"missing; delete {self.restore_dir} to start the run over.")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # its state is in the checkpoint
        try:
            model.load_weights(path)
        except Exception as error:  # h5py/Keras raise OSError, ValueError, KeyError, ...
            raise CheckpointError(f"the backup checkpoint {path} cannot be loaded "
                                  f"({type(error).__name__}: {error}); delete {self.restore_dir} "
                                  "to start the run over.") from None
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
            # Never back up weights that a diverged epoch produced; keep the last good ones.
            raise NonFiniteLoss(float(loss), epoch, None)
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

    @compat.override(keras.callbacks.BackupAndRestore)  # checks Keras still calls it, as (self)
    def _save_model(self):
        directory = self.backup_dir
        os.makedirs(directory, exist_ok=True)
        epoch = self._current_epoch
        name = f"epoch{epoch:04d}.weights.h5"
        final = os.path.join(directory, name)
        tmp = os.path.join(directory, f".tmp.{os.getpid()}.{name}")
        if os.path.lexists(tmp):
            os.remove(tmp)
        variables = list(self.model.weights) + list(getattr(self.model.optimizer, "variables", []))
        size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
        # HDF5 meets a full disk with a storm of errors and can crash the process: refuse first.
        # The margin covers HDF5's per-dataset overhead and the metadata file.
        common.check_free_space(directory, int(size * 1.1) + len(variables) * 4096 + 2**20,
                                f"the checkpoint of epoch {epoch}")
        try:
            self.model.save_weights(tmp, overwrite=True)
            _fsync(tmp)
        except BaseException:
            if os.path.lexists(tmp):
                os.remove(tmp)
            raise
        os.replace(tmp, final)
        debug_pause("checkpoint", epoch)
        _write_atomically(os.path.join(directory, METADATA_FILE),
                          json.dumps({"epoch": epoch, "batch": 0, "weights": name}))
        _fsync(directory)  # the renames themselves survive a power cut
        for other in os.listdir(directory):
            stale = (other != name and (other.endswith(".weights.h5") or other.endswith(".tmp")))
            if stale:
                try:
                    os.remove(os.path.join(directory, other))
                except OSError:
                    pass


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `NonFiniteLoss` at the first batch whose running loss is NaN or infinite.

    Like `keras.callbacks.TerminateOnNaN(raise_error=True)`, but the exception carries the epoch
    and batch. Raising (rather than setting `stop_training`) ends `fit` before the epoch ends, so
    no epoch-end callback, the backup included, sees the diverged weights.
    """

    _epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None:
            value = float(keras.ops.convert_to_numpy(loss))
            if not math.isfinite(value):
                raise NonFiniteLoss(value, self._epoch, batch)

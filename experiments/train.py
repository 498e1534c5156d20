r"""Trains networks with DCM or a related method and leaves a self-describing run directory.

    python -m experiments.train --method=dcm --nets=wrn_28_10,mobilenet --dataset=cifar100 \
        --model_dir=runs/dcm_wrn_mobilenet

The defaults are the paper's CIFAR-100 recipe (SGD 0.1, momentum 0.9, coupled weight decay 5e-4,
batch 128, 200 epochs, lr x0.2 at epochs 60, 120 and 160). `--model_dir` ends up holding:

    flags.json, flagfile.txt   the run's flags (`--flagfile=flagfile.txt` re-runs it)
    logs/                      TensorBoard: every head's accuracy, the loss parts, learning rate
    history.csv                one row per epoch (rewritten whole after each epoch)
    backup/                    BackupAndRestore state while training; removed once finished
    net1.keras, net2.keras     the deployable networks, without auxiliary heads
    results.json               final test errors per network and head, timing, versions, history
    test_error.png             test error per epoch of every network

Re-running the same command resumes a killed run at its last backed-up epoch (optimizer state
included; every epoch is backed up unless `--backup_every` says otherwise); re-running a finished
one does nothing. A directory holding a run with other flags is refused unless `--overwrite` is
given. Checkpoints are committed atomically, so a kill at any moment (a checkpoint write
included) leaves the last backed-up epoch resumable (experiments/rundir/checkpoints.py says why
Keras's own BackupAndRestore does not). A NaN or infinite training loss stops the run with an
error before the diverged epoch is backed up. The run directory is held open and locked for the
run's life, and written without following a link inside it; --overwrite removes exactly what the
replaced run recorded (experiments/rundir/, docs/run_directory.md).

Multi-worker training (`--distribute=multi_worker`): every worker runs the same command with its
own `$TF_CONFIG`, e.g. `{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type":
"worker", "index": 0}}`. `--model_dir` must be a folder every worker can read (a shared file
system); the chief alone writes to it. If a worker dies, restart every worker with the same
command. experiments/cluster.py says more (and docs/scaling.md).

`DCM_DEBUG_WEIGHTS_DIR=<folder>` (for tests): every process, chief or not, also saves the trained
DCM's weights as `<folder>/<task>_<index>.weights.h5` (`chief_0` outside multi-worker training).
`DCM_DEBUG_PAUSE` is described in experiments/rundir/checkpoints.py.

The flags are declared in experiments/config.py; the set-up steps are experiments/run_setup.py's,
the callbacks experiments/training_callbacks.py's, the final report experiments/run_report.py's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import time
from typing import Dict, Iterator, List, Optional, Tuple

from absl import app, flags

from experiments import common
from experiments.common import UserError
from experiments.config import TrainConfig, define_flags, flagfile_text
from experiments.run_report import write_report
from experiments.run_setup import Run, build_model, check_flags, describe_data, load_data, \
    restore, start_backend, user_errors
from experiments.rundir import files
from experiments.rundir.history import HistoryFile
from experiments.rundir.run import TrainingRun, log_folders
from experiments.training_callbacks import epoch_stats_callback, run_files_callback

define_flags()
FLAGS = flags.FLAGS


def train(config: TrainConfig) -> int:
    """Runs (or resumes) the training described by `config`. Returns 0.

    Raises `UserError` for bad flags, a run directory holding another run (or in use by one),
    bad data, or a loss that became NaN or infinite.
    """
    process_start = time.perf_counter()
    # What the run holds open (--model_dir and its lock) and a non-chief worker's temporary
    # folder: closed and removed whatever happens.
    with contextlib.ExitStack() as stack:
        with user_errors():
            run = _set_up(config, stack)
        if run is None:
            return 0
        with _failures_named(run):
            history, last = _fit(run)
            if run.task.chief:
                write_report(run, history, last, process_start)
    return 0


def _set_up(config: TrainConfig, stack: contextlib.ExitStack) -> Optional[Run]:
    """Checks the flags and the run directory, builds the model and the datasets; None if the
    run is already complete.

    Everything that can refuse the command runs before anything is written, the cheap checks
    before the backend starts. What it opens is closed by `stack`.
    """
    # === Flags and run directory (before the backend starts) ===
    task = check_flags(config)
    flags_json = config.to_json()
    opened = TrainingRun.open(config.model_dir, flags_json, config.overwrite, task.chief)
    if opened.folder is not None:
        stack.callback(opened.folder.close)
    if opened.complete:
        print(f"Run in {opened.path} is already complete; see "
              f"{os.path.join(opened.path, files.RESULTS_FILE)}. Nothing to do.", flush=True)
        if task.chief:
            opened.finish()
        return None
    device = start_backend(config)  # the backend starts here: everything above is cheap

    # === Data ===
    # The data module's RuntimeErrors: TensorFlow missing, or a tfds dataset it cannot prepare.
    with user_errors(RuntimeError):
        data = describe_data(config)
    if task.chief and config.dataset.startswith("image_folder:"):
        print(common.image_folder_summary(config.dataset, data.info, data.num_train,
                                          data.num_test), flush=True)

    # === Model, restored at the last backed-up epoch ===
    nets, dcm = build_model(config, device, data)
    out, backup, initial_epoch = restore(config, task, device, dcm, opened, stack)
    with user_errors(RuntimeError):
        data = load_data(config, device, data, initial_epoch)

    # === The run's record ===
    # Written only once everything above has been checked, so a bad command leaves no trace.
    if task.chief:
        opened.start(flags_json, flagfile_text(FLAGS))
        backup.folder = backup.restore_folder = opened.backup_folder(create=True)
        # A disk that is already full is refused now, not after an epoch of training: two
        # checkpoints (the committed one and the next) must fit (checkpoints.check_room).
        backup.check_room(out)
    return Run(config=config, task=task, device=device, data=data, nets=nets, dcm=dcm,
               model_dir=opened.path, run_dir=opened, out=out, backup=backup,
               initial_epoch=initial_epoch)


def _fit(run: Run) -> Tuple[List[dict], Dict[str, float]]:
    """Trains from the last finished epoch: `(history.csv's rows, the final test metrics)`.

    The rows are the chief's (the other workers keep none); every worker measures the metrics.
    """
    import keras

    from dcm_keras.guards import StopOnNonFiniteLoss

    config, dcm, model_dir = run.config, run.dcm, run.model_dir
    epochs, initial_epoch, eval_every = config.epochs, run.initial_epoch, config.eval_every

    # === Callbacks ===
    history = HistoryFile(run.out)
    logs = log_folders(run.out) if importlib.util.find_spec("tensorflow") else []
    callbacks = [
        # Epoch-granular drops, as the released code's (and PyTorch's MultiStepLR): every step of
        # epoch e uses lr * decay ** (boundaries passed), and a resumed run sets it again.
        keras.callbacks.LearningRateScheduler(config.learning_rate),
        epoch_stats_callback(),
        # Logged before the backup is taken: a kill in between re-runs (and re-logs) the epoch
        # rather than losing its row; the history keeps the last row of each epoch.
        run_files_callback(history, logs),
        # Raises at the first non-finite batch loss, before the epoch (and its backup) ends.
        StopOnNonFiniteLoss(),
        # Restored by run_setup.restore; kept after training and removed only once results.json
        # is written, so a kill during export resumes with nothing left to train.
        run.backup,
    ]
    if logs:  # TensorBoard writes through tf.summary, into logs/ as opened (never a link)
        callbacks.insert(2, keras.callbacks.TensorBoard(
            log_dir=logs[0].proc_path(), write_graph=False, profile_batch=0))
    else:
        print("TensorFlow is not installed: no TensorBoard logs (history.csv and results.json "
              "hold the same numbers).", flush=True)
    if hasattr(run.data.train, "epoch_setter"):  # data.ArrayDataset: new draws every epoch
        callbacks.insert(0, run.data.train.epoch_setter())

    # === Fit ===
    if initial_epoch >= epochs:
        print(f"Resuming {model_dir}: all {epochs} epochs are trained; exporting from the backup.",
              flush=True)
    elif initial_epoch:
        print(f"Resuming {model_dir} at epoch {initial_epoch + 1}/{epochs}.", flush=True)
    fit_logs = {}
    if initial_epoch < epochs:
        fit_logs = dcm.fit(run.data.train, validation_data=run.data.test, epochs=epochs,
                           initial_epoch=initial_epoch, callbacks=callbacks,
                           # the repeated tf.data pipeline (see run_setup.load_data); a
                           # PyDataset is re-iterated every epoch instead
                           steps_per_epoch=(None if hasattr(run.data.train, "epoch_setter")
                                            else run.data.steps_per_epoch),
                           validation_freq=eval_every,
                           shuffle=False,  # the data module shuffles
                           verbose=1 if sys.stdout.isatty() else 2).history
    debug_dir = os.environ.get("DCM_DEBUG_WEIGHTS_DIR")
    if debug_dir:  # a test hook (see the module docstring)
        dcm.save_weights(os.path.join(debug_dir, f"{run.task.type}_{run.task.index}.weights.h5"))

    # === Final test metrics ===
    rows = history.complete_rows() if run.task.chief else []
    if config.distribute == "multi_worker":
        # Every worker must take the same branch (evaluate is a collective), so decide on what
        # all of them know: whether this process trained the final epoch.
        if (len(fit_logs.get("loss", [])) == epochs - initial_epoch and epochs > initial_epoch
                and epochs % eval_every == 0):  # Keras evaluated the final epoch
            last = {k: v[-1] for k, v in fit_logs.items()}
        else:
            last = {}
    else:
        last = rows[-1] if rows else {}
    if last.get("epoch", epochs - 1) != epochs - 1 or not all(
            math.isfinite(last.get(f"val_{h}_acc", math.nan)) for h in dcm.flat_heads):
        # No usable row for the final epoch (e.g. history.csv was deleted): measure again.
        last = {f"val_{k}": v for k, v in
                dcm.evaluate(run.data.test, verbose=0, return_dict=True).items()}
    return rows, last


@contextlib.contextmanager
def _failures_named(run: Run) -> Iterator[None]:
    """Turns a full disk or a diverged loss, while training or exporting, into a UserError that
    says which backup a rerun resumes from."""
    from dcm_keras.guards import NonFiniteLossError
    from experiments.rundir.checkpoints import committed_epoch

    # The backup a rerun resumes from: the chief's own (every worker reads it).
    restore_folder = run.backup.folder if run.task.chief else run.backup.restore_folder
    where = (restore_folder.path if restore_folder is not None
             else os.path.join(run.model_dir, files.BACKUP_DIR))
    try:
        yield
    except OSError as e:  # a full disk or a folder that became unwritable
        kept = committed_epoch(restore_folder)
        backup = (f"the backup of epoch {kept} in {where} is intact: re-running "
                  "this command resumes from it" if kept else "no epoch had been backed up")
        raise UserError(f"{common.one_line(e)}; {backup}.") from e
    except NonFiniteLossError as e:
        kept = committed_epoch(restore_folder)
        backup = (f"the backup of epoch {kept} in {where} is kept (re-running "
                  "this command resumes from it)" if kept else "no epoch had finished, so "
                  "there is no backup")
        if e.batch is None or math.isfinite(e.loss):  # no batch's loss to name: its words
            raise UserError(f"{common.one_line(e).rstrip('.')}; {backup}.") from e
        raise UserError(f"the training loss became {e.loss} at epoch {e.epoch + 1}, batch "
                        f"{e.batch + 1}: training diverged (is --lr too high?) and was "
                        f"stopped before that epoch could be backed up; {backup}.") from e


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        sys.exit(train(TrainConfig.from_flags(FLAGS)))
    except UserError as e:  # the library's too (one type): one line, whatever its message holds
        sys.exit(f"error: {common.one_line(e)}")
    except KeyboardInterrupt:  # Ctrl-C: the checkpoints make this a pause, not a crash
        print("error: interrupted; re-running the same command resumes from the last backed-up "
              "epoch.", file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    app.run(main)

"""The Keras callbacks `experiments.train` adds to `fit` for the run's own records.

Each is built by a function that imports Keras when called (the scripts check their flags before
the backend starts).
"""

from __future__ import annotations

import time
from typing import List

from experiments.rundir.folder import Folder
from experiments.rundir.history import HistoryFile
from experiments.rundir.run import record_event_files


def epoch_stats_callback():
    """A callback adding the learning rate and the epoch's timings to the epoch's logs.

    The values land in history.csv, TensorBoard and results.json. `learning_rate` is the value
    Keras's TensorBoard callback logs too: the rate LearningRateScheduler set for the epoch.
    `train_seconds` stops where validation starts.
    """
    import keras

    class EpochStats(keras.callbacks.Callback):
        _start = _train_end = None

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()
            self._train_end = None

        def on_test_begin(self, logs=None):
            if self._train_end is None:  # fit's validation starts: the training part is over
                self._train_end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            now = time.perf_counter()
            start = self._start or now
            logs["train_seconds"] = (self._train_end or now) - start
            logs["epoch_seconds"] = now - start
            optimizer = self.model.optimizer
            optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    return EpochStats()


def run_files_callback(history: HistoryFile, log_folders: List[Folder]):
    """A callback recording each epoch in history.csv (rewritten whole, atomically: see
    `rundir.history.HistoryFile`) and TensorBoard's event files in the run's manifest."""
    import keras

    class RunFiles(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            history.add(epoch, logs or {})
            if log_folders:
                record_event_files(log_folders)

    return RunFiles()

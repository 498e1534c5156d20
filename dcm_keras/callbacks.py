"""Keras callbacks for `DCM` training: `SaveBestNetwork` keeps the best network as it is shipped.

`keras.callbacks.ModelCheckpoint` saves what `fit` trains, the whole `DCM`: every network with its
auxiliary heads, in a file that names dcm_keras's classes (so it loads only where `dcm_keras` is
imported) and that still has to go through `export_network` before it can be shipped. And no
single loss in the default logs is one network's: `val_loss` averages the networks.

`SaveBestNetwork("net1.keras", "net1")` watches `val_net1_loss`, net1's own final-head
cross-entropy on the validation data (`dcm_keras.monitoring`), and on each improvement writes what
`dcm.export_network("net1", preprocessing=...)` returns through `dcm_keras.save_network`: the path
to the final head alone, in float32, with Keras's own layers, so `keras.saving.load_model(path,
safe_mode=True)` reads it without `dcm_keras` and it has the parameters of the network trained
alone. The file is written atomically (a kill leaves the previous best).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Optional, Union

import keras
import numpy as np

from dcm_keras.errors import UserError
from dcm_keras.export import save_network

MODES = ("auto", "min", "max")


class SaveBestNetwork(keras.callbacks.Callback):
    """Writes one network of a `DCM`, as shipped, whenever the monitored value improves.

    Args:
        filepath: a `.keras` path, replaced at each improvement; it may hold `{epoch}` and log
            names, formatted as `ModelCheckpoint` does (`"net1_{epoch:03d}.keras"`).
        network: the network, as an index or its DCM name (`"net1"`).
        monitor: the logged value to watch (default `"val_net1_loss"` for `network="net1"`).
        mode: "min", "max", or "auto": "max" for accuracies (`*_acc`, `*_top5`), "min" for
            losses (`*loss`).
        preprocessing: a `dcm_keras.data.DatasetInfo` (`data.get_info(...)`) to save a network
            that takes raw pixels (0-255), as `export_network` does; None saves the bare network.
        verbose: 1 prints a line at each save.

    `best` (the best value seen) carries over to a later `fit` with the same callback, as
    `ModelCheckpoint`'s does.
    """

    def __init__(self, filepath: Union[str, os.PathLike], network: Union[int, str] = 0,
                 monitor: Optional[str] = None, mode: str = "auto", preprocessing=None,
                 verbose: int = 0):
        super().__init__()
        self.filepath = os.fspath(filepath)
        if not self.filepath.endswith(".keras"):
            raise UserError(f"SaveBestNetwork writes .keras files; got filepath "
                            f"{self.filepath!r}.")
        if mode not in MODES:
            raise UserError(f"Unknown mode {mode!r}; valid: {', '.join(MODES)}.")
        if not isinstance(network, (int, str)) or isinstance(network, bool):
            raise UserError(f"network must be an index or a name such as 'net1'; got "
                            f"{network!r}.")
        self.network = network
        name = f"net{network + 1}" if isinstance(network, int) else network
        self.monitor = monitor or f"val_{name}_loss"
        self.mode = mode if mode != "auto" else _direction(self.monitor)
        self.preprocessing = preprocessing
        self.verbose = verbose
        self.best: Optional[float] = None
        self._index = 0
        self._seen = False

    def on_train_begin(self, logs=None):
        if not callable(getattr(self.model, "export_network", None)):
            raise UserError(f"SaveBestNetwork needs a dcm_keras.DCM; it was given to the fit of "
                            f"a {type(self.model).__name__}.")
        self._index = self.model.network_index(self.network)  # refuses an unknown network
        self._seen = False

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            if self.monitor.startswith("val_") and not any(k.startswith("val_") for k in logs):
                return  # no validation this epoch (validation_freq), or none at all
            raise UserError(f"SaveBestNetwork monitors {self.monitor!r}, which is not in the "
                            f"logs; logged: {', '.join(sorted(logs))}.")
        self._seen = True
        value = float(np.asarray(keras.ops.convert_to_numpy(logs[self.monitor])))
        if not math.isfinite(value):
            return
        if self.best is not None and not (value < self.best if self.mode == "min"
                                          else value > self.best):
            return
        path = self.filepath.format(epoch=epoch + 1, **logs)
        if self.verbose:
            previous = "" if self.best is None else f" (from {self.best:.5g})"
            print(f"\nEpoch {epoch + 1}: {self.monitor} improved to {value:.5g}{previous}; "
                  f"saving net{self._index + 1} to {path}", flush=True)
        self.best = value
        network = self.model.export_network(self._index, preprocessing=self.preprocessing)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # as ModelCheckpoint
        save_network(network, path, overwrite=True)

    def on_train_end(self, logs=None):
        if not self._seen:
            warnings.warn(f"SaveBestNetwork saved nothing: {self.monitor!r} was never logged "
                          "(give fit validation_data to monitor a val_ value).", stacklevel=2)


def _direction(monitor: str) -> str:
    if monitor.endswith(("_acc", "_top5")):
        return "max"
    if monitor.endswith("loss"):
        return "min"
    raise UserError(f"SaveBestNetwork cannot tell whether {monitor!r} should go up or down; "
                    "pass mode='min' or mode='max'.")

"""The set-up steps of `experiments.train`, each a function train.py calls in turn.

`check_flags` refuses flags that do not fit together (before anything is written or the backend
starts); `start_backend` sets up Keras (strategy, dtype policy, seed, determinism); then the
dataset is described (`describe_data`), the model built (`build_model`), the last backed-up
epoch restored (`restore`) and the data pipelines made from that epoch on (`load_data`). What
they make is held by `Device`, `Data` and, once everything is ready, `Run`. `user_errors` turns
the user mistakes raised inside a step into one-line errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Iterator, Tuple

from experiments import common
from experiments.cluster import ALONE, Task, check_backend, check_workers_agree, gpu_count, \
    make_strategy, parse_tf_config
from experiments.common import UserError
from experiments.config import TrainConfig, identity, parse_connections
from experiments.rundir import files
from experiments.rundir.directory import RunDirectory
from experiments.rundir.folder import Folder
from experiments.rundir.run import TrainingRun


@contextlib.contextmanager
def user_errors(*also: type) -> Iterator[None]:
    """Turns the user mistakes raised inside into one-line `UserError`s; the rest propagates.

    A user mistake is a `UserError` (the scripts' checks and the library's: one class), an
    OSError (a --model_dir that cannot be written, a missing data folder), or one of `also`: what
    a step's library calls raise for bad input without a type of their own. Only set-up runs
    inside it, and anything else (a TypeError or a KeyError from a bug, say) keeps its
    traceback.
    """
    try:
        yield
    except (UserError, OSError, *also) as e:
        raise UserError(common.one_line(e)) from e


@dataclasses.dataclass(frozen=True)
class Device:
    """Where the run computes: the Keras backend, its tf.distribute strategy and dtype policy."""

    backend: str
    strategy: object  # a tf.distribute strategy, or cluster.OneDevice
    precision: str  # --precision with `auto` resolved

    @property
    def synchronized_bn(self) -> bool:
        """Several replicas: batch statistics over the global batch, as on one device."""
        return self.strategy.num_replicas_in_sync > 1


@dataclasses.dataclass(frozen=True)
class Data:
    """The dataset's description and sizes, and (once the resumed epoch is known) its pipelines."""

    info: object  # dcm_keras.data's dataset info
    num_train: int
    num_test: int
    steps_per_epoch: int
    train: object = None
    test: object = None


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything training and reporting need: built by train.py's set-up."""

    config: TrainConfig
    task: Task
    device: Device
    data: Data
    nets: list  # the networks, with their auxiliary heads
    dcm: object  # the compiled DCM over `nets`
    model_dir: str
    run_dir: TrainingRun  # --model_dir, held open (and locked on the chief)
    out: Folder  # where this process writes: model_dir on the chief, else a scratch one
    backup: object  # the AtomicBackupAndRestore callback
    initial_epoch: int


def check_flags(config: TrainConfig) -> Task:
    """Refuses flags that do not fit together; returns this process's task."""
    if config.connections is not None:
        parse_connections(config.connections)
    elif config.distillation not in ("none", "dks") and len(config.nets) < 2:
        raise UserError(f"--method={config.method} distils between networks; give at least two "
                        "--nets (e.g. --nets=wrn_16_2,wrn_16_2).")
    late = [b for b in config.boundaries if b >= config.epochs]  # fails before any write
    if late:
        print(f"note: --lr_boundaries {','.join(map(str, late))} are not below --epochs="
              f"{config.epochs}: the learning rate never drops at "
              f"{'them' if len(late) > 1 else 'it'}.", flush=True)
    common.check_data_dir(config.data_dir)
    if config.distribute == "multi_worker":
        return parse_tf_config(os.environ.get("TF_CONFIG"))
    return ALONE


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy for `--precision` (resolving `auto` on this machine)."""
    if precision != "auto":
        return precision
    # Imported here, once the backend has started (importing dcm_keras starts it).
    from dcm_keras.precision import auto_policy, cpu_flags

    return auto_policy(gpu_count(), cpu_flags())


def start_backend(config: TrainConfig) -> Device:
    """Imports the Keras backend and sets it up: strategy, dtype policy, seed, determinism."""
    import keras

    backend = keras.backend.backend()
    check_backend(config, backend)
    strategy = make_strategy(config.distribute)
    precision = resolve_precision(config.precision)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return Device(backend, strategy, precision)


def describe_data(config: TrainConfig) -> Data:
    """The dataset's description and the number of examples and steps the run uses."""
    from dcm_keras import data

    info = data.get_info(config.dataset, data_dir=config.data_dir, image_size=config.image_size)
    num_train = min(info.num_train, config.max_train_examples or info.num_train)
    num_test = min(info.num_test, config.max_test_examples or info.num_test)
    steps_per_epoch = num_train // config.batch_size  # training batches drop their remainder
    if steps_per_epoch < 1:
        raise UserError(f"--batch_size={config.batch_size} exceeds the {num_train} training "
                        "examples.")
    return Data(info, num_train, num_test, steps_per_epoch)


def build_model(config: TrainConfig, device: Device, data: Data) -> Tuple[list, object]:
    """The networks and the compiled DCM over them, in the strategy's scope."""
    import keras

    from dcm_keras import DCM

    with device.strategy.scope():
        nets = [build_network(config, name, data.info, device.synchronized_bn)
                for name in config.nets]
        dcm = DCM(nets, connections=config.distillation, temperature=config.temperature,
                  kd_weight=config.kd_weight, kd_warmup_epochs=config.kd_warmup_epochs,
                  ce_normalization=config.ce_normalization,
                  kd_normalization=config.kd_normalization)
        # The rate is set per epoch by LearningRateScheduler (see train.py's fit).
        optimizer = keras.optimizers.SGD(config.lr, momentum=config.momentum, nesterov=False)
        # JAX runs its steps eagerly, op by op, unless they are compiled.
        dcm.compile(optimizer=optimizer,
                    jit_compile=config.jit_compile if device.backend == "tensorflow" else True)
    return nets, dcm


def build_network(config: TrainConfig, name: str, info, synchronized_bn: bool):
    """Network `name` with the method's heads, for the dataset `info` describes."""
    from dcm_keras import networks

    return networks.build(name, info.num_classes, info.image_shape, aux_heads=config.aux_heads,
                          weight_decay=config.weight_decay, synchronized_bn=synchronized_bn)


def restore(config: TrainConfig, task: Task, device: Device, dcm, opened: TrainingRun,
            stack: contextlib.ExitStack) -> Tuple[Folder, object, int]:
    """`(out folder, backup callback, epoch to start at)`: the last finished epoch restored.

    Non-chief workers write to a temporary folder (removed by `stack`) and resume from the
    chief's backup: Keras's BackupAndRestore has no notion of workers, and all of them must
    save (reading synchronised variables takes every worker) but only one may write the run.
    A backup that is not consistent (checkpoints.check_metadata) is refused, or with
    --overwrite the run starts over.
    """
    from experiments.rundir.checkpoints import AtomicBackupAndRestore, CheckpointError

    if task.chief:
        out = opened.folder
        folder = None  # backup/ is made once everything is checked (TrainingRun.start)
    else:
        scratch = tempfile.mkdtemp(prefix=f"dcm_{task.type}{task.index}_")
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        out = RunDirectory.open(scratch, lock=False, manifest=False)
        stack.callback(out.close)
        folder = out.child(files.BACKUP_DIR)
    restore_folder = opened.backup_folder(create=False)
    backup = AtomicBackupAndRestore(folder, restore_folder=restore_folder,
                                    backup_every=config.backup_every, epochs=config.epochs,
                                    identity=identity(config.to_json()),
                                    backup_dir=os.path.join(opened.path, files.BACKUP_DIR))
    backup.set_model(dcm)
    with device.strategy.scope(), user_errors(CheckpointError):
        # Weights and optimizer state of the last finished epoch, also when no epoch is left to
        # train (a run killed while exporting must export the trained weights).
        initial_epoch = 0
        if opened.replace:  # the old run's backup is about to go (the chief removes it)
            backup.start_over()
        else:
            try:
                initial_epoch = backup.restore(dcm)
            except CheckpointError as error:
                if not (config.overwrite and task.chief):
                    raise
                print(f"note: {str(error).split('; pass --overwrite')[0]}; --overwrite: "
                      "training the run again from the start.", flush=True)
                backup.start_over()
                opened.replace = True
    if task.workers > 1:
        check_workers_agree(device.strategy, initial_epoch,
                            os.path.join(opened.path, files.BACKUP_DIR))
    return out, backup, initial_epoch


def load_data(config: TrainConfig, device: Device, data: Data, initial_epoch: int) -> Data:
    """`data` with its training and test pipelines.

    epoch=initial_epoch: a resumed run sees exactly the batches an uninterrupted one would.
    """
    from dcm_keras import data as data_lib

    load_args = dict(batch_size=config.batch_size, data_dir=config.data_dir,
                     image_size=config.image_size)
    # tf.data on TensorFlow; elsewhere a Keras PyDataset over NumPy arrays, which needs no
    # TensorFlow for Fashion-MNIST (same normalisation and augmentation, other random draws).
    tensorflow = device.backend == "tensorflow"
    load = data_lib.load if tensorflow else data_lib.load_arrays
    # On TensorFlow the training pipeline repeats and `fit` takes steps_per_epoch, so Keras keeps
    # one iterator for the whole run: a fresh iterator per epoch re-instantiates every tf.data
    # function, which cost about a quarter of a run of many short epochs. Each pass is still
    # exactly one epoch of whole batches (data.load's contract), so the batches are the same.
    train_ds = load(config.dataset, "train", training=True, seed=config.seed,
                    max_examples=config.max_train_examples, epoch=initial_epoch,
                    **(dict(repeat=True) if tensorflow else {}), **load_args)
    test_ds = load(config.dataset, "test", training=False, max_examples=config.max_test_examples,
                   **load_args)
    return dataclasses.replace(data, train=train_ds, test=test_ds)

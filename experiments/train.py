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
system): the chief (task `chief`, else `worker` 0) alone writes to it; the other workers write
their logs and backups to a temporary folder that is removed when they finish (a SIGKILL leaves it
in $TMPDIR), and restore from the chief's backup when the run resumes. If a worker dies, restart
every worker with the same command. BatchNormalization statistics are synchronised across replicas
whenever there are several, so N replicas with global `--batch_size` B train like one device with
batch B.

`DCM_DEBUG_WEIGHTS_DIR=<folder>` (for tests): every process, chief or not, also saves the trained
DCM's weights as `<folder>/<task>_<index>.weights.h5` (`chief_0` outside multi-worker training).
`DCM_DEBUG_PAUSE` is described in experiments/rundir/checkpoints.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Iterator, List, NamedTuple, Optional, Tuple

from absl import app, flags

from experiments import common, plots
from experiments.config import OPERATIONAL_FLAGS, RUN_FLAGS, TrainConfig, parse_boundaries, \
    parse_connections, parse_json
from experiments.rundir import files
from experiments.rundir.directory import RunDirectory
from experiments.rundir.folder import Folder
from experiments.rundir.history import HistoryFile
from experiments.rundir.run import TrainingRun, identity, log_folders, network_file, \
    record_event_files, without_nan

METHOD_HELP = ("baseline: networks alone; dsn: + auxiliary heads (deep supervision); dks: + KD "
               "between heads of one network; dml: KD between final heads; dcm: heads + dense "
               "cross-layer KD; same_stage / cross_stage: DCM's two halves.")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
STRATEGIES = ("auto", "none", "mirrored", "multi_worker")
flags.DEFINE_enum("method", "dcm", list(common.METHODS), METHOD_HELP)
flags.DEFINE_string("connections", None,
                    "Overrides the method's distillation graph: a preset (dense, same_stage, "
                    "cross_stage, final, dks, none) or a JSON list of [student, teacher, weight] "
                    "edges over heads net{k}_{head}, e.g. '[[\"net1_logits\",\"net2_logits\",1]]'.")
flags.DEFINE_list("nets", ["wrn_28_10", "wrn_28_10"],
                  "Comma-separated networks trained together (see dcm_keras.networks), or "
                  "keras.applications classifiers as keras:NAME (e.g. keras:MobileNetV3Small), "
                  "built from scratch with the paper's kind of heads (networks.attach_heads).")
flags.DEFINE_string("dataset", "cifar100",
                    "cifar10, cifar100, fashion_mnist, imagenet2012 or image_folder:PATH.")
flags.DEFINE_string("data_dir", None, "Dataset location (tfds data_dir or an IDX folder).")
flags.DEFINE_integer("image_size", None, "Input size for imagenet2012 and image folders.",
                     lower_bound=1)
flags.DEFINE_integer("epochs", 200, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Global batch size (split over replicas).", lower_bound=1)
flags.DEFINE_float("lr", 0.1, "Initial learning rate.", lower_bound=0.0)
flags.DEFINE_list("lr_boundaries", ["60", "120", "160"],
                  "Epochs at which the learning rate is multiplied by --lr_decay.")
flags.DEFINE_float("lr_decay", 0.2, "Learning-rate factor at each boundary.", lower_bound=0.0)
flags.DEFINE_float("momentum", 0.9, "SGD momentum (not Nesterov).", lower_bound=0.0,
                   upper_bound=1.0)
flags.DEFINE_float("weight_decay", 5e-4, "Coupled L2 weight decay on every weight.",
                   lower_bound=0.0)
flags.DEFINE_float("temperature", 1.0, "Softmax temperature of the distillation terms.",
                   lower_bound=1e-6)
flags.DEFINE_float("kd_weight", 1.0, "Weight of the whole distillation part.", lower_bound=0.0)
flags.DEFINE_integer("kd_warmup_epochs", 0, "Ramp the distillation weight linearly from 0 over "
                     "this many epochs (0 = paper).", lower_bound=0)
flags.DEFINE_enum("ce_normalization", "sum", ["sum", "mean_per_network"],
                  "sum (paper): add every head's cross-entropy; mean_per_network: average them "
                  "within each network.")
flags.DEFINE_enum("kd_normalization", "sum", ["sum", "mean_per_student"],
                  "sum (paper): add every KL edge; mean_per_student: average the edges into each "
                  "receiving head.")
flags.DEFINE_enum("precision", "float32", PRECISIONS,
                  "auto: mixed_float16 on GPU, mixed_bfloat16 on a CPU with bf16 instructions, "
                  "else float32.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA (TensorFlow backend; "
                  "JAX always compiles it).")
flags.DEFINE_enum("distribute", "auto", STRATEGIES,
                  "auto: MirroredStrategy when more than one GPU is visible; multi_worker: "
                  "MultiWorkerMirroredStrategy configured by $TF_CONFIG.")
flags.DEFINE_string("model_dir", None, "Run directory (created if needed).")
flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation "
                     "(0 to 2**32 - 1).", lower_bound=0, upper_bound=2**32 - 1)
flags.DEFINE_bool("deterministic", False,
                  "Also make TensorFlow ops deterministic (slower; exact reruns and resumes).")
flags.DEFINE_integer("max_train_examples", None, "Train on N training examples only: the first N "
                     "of a built-in dataset; of an image folder, a stratified subset (every class "
                     "in proportion) drawn with --seed.", lower_bound=1)
flags.DEFINE_integer("max_test_examples", None, "Evaluate on N test examples only: the first N "
                     "of a built-in dataset; of an image folder, a stratified subset drawn with "
                     "seed 0 (the same for every run).", lower_bound=1)
flags.DEFINE_integer("eval_every", 1, "Evaluate on the test split every N epochs (and always "
                     "after the last): long runs on small training sets spend most of their "
                     "time evaluating otherwise.", lower_bound=1)
flags.DEFINE_integer("backup_every", 1, "Write the fault-tolerance backup (weights, optimizer "
                     "state) every N epochs and always after the last: a run killed in between "
                     "resumes from its last backup and trains up to N-1 epochs again, but runs of "
                     "many tiny epochs stop spending most of their time writing checkpoints. "
                     "Results do not depend on it, so a resume may change it.", lower_bound=1)
flags.DEFINE_bool("overwrite", False, "Replace a run with different flags in --model_dir.")
flags.mark_flag_as_required("model_dir")

FLAGS = flags.FLAGS
# The error the script ends with in one line; its own checks raise it too.
UserError = common.UserError


def _user_error_types(*also: type) -> Tuple[type, ...]:
    """The exception types that `user_errors` reports in one line."""
    # The library's type is looked up, not imported: importing dcm_keras starts TensorFlow, and
    # until something has imported it nothing raised can be of its type.
    library = sys.modules.get("dcm_keras.errors")
    return (UserError, OSError, *also) + ((library.UserError,) if library else ())


@contextlib.contextmanager
def user_errors(*also: type) -> Iterator[None]:
    """Turns the user mistakes raised inside into one-line `UserError`s; the rest propagates.

    A user mistake is a `UserError` (this script's checks), a `dcm_keras.errors.UserError` (the
    library's), an OSError (a --model_dir that cannot be written, a missing data folder), or one
    of `also`: what a step's library calls raise for bad input without a type of their own. Only
    set-up runs inside it, and anything else (a TypeError or a KeyError from a bug, say) keeps its
    traceback.
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, _user_error_types(*also)):
            raise UserError(common.one_line(e)) from e
        raise


def _check(validator, name):
    def check(value):
        try:
            validator(value)
        except UserError as e:
            raise flags.ValidationError(common.one_line(e))
        return True

    flags.register_validator(name, check)


_check(parse_connections, "connections")
_check(parse_boundaries, "lr_boundaries")
flags.register_validator("nets", lambda v: len(v) >= 1, "give at least one network")
# absl's bounds let NaN through (every comparison with it is false), and infinity passes a lower
# bound: neither trains to anything, and flags.json could not record them (JSON has neither).
for _name in ("lr", "lr_decay", "momentum", "weight_decay", "temperature", "kd_weight"):
    flags.register_validator(_name, lambda v: v is None or math.isfinite(v),
                             f"--{_name} must be a finite number (not nan or inf)")
# dcm_keras.data.DATASETS, copied: importing dcm_keras starts the backend (a test keeps them equal).
DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagenet2012", "image_folder:PATH")
flags.register_validator(
    "dataset", lambda v: v in DATASETS[:-1] or (v.startswith("image_folder:") and len(v) > 13),
    f"valid datasets: {', '.join(DATASETS)}")


def flagfile_text() -> str:
    """This script's flags in absl's flagfile format (as `FLAGS.flags_into_string()` writes them).

    Flags of other modules are left out: TensorFlow defines some only once imported, after
    parsing, so `--flagfile` would reject them.
    """
    lines = FLAGS.flags_into_string().splitlines()
    own = {FLAGS[name].serialize() for name in RUN_FLAGS + OPERATIONAL_FLAGS}
    return "".join(f"{line}\n" for line in lines if line in own)


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy for `--precision` (resolving `auto` on this machine)."""
    if precision != "auto":
        return precision
    # Imported here, once the backend has started (importing dcm_keras starts it).
    from dcm_keras.precision import auto_policy, cpu_flags

    return auto_policy(_gpu_count(), cpu_flags())


class Task(NamedTuple):
    """This process's place in the run: one chief alone, or a worker of a multi-worker run."""

    type: str
    index: int
    chief: bool
    workers: int


ALONE = Task("chief", 0, True, 1)


def parse_tf_config(text: Optional[str]) -> Task:
    """This process's `Task` (type, index, chief or not, number of workers) from $TF_CONFIG.

    Raises UserError, naming the problem, for a value that MultiWorkerMirroredStrategy could
    not use: missing, not JSON, no cluster, or no entry in the cluster for this worker.
    """
    if not text or not text.strip():
        raise UserError("--distribute=multi_worker needs $TF_CONFIG, e.g. {\"cluster\": "
                        "{\"worker\": [\"host1:2222\", \"host2:2222\"]}, \"task\": "
                        "{\"type\": \"worker\", \"index\": 0}}.")
    config = parse_json(text, "$TF_CONFIG")
    if not isinstance(config, dict):
        raise UserError("$TF_CONFIG must be a JSON object with \"cluster\" and \"task\".")
    cluster = config.get("cluster")
    if (not isinstance(cluster, dict) or not cluster
            or not all(isinstance(v, list) and v and all(isinstance(a, str) and a for a in v)
                       for v in cluster.values())):
        raise UserError("$TF_CONFIG has no usable \"cluster\": it must map task types (chief, "
                        "worker) to lists of \"host:port\" addresses.")
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise UserError(f"$TF_CONFIG's cluster has {', '.join(unsupported)} tasks; "
                        "MultiWorkerMirroredStrategy runs only chief and worker tasks.")
    task = config.get("task")
    kind = task.get("type") if isinstance(task, dict) else None
    index = task.get("index", 0) if isinstance(task, dict) else None
    if not isinstance(kind, str) or not isinstance(index, int) or isinstance(index, bool):
        raise UserError("$TF_CONFIG lacks this worker: it needs \"task\": {\"type\": ..., "
                        f"\"index\": ...}}, got {json.dumps(task)}.")
    if kind not in cluster or not 0 <= index < len(cluster[kind]):
        listed = ", ".join(f"{k}: {len(v)} task{'s' * (len(v) != 1)}"
                           for k, v in cluster.items())
        raise UserError(f"$TF_CONFIG lacks this worker: task {kind} {index} is not in its cluster "
                        f"({listed}; indices start at 0).")
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return Task(kind, index, chief, sum(len(v) for v in cluster.values()))


def _gpu_count() -> int:
    """GPUs the Keras backend sees."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    return 0  # other backends: train.py is tested on TensorFlow and JAX only


class OneDevice:
    """The part of a tf.distribute strategy this script uses, for backends without one."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


def check_backend(config: TrainConfig, backend: str) -> None:
    """Refuses flags that only the TensorFlow backend implements, naming the alternative."""
    if backend == "tensorflow":
        return
    if config.distribute in ("mirrored", "multi_worker"):
        raise UserError(f"--distribute={config.distribute} uses tf.distribute and needs "
                        f"KERAS_BACKEND=tensorflow (this is {backend}); on {backend} use "
                        "--distribute=none or auto, which train on one device.")
    if config.deterministic:
        raise UserError(f"--deterministic sets TensorFlow's op determinism and needs "
                        f"KERAS_BACKEND=tensorflow (this is {backend}).")


def make_strategy(kind: str):
    """The tf.distribute strategy for `--distribute` (`OneDevice` on other backends)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return OneDevice()
    import tensorflow as tf

    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "auto":
        kind = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def epoch_stats_callback():
    """A callback adding the learning rate and the epoch's timings to the epoch's logs.

    The values land in history.csv, TensorBoard and results.json. `learning_rate` is the value
    Keras's TensorBoard callback logs too: the rate LearningRateScheduler set for the epoch. `train_seconds` stops where
    validation starts.
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


def _check_workers_agree(strategy, epoch: int, restore_dir: str) -> None:
    """Refuses to train when the workers restored different epochs (one collective op).

    That happens when --model_dir is not on a file system all workers share: the others would
    not see the chief's backup, and training would silently mix different weights.
    """
    import tensorflow as tf

    values = strategy.run(lambda: tf.constant([float(epoch), float(epoch) ** 2], tf.float64))
    mean, mean_square = strategy.reduce("MEAN", values, axis=None).numpy().tolist()
    if abs(mean_square - mean ** 2) > 1e-9:
        raise UserError(f"the workers found different backups to resume from (this one: {epoch} "
                        f"epochs in {restore_dir}, the mean over workers: {mean:g}); "
                        "--model_dir must be a folder that every worker sees (a shared file "
                        "system).")


def _deployable(run: Run, k: int):
    """Network k's deployable model (no auxiliary heads), always with plain BatchNormalization.

    It takes the dataset's raw pixel values and normalises them itself, and computes in float32
    whatever --precision trained it (`dcm_keras.export_network`, `dcm_keras.shipping`).

    A multi-replica run trains with synchronised BN layers; those are rebuilt as ordinary ones
    (same weights) so that the exported file does not depend on tf.distribute, which Keras's
    synchronised BN needs to be loaded under another backend.
    """
    info = run.data.info
    if not run.device.synchronized_bn:
        return run.dcm.export_network(k, preprocessing=info)
    from dcm_keras import export_network

    plain = _build_network(run.config, run.config.nets[k], info, synchronized_bn=False)
    plain.set_weights(run.nets[k].get_weights())
    return export_network(plain, preprocessing=info)


def run_files_callback(history, log_folders):
    """A callback recording each epoch in history.csv (rewritten whole, atomically: see
    `rundir.history.HistoryFile`) and TensorBoard's event files in the run's manifest."""
    import keras

    class RunFiles(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            history.add(epoch, logs or {})
            if log_folders:
                record_event_files(log_folders)

    return RunFiles()


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
            run = _prepare(config, stack)
        if run is None:
            return 0
        from dcm_keras.guards import NonFiniteLossError
        from experiments.rundir.checkpoints import committed_epoch

        # The backup a rerun resumes from: the chief's own (every worker reads it).
        restore = run.backup.folder if run.task.chief else run.backup.restore_folder
        where = restore.path if restore is not None else os.path.join(run.model_dir,
                                                                      files.BACKUP_DIR)
        try:
            return _fit_and_report(run, process_start)
        except OSError as e:  # a full disk or a folder that became unwritable
            kept = committed_epoch(restore)
            backup = (f"the backup of epoch {kept} in {where} is intact: re-running "
                      "this command resumes from it" if kept else "no epoch had been backed up")
            raise UserError(f"{common.one_line(e)}; {backup}.") from e
        except NonFiniteLossError as e:
            kept = committed_epoch(restore)
            backup = (f"the backup of epoch {kept} in {where} is kept (re-running "
                      "this command resumes from it)" if kept else "no epoch had finished, so "
                      "there is no backup")
            if e.batch is None or math.isfinite(e.loss):  # no batch's loss to name: its words
                raise UserError(f"{common.one_line(e).rstrip('.')}; {backup}.") from e
            raise UserError(f"the training loss became {e.loss} at epoch {e.epoch + 1}, batch "
                            f"{e.batch + 1}: training diverged (is --lr too high?) and was "
                            f"stopped before that epoch could be backed up; {backup}.") from e


@dataclasses.dataclass(frozen=True)
class Device:
    """Where the run computes: the Keras backend, its tf.distribute strategy and dtype policy."""

    backend: str
    strategy: object  # a tf.distribute strategy, or OneDevice
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
    """Everything `_fit_and_report` needs: built by `_prepare`'s steps."""

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


def _prepare(config: TrainConfig, stack: contextlib.ExitStack) -> Optional[Run]:
    """Checks the flags and the run directory, builds the model and the datasets; None if the
    run is already complete.

    Everything that can refuse the command runs before anything is written, the cheap checks
    before the backend starts. What it opens is closed by `stack`.
    """
    task = _check_flags(config)
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
    device = _start_backend(config)  # the backend starts here: everything above is cheap
    # The data module's RuntimeErrors: TensorFlow missing, or a tfds dataset it cannot prepare.
    with user_errors(RuntimeError):
        data = _describe_data(config)
    if task.chief and config.dataset.startswith("image_folder:"):
        print(common.image_folder_summary(config.dataset, data.info, data.num_train,
                                          data.num_test), flush=True)
    nets, dcm = _build_model(config, device, data)
    out, backup, initial_epoch = _restore(config, task, device, dcm, opened, stack)
    with user_errors(RuntimeError):
        data = _load_data(config, device, data, initial_epoch)
    # Written only once everything above has been checked, so a bad command leaves no trace.
    if task.chief:
        opened.start(flags_json, flagfile_text())
        backup.folder = backup.restore_folder = opened.backup_folder(create=True)
        # A disk that is already full is refused now, not after an epoch of training: two
        # checkpoints (the committed one and the next) must fit (checkpoints.check_room).
        backup.check_room(out)
    return Run(config=config, task=task, device=device, data=data, nets=nets, dcm=dcm,
               model_dir=opened.path, run_dir=opened, out=out, backup=backup,
               initial_epoch=initial_epoch)


def _check_flags(config: TrainConfig) -> Task:
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


def _start_backend(config: TrainConfig) -> Device:
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


def _describe_data(config: TrainConfig) -> Data:
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


def _build_model(config: TrainConfig, device: Device, data: Data) -> Tuple[list, object]:
    """The networks and the compiled DCM over them, in the strategy's scope."""
    import keras

    from dcm_keras import DCM

    with device.strategy.scope():
        nets = [_build_network(config, name, data.info, device.synchronized_bn)
                for name in config.nets]
        dcm = DCM(nets, connections=config.distillation, temperature=config.temperature,
                  kd_weight=config.kd_weight, kd_warmup_epochs=config.kd_warmup_epochs,
                  ce_normalization=config.ce_normalization,
                  kd_normalization=config.kd_normalization)
        # The rate is set per epoch by LearningRateScheduler (see _fit_and_report).
        optimizer = keras.optimizers.SGD(config.lr, momentum=config.momentum, nesterov=False)
        # JAX runs its steps eagerly, op by op, unless they are compiled.
        dcm.compile(optimizer=optimizer,
                    jit_compile=config.jit_compile if device.backend == "tensorflow" else True)
    return nets, dcm


def _build_network(config: TrainConfig, name: str, info, synchronized_bn: bool):
    """Network `name` with the method's heads, for the dataset `info` describes."""
    from dcm_keras import networks

    return networks.build(name, info.num_classes, info.image_shape, aux_heads=config.aux_heads,
                          weight_decay=config.weight_decay, synchronized_bn=synchronized_bn)


def _restore(config: TrainConfig, task: Task, device: Device, dcm, opened: TrainingRun,
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
        _check_workers_agree(device.strategy, initial_epoch,
                             os.path.join(opened.path, files.BACKUP_DIR))
    return out, backup, initial_epoch


def _load_data(config: TrainConfig, device: Device, data: Data, initial_epoch: int) -> Data:
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


def _fit_and_report(run: Run, process_start: float) -> int:
    """Trains from the last finished epoch, then exports networks and writes results."""
    import keras

    from dcm_keras import data, save_network, shipping
    from dcm_keras.guards import StopOnNonFiniteLoss
    from experiments.rundir.checkpoints import debug_pause

    config, dcm, model_dir, out = run.config, run.dcm, run.model_dir, run.out
    epochs, initial_epoch = config.epochs, run.initial_epoch
    history = HistoryFile(out)
    logs = log_folders(out) if importlib.util.find_spec("tensorflow") else []
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
        # Restored by the _restore step; kept after training and removed only once results.json is
        # written, so a kill during export resumes with nothing left to train.
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
    eval_every = config.eval_every
    if initial_epoch >= epochs:
        print(f"Resuming {model_dir}: all {epochs} epochs are trained; exporting from the backup.",
              flush=True)
    elif initial_epoch:
        print(f"Resuming {model_dir} at epoch {initial_epoch + 1}/{epochs}.", flush=True)
    fit_logs = {}
    if initial_epoch < epochs:
        fit_logs = dcm.fit(run.data.train, validation_data=run.data.test, epochs=epochs,
                           initial_epoch=initial_epoch, callbacks=callbacks,
                           # the repeated tf.data pipeline (see _load_data); a PyDataset
                           # is re-iterated every epoch instead
                           steps_per_epoch=(None if hasattr(run.data.train, "epoch_setter")
                                            else run.data.steps_per_epoch),
                           validation_freq=eval_every,
                           shuffle=False,  # the data module shuffles
                           verbose=1 if sys.stdout.isatty() else 2).history
    debug_dir = os.environ.get("DCM_DEBUG_WEIGHTS_DIR")
    if debug_dir:  # a test hook (see the module docstring)
        dcm.save_weights(os.path.join(debug_dir, f"{run.task.type}_{run.task.index}.weights.h5"))

    history = history.complete_rows() if run.task.chief else []
    if config.distribute == "multi_worker":
        # Every worker must take the same branch (evaluate is a collective), so decide on what
        # all of them know: whether this process trained the final epoch.
        if (len(fit_logs.get("loss", [])) == epochs - initial_epoch and epochs > initial_epoch
                and epochs % eval_every == 0):  # Keras evaluated the final epoch
            last = {k: v[-1] for k, v in fit_logs.items()}
        else:
            last = {}
    else:
        last = history[-1] if history else {}
    if last.get("epoch", epochs - 1) != epochs - 1 or not all(
            math.isfinite(last.get(f"val_{h}_acc", math.nan)) for h in dcm.flat_heads):
        # No usable row for the final epoch (e.g. history.csv was deleted): measure again.
        last = {f"val_{k}": v for k, v in
                dcm.evaluate(run.data.test, verbose=0, return_dict=True).items()}
    if not run.task.chief:
        return 0

    nets_summary = {}
    for k, (name, net, heads, ids) in enumerate(zip(config.nets, run.nets, dcm.heads,
                                                    dcm.head_ids)):
        deployable = _deployable(run, k)
        out.record(network_file(k))  # recorded first: a kill may follow the write
        save_network(deployable, out.proc_path(network_file(k)), overwrite=True)
        if k == 0:
            debug_pause("export")
        entry = {
            "architecture": name,
            "file": network_file(k),
            "params": int(deployable.count_params()),
            "params_with_heads": int(net.count_params()),
            "test_error": {h: common.error_percent(last[f"val_{i}_acc"])
                           for h, i in zip(heads, ids)},
        }
        if f"val_{ids[-1]}_top5" in last:
            entry["top5_error"] = common.error_percent(last[f"val_{ids[-1]}_top5"])
        nets_summary[f"net{k + 1}"] = entry

    median_train = common.steady_epoch_seconds(history)
    missing = sorted(set(range(epochs)) - {row["epoch"] for row in history})
    if missing:  # history.csv was removed or cut before this process started (see HistoryFile)
        print(f"warning: {os.path.join(model_dir, files.HISTORY_FILE)} lacks {len(missing)} of "
              f"the {epochs} epochs (from epoch {missing[0] + 1}); results.json's history is "
              "incomplete and its wall_time_s is null.", flush=True)
    info = run.data.info
    results = {
        "complete": True,
        "flags": config.to_json(),
        "method": config.method,
        "connections": [[e.student, e.teacher, e.weight] for e in dcm.edges],
        "dataset": {"name": info.name, "num_classes": info.num_classes,
                    "image_shape": list(info.image_shape), "mean": list(info.mean),
                    "std": list(info.std), "train_examples": run.data.num_train,
                    "test_examples": run.data.num_test,
                    **({"classes": list(info.class_names)} if info.class_names else {}),
                    # Examples per class actually used (None where only a pass over the data
                    # could tell: tfds sources).
                    "train_class_counts": data.class_counts(
                        config.dataset, "train", data_dir=config.data_dir,
                        max_examples=config.max_train_examples, seed=config.seed),
                    "test_class_counts": data.class_counts(
                        config.dataset, "test", data_dir=config.data_dir,
                        max_examples=config.max_test_examples)},
        "backend": run.device.backend,
        "precision": run.device.precision,
        "replicas": run.device.strategy.num_replicas_in_sync,
        "workers": run.task.workers,
        "synchronized_bn": run.device.synchronized_bn,
        "networks": nets_summary,
        # What net1.keras, ... take: raw pixels, normalised inside (see dcm_keras.shipping).
        "export": {**shipping.describe(info), "precision": "float32"},
        "epochs": epochs,
        "steps_per_epoch": run.data.steps_per_epoch,
        "resumed_at_epoch": initial_epoch,
        # Summed over epochs, so a run resumed after a kill reports its whole training time.
        "wall_time_s": (None if missing else
                        sum(row.get("epoch_seconds", 0.0) for row in history)),
        "process_wall_time_s": time.perf_counter() - process_start,
        "epoch_train_seconds_median": median_train,
        "train_images_per_sec": (run.data.steps_per_epoch * config.batch_size / median_train
                                 if median_train else None),
        "versions": common.versions(),
        # Epochs without an evaluation have NaN test columns in history.csv; JSON gets null.
        "history": history,
    }
    out.record(files.PLOT_FILE)
    plots.plot_test_error(history, {f"net{k + 1}": (name, heads) for k, (name, heads)
                                    in enumerate(zip(config.nets, dcm.heads))},
                          out.proc_path(files.PLOT_FILE),
                          f"{config.method}: {' + '.join(config.nets)} on {info.name}")
    out.write_json(files.RESULTS_FILE, without_nan(results))
    run.run_dir.finish()
    summary = ", ".join(f"{k} ({v['architecture']}) {v['test_error']['logits']:.2f}%"
                        for k, v in nets_summary.items())
    print(f"Test error: {summary}. Results in {model_dir}.", flush=True)
    return 0


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

r"""Trains networks with DCM or a related method and leaves a self-describing run directory.

    python -m experiments.train --method=dcm --nets=wrn_28_10,mobilenet --dataset=cifar100 \
        --model_dir=runs/dcm_wrn_mobilenet

The defaults are the paper's CIFAR-100 recipe (SGD 0.1, momentum 0.9, coupled weight decay 5e-4,
batch 128, 200 epochs, lr x0.2 at epochs 60, 120 and 160). `--model_dir` ends up holding:

    flags.json, flagfile.txt   the run's flags (`--flagfile=flagfile.txt` re-runs it)
    logs/                      TensorBoard: every head's accuracy, the loss parts, learning rate
    history.csv                one row per epoch (CSVLogger, appended across resumes)
    backup/                    BackupAndRestore state while training; removed once finished
    net1.keras, net2.keras     the deployable networks, without auxiliary heads
    results.json               final test errors per network and head, timing, versions, history
    test_error.png             test error per epoch of every network

Re-running the same command resumes a killed run at its last finished epoch (optimizer state
included); re-running a finished one does nothing. A directory holding a run with other flags is
refused unless `--overwrite` is given. Checkpoints are committed atomically, so a kill at any
moment (a checkpoint write included) leaves the last finished epoch resumable
(experiments/fault_tolerance.py says why Keras's own BackupAndRestore does not). A NaN or infinite
training loss stops the run with an error before the diverged epoch is backed up. The script never
writes through a symbolic link inside `--model_dir`.

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
`DCM_DEBUG_PAUSE` is described in experiments/fault_tolerance.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from absl import app, flags

from experiments import common, plots

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
flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")
flags.DEFINE_bool("deterministic", False,
                  "Also make TensorFlow ops deterministic (slower; exact reruns and resumes).")
flags.DEFINE_integer("max_train_examples", None, "Train on the first N training examples only.",
                     lower_bound=1)
flags.DEFINE_integer("max_test_examples", None, "Evaluate on the first N test examples only.",
                     lower_bound=1)
flags.DEFINE_integer("eval_every", 1, "Evaluate on the test split every N epochs (and always "
                     "after the last): long runs on small training sets spend most of their "
                     "time evaluating otherwise.", lower_bound=1)
flags.DEFINE_bool("overwrite", False, "Replace a run with different flags in --model_dir.")
flags.mark_flag_as_required("model_dir")

# Every flag above, in definition order: what flags.json records and a resume compares.
RUN_FLAGS = common.RUN_FLAGS
FLAGS = flags.FLAGS


class UserError(Exception):
    """A problem with the flags, the run directory or the data that the user can fix."""


@contextlib.contextmanager
def user_errors():
    """Turns the errors of configuration and data checks into `UserError`s.

    Only set-up runs inside it: an error while training is a bug and keeps its traceback.
    """
    try:
        yield
    # RuntimeError: the data module's "could not prepare tfds dataset ..." (no internet).
    # OSError: a --model_dir that cannot be written (read-only, full).
    except (ValueError, OSError, RuntimeError) as e:
        raise UserError(common.one_line(e)) from e


def _json(text: str, what: str):
    """`text` parsed as JSON; a ValueError naming `what` and the position when it is not."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON ({e.msg} at character {e.pos}).")


def parse_connections(text: Optional[str]):
    """`--connections` as a preset name or a list of edges; raises ValueError when unreadable."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("["):
        edges = _json(text, "--connections")
        if not isinstance(edges, list):
            raise ValueError("--connections JSON must be a list of [student, teacher, weight].")
        for k, edge in enumerate(edges):
            _check_edge(edge, k)
        return edges
    from dcm_keras.connections import PRESETS  # imports TensorFlow: only when needed

    if text not in PRESETS:
        raise ValueError(f"Unknown --connections {text!r}. Valid: {', '.join(PRESETS)}, or a "
                         "JSON list of [student, teacher, weight] edges.")
    return text


def _check_edge(edge, k: int) -> None:
    """Refuses an edge of `--connections` JSON that is not [student, teacher(, weight)]."""
    where = f"--connections edge {k + 1} ({json.dumps(edge)})"
    if isinstance(edge, dict):
        unknown = sorted(set(edge) - {"student", "teacher", "weight"})
        if unknown or "student" not in edge or "teacher" not in edge:
            raise ValueError(f"{where} must have the keys student, teacher and optionally "
                             "weight" + (f", not {', '.join(unknown)}" if unknown else "") + ".")
        edge = [edge["student"], edge["teacher"]] + ([edge["weight"]] if "weight" in edge else [])
    if not isinstance(edge, list) or len(edge) not in (2, 3):
        raise ValueError(f"{where} must be [student, teacher] or [student, teacher, weight].")
    if not all(isinstance(head, str) and head for head in edge[:2]):
        raise ValueError(f"{where}: student and teacher must be head names such as "
                         "\"net1_logits\".")
    if len(edge) == 3:
        weight = edge[2]
        if (not isinstance(weight, (int, float)) or isinstance(weight, bool)
                or not math.isfinite(weight) or weight < 0):
            raise ValueError(f"{where}: the weight must be a finite number >= 0, got "
                             f"{json.dumps(weight)}.")


def parse_boundaries(values: List[str]) -> List[int]:
    """`--lr_boundaries` as strictly increasing positive epochs."""
    try:
        epochs = [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--lr_boundaries must be integers (epochs), got {','.join(values)}.")
    if any(e < 1 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise ValueError("--lr_boundaries must be strictly increasing epochs >= 1, got "
                         f"{','.join(values)}.")
    return epochs


def _check(validator, name):
    def check(value):
        try:
            validator(value)
        except ValueError as e:
            raise flags.ValidationError(common.one_line(e))
        return True

    flags.register_validator(name, check)


_check(parse_connections, "connections")
_check(parse_boundaries, "lr_boundaries")
flags.register_validator("nets", lambda v: len(v) >= 1, "give at least one network")
DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagenet2012", "image_folder:PATH")
flags.register_validator(
    "dataset", lambda v: v in DATASETS[:-1] or (v.startswith("image_folder:") and len(v) > 13),
    f"valid datasets: {', '.join(DATASETS)}")


def run_flags() -> Dict[str, object]:
    """This run's flags as a JSON-ready dict."""
    return {name: FLAGS[name].value for name in RUN_FLAGS}


def flagfile_text() -> str:
    """This script's flags in absl's flagfile format (as `FLAGS.flags_into_string()` writes them).

    Flags of other modules are left out: TensorFlow defines some only once imported, after
    parsing, so `--flagfile` would reject them.
    """
    lines = FLAGS.flags_into_string().splitlines()
    own = {FLAGS[name].serialize() for name in RUN_FLAGS}
    return "".join(f"{line}\n" for line in lines if line in own)


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy for `--precision` (resolving `auto` on this machine)."""
    if precision != "auto":
        return precision
    if _gpu_count():
        return "mixed_float16"
    try:
        with open("/proc/cpuinfo") as f:
            cpu_flags = set(f.read().split())
    except OSError:
        cpu_flags = set()
    return "mixed_bfloat16" if cpu_flags & {"avx512_bf16", "amx_bf16"} else "float32"


def parse_tf_config(text: Optional[str]) -> Tuple[str, int, bool, int]:
    """`(task type, index, whether it is the chief, number of workers)` from `$TF_CONFIG`.

    Raises ValueError, naming the problem, for a value that MultiWorkerMirroredStrategy could
    not use: missing, not JSON, no cluster, or no entry in the cluster for this worker.
    """
    if not text or not text.strip():
        raise ValueError("--distribute=multi_worker needs $TF_CONFIG, e.g. {\"cluster\": "
                         "{\"worker\": [\"host1:2222\", \"host2:2222\"]}, \"task\": "
                         "{\"type\": \"worker\", \"index\": 0}}.")
    config = _json(text, "$TF_CONFIG")
    if not isinstance(config, dict):
        raise ValueError("$TF_CONFIG must be a JSON object with \"cluster\" and \"task\".")
    cluster = config.get("cluster")
    if (not isinstance(cluster, dict) or not cluster
            or not all(isinstance(v, list) and v and all(isinstance(a, str) and a for a in v)
                       for v in cluster.values())):
        raise ValueError("$TF_CONFIG has no usable \"cluster\": it must map task types (chief, "
                         "worker) to lists of \"host:port\" addresses.")
    unsupported = sorted(set(cluster) - {"chief", "worker"})
    if unsupported:
        raise ValueError(f"$TF_CONFIG's cluster has {', '.join(unsupported)} tasks; "
                         "MultiWorkerMirroredStrategy runs only chief and worker tasks.")
    task = config.get("task")
    kind = task.get("type") if isinstance(task, dict) else None
    index = task.get("index", 0) if isinstance(task, dict) else None
    if not isinstance(kind, str) or not isinstance(index, int) or isinstance(index, bool):
        raise ValueError("$TF_CONFIG lacks this worker: it needs \"task\": {\"type\": ..., "
                         f"\"index\": ...}}, got {json.dumps(task)}.")
    if kind not in cluster or not 0 <= index < len(cluster[kind]):
        listed = ", ".join(f"{k}: {len(v)} task{'s' * (len(v) != 1)}"
                           for k, v in cluster.items())
        raise ValueError(f"$TF_CONFIG lacks this worker: task {kind} {index} is not in its cluster "
                         f"({listed}; indices start at 0).")
    chief = kind == "chief" or (kind == "worker" and index == 0 and "chief" not in cluster)
    return kind, index, chief, sum(len(v) for v in cluster.values())


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


def check_backend(config: Dict[str, object], backend: str) -> None:
    """Refuses flags that only the TensorFlow backend implements, naming the alternative."""
    if backend == "tensorflow":
        return
    if config["distribute"] in ("mirrored", "multi_worker"):
        raise ValueError(f"--distribute={config['distribute']} uses tf.distribute and needs "
                         f"KERAS_BACKEND=tensorflow (this is {backend}); on {backend} use "
                         "--distribute=none or auto, which train on one device.")
    if config["deterministic"]:
        raise ValueError(f"--deterministic sets TensorFlow's op determinism and needs "
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


def learning_rate(config: Dict, epoch: int) -> float:
    """The paper's step schedule: `lr * lr_decay ** (number of boundaries <= epoch)`."""
    passed = sum(epoch >= b for b in parse_boundaries(list(config["lr_boundaries"])))
    return float(config["lr"]) * float(config["lr_decay"]) ** passed


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


def _clear_run(model_dir: str, previous: dict) -> None:
    """Removes the files the replaced run wrote, and nothing else a user keeps there.

    `previous` is that run's flags.json: its networks tell which `netK.keras` files it exported.
    """
    for name in (common.BACKUP_DIR, common.LOG_DIR):
        shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
    nets = previous.get("nets")
    count = len(nets) if isinstance(nets, list) else 0
    names = [common.FLAGS_FILE, common.FLAGFILE, common.RESULTS_FILE, common.HISTORY_FILE,
             common.PLOT_FILE] + [f"net{k + 1}.keras" for k in range(count)]
    for name in names:
        path = os.path.join(model_dir, name)
        if os.path.lexists(path):
            os.remove(path)
    common.remove_stale_temporaries(model_dir, names)


def _check_workers_agree(strategy, epoch: int, restore_dir: str) -> None:
    """Refuses to train when the workers restored different epochs (one collective op).

    That happens when --model_dir is not on a file system all workers share: the others would
    not see the chief's backup, and training would silently mix different weights.
    """
    import tensorflow as tf

    values = strategy.run(lambda: tf.constant([float(epoch), float(epoch) ** 2], tf.float64))
    mean, mean_square = strategy.reduce("MEAN", values, axis=None).numpy().tolist()
    if abs(mean_square - mean ** 2) > 1e-9:
        raise ValueError(f"the workers found different backups to resume from (this one: {epoch} "
                         f"epochs in {restore_dir}, the mean over workers: {mean:g}); "
                         "--model_dir must be a folder that every worker sees (a shared file "
                         "system).")


def _written_paths(num_nets: int) -> List[str]:
    """Everything a run writes in --model_dir, relative to it."""
    return [common.FLAGS_FILE, common.FLAGFILE, common.HISTORY_FILE, common.RESULTS_FILE,
            common.PLOT_FILE, common.BACKUP_DIR, os.path.join(common.LOG_DIR, "train"),
            os.path.join(common.LOG_DIR, "validation")] + [
        f"net{k + 1}.keras" for k in range(num_nets)]


def _deployable(run: dict, k: int):
    """Network k's deployable model (no auxiliary heads), always with plain BatchNormalization.

    It takes the dataset's raw pixel values and normalises them itself, and computes in float32
    whatever --precision trained it (`dcm_keras.export_network`, `dcm_keras.shipping`).

    A multi-replica run trains with synchronised BN layers; those are rebuilt as ordinary ones
    (same weights) so that the exported file does not depend on tf.distribute, which Keras's
    synchronised BN needs to be loaded under another backend.
    """
    dcm = run["dcm"]
    if not run["synchronized_bn"]:
        return dcm.export_network(k, preprocessing=run["info"])
    from dcm_keras import export_network, networks

    config, info, trained = run["config"], run["info"], run["nets"][k]
    plain = networks.build(config["nets"][k], info.num_classes, info.image_shape,
                           aux_heads=common.METHODS[run["method"]][0],
                           weight_decay=float(config["weight_decay"]), synchronized_bn=False)
    plain.set_weights(trained.get_weights())
    return export_network(plain, preprocessing=info)


def _save_model_atomically(model, path: str) -> str:
    """`save_network` (a temporary file and a rename: never a truncated `.keras`), first removing
    the temporary files of a process killed while saving (they share `replacing`'s names)."""
    from dcm_keras import save_network

    directory, base = os.path.split(path)
    common.remove_stale_temporaries(directory, [base])
    return save_network(model, path, overwrite=True)


def history_logger(path: str):
    """Keras's `CSVLogger` (appending), refusing to open its file through a symbolic link.

    It keeps the file open for the whole run, so the check right before it opens (and the
    comparison of what it opened with what is at `path`) covers a link planted after start-up.
    """
    import keras

    class HistoryLogger(keras.callbacks.CSVLogger):
        def on_train_begin(self, logs=None):
            directory = os.path.dirname(os.path.abspath(path))
            common.check_no_symlinks(directory, os.path.basename(path))
            super().on_train_begin(logs)
            opened = os.fstat(self.csv_file.fileno())
            there = os.lstat(path)
            if (opened.st_dev, opened.st_ino) != (there.st_dev, there.st_ino):
                self.csv_file.close()
                raise ValueError(f"{path} changed while it was opened (a link planted there?); "
                                 "refusing to write through it.")

    return HistoryLogger(path, append=True)


def train(config: Dict[str, object]) -> int:
    """Runs (or resumes) the training described by `config` (= `run_flags()`). Returns 0.

    Raises `UserError` for bad flags, a run directory holding another run, bad data, or a loss
    that became NaN or infinite.
    """
    process_start = time.perf_counter()
    scratch = []  # a non-chief worker's temporary folder, removed whatever happens
    try:
        with user_errors():
            run = _prepare(config, scratch)
        if run is None:
            return 0
        from experiments.fault_tolerance import NonFiniteLoss, committed_epoch

        try:
            return _fit_and_report(run, process_start)
        except OSError as e:  # a full disk or a folder that became unwritable
            kept = committed_epoch(run["restore_dir"])
            backup = (f"the backup of epoch {kept} in {run['restore_dir']} is intact: re-running "
                      "this command resumes from it" if kept else "no epoch had been backed up")
            raise UserError(f"{common.one_line(e)}; {backup}.") from e
        except NonFiniteLoss as e:
            kept = committed_epoch(run["restore_dir"])
            backup = (f"the backup of epoch {kept} in {run['restore_dir']} is kept (re-running "
                      "this command resumes from it)" if kept else "no epoch had finished, so "
                      "there is no backup")
            raise UserError(f"{e}: training diverged (is --lr too high?) and was stopped before "
                            f"that epoch could be backed up; {backup}.") from e
    finally:
        for folder in scratch:
            shutil.rmtree(folder, ignore_errors=True)


def _prepare(config: Dict[str, object], scratch: List[str]) -> Optional[dict]:
    """Checks the run directory, builds the model and the datasets; None if already complete.

    A non-chief worker of a multi-worker run appends the temporary folder it writes to `scratch`.
    """
    model_dir = os.path.abspath(str(config["model_dir"]))
    method = str(config["method"])
    aux_heads, connections = common.METHODS[method]
    if config["connections"] is not None:
        connections = parse_connections(str(config["connections"]))
    elif connections not in ("none", "dks") and len(config["nets"]) < 2:
        raise ValueError(f"--method={method} distils between networks; give at least two --nets "
                         "(e.g. --nets=wrn_16_2,wrn_16_2).")
    boundaries = parse_boundaries(list(config["lr_boundaries"]))  # fails before any write
    late = [b for b in boundaries if b >= int(config["epochs"])]
    if late:
        print(f"note: --lr_boundaries {','.join(map(str, late))} are not below --epochs="
              f"{config['epochs']}: the learning rate never drops at "
              f"{'them' if len(late) > 1 else 'it'}.", flush=True)
    common.check_data_dir(config["data_dir"])
    task: Tuple[str, int, bool, int] = ("chief", 0, True, 1)
    if config["distribute"] == "multi_worker":
        task = parse_tf_config(os.environ.get("TF_CONFIG"))
    chief = task[2]

    # --- the run directory: new, resumed, finished or holding another run --------------------
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise NotADirectoryError(f"--model_dir {model_dir} is a file, not a directory.")
    flags_path = os.path.join(model_dir, common.FLAGS_FILE)
    previous = common.read_json(flags_path)
    replace = False
    if previous is not None:
        diffs = common.flag_differences(previous, config)
        if diffs and not config["overwrite"]:
            raise ValueError(f"{model_dir} holds a run with different flags ({'; '.join(diffs)}); "
                             "use another --model_dir or pass --overwrite to replace it.")
        if not diffs and common.completed_results(model_dir):
            print(f"Run in {model_dir} is already complete; see "
                  f"{os.path.join(model_dir, common.RESULTS_FILE)}. Nothing to do.", flush=True)
            shutil.rmtree(os.path.join(model_dir, common.BACKUP_DIR), ignore_errors=True)
            return None
        replace = bool(diffs)
    if chief:  # refuses links before anything is written (or, with --overwrite, removed)
        common.check_no_symlinks(model_dir, *_written_paths(len(config["nets"])))
    if previous is None and chief and not config["overwrite"] and os.path.isdir(model_dir):
        # No flags.json, yet files under the names a run writes: not this script's run (it
        # writes flags.json before anything else), so they are the user's. Never replace them
        # (nor empty a backup/ folder of theirs) unasked.
        taken = sorted({name.split(os.sep)[0] for name in _written_paths(len(config["nets"]))
                        if os.path.lexists(os.path.join(model_dir, name.split(os.sep)[0]))})
        if taken:
            raise ValueError(f"{model_dir} holds {', '.join(taken)} but no flags.json, so not a "
                             "run of this script; use another --model_dir or pass --overwrite to "
                             "replace them.")

    # The backend starts here: everything above is cheap.
    import keras

    from dcm_keras import DCM, data, networks
    from experiments.fault_tolerance import AtomicBackupAndRestore

    backend = keras.backend.backend()
    check_backend(config, backend)
    strategy = make_strategy(str(config["distribute"]))
    precision = resolve_precision(str(config["precision"]))
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(int(config["seed"]))
    if config["deterministic"]:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()

    dataset = str(config["dataset"])
    info = data.get_info(dataset, data_dir=config["data_dir"], image_size=config["image_size"])
    batch_size = int(config["batch_size"])
    num_train = min(info.num_train, config["max_train_examples"] or info.num_train)
    num_test = min(info.num_test, config["max_test_examples"] or info.num_test)
    steps_per_epoch = num_train // batch_size  # training batches drop their remainder
    if steps_per_epoch < 1:
        raise ValueError(f"--batch_size={batch_size} exceeds the {num_train} training examples.")

    # Several replicas: batch statistics over the global batch, as on one device.
    synchronized_bn = strategy.num_replicas_in_sync > 1
    with strategy.scope():
        nets = [networks.build(name, info.num_classes, info.image_shape, aux_heads=aux_heads,
                               weight_decay=float(config["weight_decay"]),
                               synchronized_bn=synchronized_bn)
                for name in config["nets"]]
        dcm = DCM(nets, connections=connections, temperature=float(config["temperature"]),
                  kd_weight=float(config["kd_weight"]),
                  kd_warmup_epochs=int(config["kd_warmup_epochs"]),
                  ce_normalization=config["ce_normalization"],
                  kd_normalization=config["kd_normalization"])
        # The rate is set per epoch by LearningRateScheduler (see train_and_export).
        optimizer = keras.optimizers.SGD(float(config["lr"]), momentum=float(config["momentum"]),
                                         nesterov=False)
        # JAX runs its steps eagerly, op by op, unless they are compiled.
        dcm.compile(optimizer=optimizer,
                    jit_compile=bool(config["jit_compile"]) if backend == "tensorflow" else True)

    # Non-chief workers write to a temporary folder (removed by `train`) and resume from the
    # chief's backup: Keras's BackupAndRestore has no notion of workers, and all of them must
    # save (reading synchronised variables takes every worker) but only one may write the run.
    restore_dir = os.path.join(model_dir, common.BACKUP_DIR)
    if chief:
        out_dir = model_dir
    else:
        out_dir = tempfile.mkdtemp(prefix=f"dcm_{task[0]}{task[1]}_")
        scratch.append(out_dir)
    backup = AtomicBackupAndRestore(os.path.join(out_dir, common.BACKUP_DIR),
                                    restore_dir=restore_dir)
    with strategy.scope():
        # Weights and optimizer state of the last finished epoch, also when no epoch is left to
        # train (a run killed while exporting must export the trained weights).
        if replace:  # the old run's backup is about to go (the chief removes it below)
            backup.start_over()
            initial_epoch = 0
        else:
            initial_epoch = backup.restore(dcm)
    if task[3] > 1:
        _check_workers_agree(strategy, initial_epoch, restore_dir)
    # epoch=initial_epoch: a resumed run sees exactly the batches an uninterrupted one would.
    load_args = dict(batch_size=batch_size, data_dir=config["data_dir"],
                     image_size=config["image_size"])
    # tf.data on TensorFlow; elsewhere a Keras PyDataset over NumPy arrays, which needs no
    # TensorFlow for Fashion-MNIST (same normalisation and augmentation, other random draws).
    load = data.load if backend == "tensorflow" else data.load_arrays
    train_ds = load(dataset, "train", training=True, seed=int(config["seed"]),
                    max_examples=config["max_train_examples"], epoch=initial_epoch, **load_args)
    if backend == "tensorflow":
        import tensorflow as tf

        # The training pipeline's length is unknown to tf.data (it is a flat_map over epochs).
        # Keras then finds each epoch's end by running out of data, and that extra step still
        # advances optimizer.iterations, shifting the step-based lr schedule by one step per epoch.
        train_ds = train_ds.apply(tf.data.experimental.assert_cardinality(steps_per_epoch))
    test_ds = load(dataset, "test", training=False, max_examples=config["max_test_examples"],
                   **load_args)

    # Written only once everything above has been checked, so a bad command leaves no trace.
    os.makedirs(out_dir, exist_ok=True)
    if chief:
        if replace:
            _clear_run(model_dir, previous)
        common.write_json(flags_path, config)
        common.write_text(os.path.join(model_dir, common.FLAGFILE), flagfile_text())
    return dict(config=config, model_dir=model_dir, out_dir=out_dir, backup=backup,
                restore_dir=restore_dir, task=task, synchronized_bn=synchronized_bn,
                chief=chief, method=method, info=info, dcm=dcm, nets=nets,
                train_ds=train_ds, test_ds=test_ds, initial_epoch=initial_epoch,
                steps_per_epoch=steps_per_epoch, batch_size=batch_size, num_train=num_train,
                num_test=num_test, precision=precision, strategy=strategy, backend=backend)


def _fit_and_report(run: dict, process_start: float) -> int:
    """Trains from the last finished epoch, then exports networks and writes results."""
    import keras

    from dcm_keras import data, shipping
    from experiments.fault_tolerance import StopOnNonFiniteLoss, debug_pause

    config, dcm, model_dir, out_dir = run["config"], run["dcm"], run["model_dir"], run["out_dir"]
    epochs, initial_epoch = int(config["epochs"]), run["initial_epoch"]
    history_path = os.path.join(out_dir, common.HISTORY_FILE)
    callbacks = [
        # Epoch-granular drops, as the released code's (and PyTorch's MultiStepLR): every step of
        # epoch e uses lr * decay ** (boundaries passed), and a resumed run sets it again.
        keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate(config, epoch)),
        epoch_stats_callback(),
        # Logged before the backup is taken: a kill in between re-runs (and re-logs) the epoch
        # rather than losing its row; read_history keeps the last row of each epoch.
        history_logger(history_path),
        # Raises at the first non-finite batch loss, before the epoch (and its backup) ends.
        StopOnNonFiniteLoss(),
        # Restored in _prepare; kept after training and removed only once results.json is
        # written, so a kill during export resumes with nothing left to train.
        run["backup"],
    ]
    if importlib.util.find_spec("tensorflow") is not None:  # it writes through tf.summary
        callbacks.insert(2, keras.callbacks.TensorBoard(
            log_dir=os.path.join(out_dir, common.LOG_DIR), write_graph=False, profile_batch=0))
    else:
        print("TensorFlow is not installed: no TensorBoard logs (history.csv and results.json "
              "hold the same numbers).", flush=True)
    if hasattr(run["train_ds"], "epoch_setter"):  # data.ArrayDataset: new draws every epoch
        callbacks.insert(0, run["train_ds"].epoch_setter())
    eval_every = int(config["eval_every"])
    if initial_epoch >= epochs:
        print(f"Resuming {model_dir}: all {epochs} epochs are trained; exporting from the backup.",
              flush=True)
    elif initial_epoch:
        print(f"Resuming {model_dir} at epoch {initial_epoch + 1}/{epochs}.", flush=True)
    fit_logs = {}
    if initial_epoch < epochs:
        fit_logs = dcm.fit(run["train_ds"], validation_data=run["test_ds"], epochs=epochs,
                           initial_epoch=initial_epoch, callbacks=callbacks,
                           validation_freq=eval_every,
                           shuffle=False,  # the data module shuffles
                           verbose=1 if sys.stdout.isatty() else 2).history
    debug_dir = os.environ.get("DCM_DEBUG_WEIGHTS_DIR")
    if debug_dir:  # a test hook (see the module docstring)
        task_type, task_index = run["task"][:2]
        dcm.save_weights(os.path.join(debug_dir, f"{task_type}_{task_index}.weights.h5"))

    history = common.read_history(history_path) if run["chief"] else []
    if config["distribute"] == "multi_worker":
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
                dcm.evaluate(run["test_ds"], verbose=0, return_dict=True).items()}
    if not run["chief"]:
        return 0

    nets_summary = {}
    for k, (name, net, heads, ids) in enumerate(zip(config["nets"], run["nets"], dcm.heads,
                                                    dcm.head_ids)):
        deployable = _deployable(run, k)
        path = _save_model_atomically(deployable, os.path.join(model_dir, f"net{k + 1}.keras"))
        if k == 0:
            debug_pause("export")
        entry = {
            "architecture": name,
            "file": os.path.basename(path),
            "params": int(deployable.count_params()),
            "params_with_heads": int(net.count_params()),
            "test_error": {h: common.error_percent(last[f"val_{i}_acc"])
                           for h, i in zip(heads, ids)},
        }
        if f"val_{ids[-1]}_top5" in last:
            entry["top5_error"] = common.error_percent(last[f"val_{ids[-1]}_top5"])
        nets_summary[f"net{k + 1}"] = entry

    median_train = common.steady_epoch_seconds(history)
    info = run["info"]
    results = {
        "complete": True,
        "flags": config,
        "method": run["method"],
        "connections": [[e.student, e.teacher, e.weight] for e in dcm.edges],
        "dataset": {"name": info.name, "num_classes": info.num_classes,
                    "image_shape": list(info.image_shape), "mean": list(info.mean),
                    "std": list(info.std), "train_examples": run["num_train"],
                    "test_examples": run["num_test"],
                    **({"classes": list(info.class_names)} if info.class_names else {}),
                    # Examples per class actually used (None where only a pass over the data
                    # could tell: tfds sources).
                    "train_class_counts": data.class_counts(
                        str(config["dataset"]), "train", data_dir=config["data_dir"],
                        max_examples=config["max_train_examples"], seed=int(config["seed"])),
                    "test_class_counts": data.class_counts(
                        str(config["dataset"]), "test", data_dir=config["data_dir"],
                        max_examples=config["max_test_examples"])},
        "backend": run["backend"],
        "precision": run["precision"],
        "replicas": run["strategy"].num_replicas_in_sync,
        "workers": run["task"][3],
        "synchronized_bn": run["synchronized_bn"],
        "networks": nets_summary,
        # What net1.keras, ... take: raw pixels, normalised inside (see dcm_keras.shipping).
        "export": {**shipping.describe(info), "precision": "float32"},
        "epochs": epochs,
        "steps_per_epoch": run["steps_per_epoch"],
        "resumed_at_epoch": initial_epoch,
        # Summed over epochs, so a run resumed after a kill reports its whole training time.
        "wall_time_s": sum(row.get("epoch_seconds", 0.0) for row in history),
        "process_wall_time_s": time.perf_counter() - process_start,
        "epoch_train_seconds_median": median_train,
        "train_images_per_sec": (run["steps_per_epoch"] * run["batch_size"] / median_train
                                 if median_train else None),
        "versions": common.versions(),
        # Epochs without an evaluation have NaN test columns in history.csv; JSON gets null.
        "history": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in row.items()} for row in history],
    }
    plots.plot_test_error(history, {f"net{k + 1}": (name, heads) for k, (name, heads)
                              in enumerate(zip(config["nets"], dcm.heads))},
                    os.path.join(model_dir, common.PLOT_FILE),
                    f"{run['method']}: {' + '.join(config['nets'])} on {info.name}")
    common.write_json(os.path.join(model_dir, common.RESULTS_FILE), results)
    shutil.rmtree(run["restore_dir"], ignore_errors=True)
    summary = ", ".join(f"{k} ({v['architecture']}) {v['test_error']['logits']:.2f}%"
                        for k, v in nets_summary.items())
    print(f"Test error: {summary}. Results in {model_dir}.", flush=True)
    return 0


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        sys.exit(train(run_flags()))
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # Ctrl-C: the checkpoints make this a pause, not a crash
        print("error: interrupted; re-running the same command resumes from the last finished "
              "epoch.", file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    app.run(main)

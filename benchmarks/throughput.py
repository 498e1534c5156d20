r"""Training and evaluation throughput of dcm_keras, measured side by side with the PyTorch peer.

    python -m benchmarks.throughput                                    # everything, no peer
    python -m benchmarks.throughput --peer --output_json=throughput.json
    python -m benchmarks.throughput --configs=dcm,ce_pair --precisions=best --xla=off --peer

What is measured (all through Keras's own `fit` / `predict`, i.e. the real `train_function` /
`predict_function` that `model.fit` builds, on one in-memory batch repeated by `tf.data`):

    plain    one network without heads, cross-entropy only            (DCM([net], "none"))
    heads    one network with its auxiliary heads (deep supervision)  (DCM([net], "none"))
    dml      two networks without heads, KD between final logits      (DCM(2 nets, "final"))
    ce_pair  two networks with heads, cross-entropy only              (DCM(2 nets, "none"))
    dcm      two networks with heads, dense cross-layer KD            (DCM(2 nets, "dense"))
    eval     an exported network (`DCM.export_network`) in `predict`
    data     the `dcm_keras.data` input pipeline (augmentation included), no model

Every figure is the median of `--windows` timed windows of `--steps_per_window` steps, after
`--warmup` steps (which include tracing and XLA compilation). Each configuration runs in its own
worker process, so its peak RSS (`ru_maxrss`, from `os.wait4`) is its own; the workers of one
(precision, XLA) group are alive together and take their windows in turn, so they see the same
machine load. Shared machines drift a lot, so compare figures *within* one run: ratios are formed
from windows taken next to each other (DCM vs CE-only: same round; ours vs peer: the peer's runs
just before and after our window).

Model FLOPs utilisation = training FLOPs per image (3 x the forward FLOPs of every convolution and
dense layer, counted from the layer shapes; BN, activations, the loss and the optimizer are not
counted) x images/s / the peak FLOP/s of a large dense matmul in the same dtype, measured in this
run (best of several). `best` / `auto` precision is mixed_float16 with a GPU, mixed_bfloat16 on a
CPU with AVX512-BF16 or AMX-BF16, else float32.

`--peer` runs the PyTorch reference step (`torch_dcm_ref.py DEPTH WIDTH BATCH STEPS`, see its
README) with `--peer_python`, interleaved with our DCM pair in float32 and in the best precision:
peer, ours fp32, ours best, peer, ... Each of our windows is divided by the mean of the peer runs
around it; the ratio reported is the median of those. For a like-for-like figure, our windows in
this phase have as many steps as the peer's timed run, and our workers then run nothing else.

Every timed row also reports images per CPU-second (user + system time of all the process's
threads): a measure of the work a step costs that load from other processes barely moves, unlike
images/s. The peer's is taken from its process's rusage less that of a run with 0 timed steps.

The peer phase also reports peak RSS above the framework's import on both sides: our worker's
peak less its peak right after importing TensorFlow and Keras, the peer's less that of a process
that only runs `--peer_import` (`import torch`), and whether ours exceeds the peer's per precision.

`--accuracy` adds a short real-data run (default: Fashion-MNIST, 12,800 examples x 2 epochs) of the
DCM pair in float32 and in the best precision from the same seed, and compares test accuracy.
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional

from absl import app, flags

from benchmarks.figures import median, mfu_peak
from benchmarks.machine import (cpu_info, refuse_existing_output, resolve_precision,
                                write_new_json)
from benchmarks.memory import above_import
from benchmarks.peer import PEER_MODES, PeerSettings, compare_with_peer
from benchmarks.report import markdown
from benchmarks.worker_client import REPO_ROOT, Worker
from benchmarks.workers import TRAIN_CONFIGS, worker_main

DEFAULT_PEER_SCRIPT = os.path.normpath(
    os.path.join(REPO_ROOT, "..", "shared", "peer", "torch_dcm_ref.py"))
CONFIGS = list(TRAIN_CONFIGS) + ["eval", "data"]

FLAGS = flags.FLAGS
flags.DEFINE_string("net", "wrn_16_2", "Network name (see dcm_keras.networks.list_networks()).")
flags.DEFINE_integer("num_classes", 100, "Classes of every head.", lower_bound=2)
flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
flags.DEFINE_integer("image_size", 32, "Square input size (3 channels).", lower_bound=8)
flags.DEFINE_list("precisions", ["float32", "best"],
                  "Dtype policies: float32, mixed_bfloat16, mixed_float16, best (= auto).")
flags.DEFINE_enum("xla", "both", ["both", "on", "off"], "jit_compile of the train/predict step.")
flags.DEFINE_integer("windows", 5, "Timed windows per configuration (the median is reported).",
                     lower_bound=1)
flags.DEFINE_integer("steps_per_window", 4, "Steps per timed window.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing, XLA compilation).",
                     lower_bound=1)
flags.DEFINE_list("configs", CONFIGS, f"Subset of {', '.join(CONFIGS)}.")
flags.DEFINE_bool("interleave", True,
                  "Keep the workers of a (precision, XLA) group alive together and take their "
                  "windows in turn (fairer under drifting load); else one after the other.")
flags.DEFINE_enum("bn", "fused", ["fused", "keras", "both"],
                  "BatchNormalization of the networks: fused (the library's, "
                  "dcm_keras.networks.common.BatchNormalization), keras (Keras's own composite "
                  "layer, the state before the fused one) or both, every configuration with each "
                  "in the same rounds, for a before/after comparison.")
flags.DEFINE_integer("inter_op_threads", 0, "TensorFlow inter-op threads (0: TF's default).",
                     lower_bound=0)
flags.DEFINE_integer("intra_op_threads", 0, "TensorFlow intra-op threads (0: TF's default).",
                     lower_bound=0)
flags.DEFINE_integer("loss_cost_repeats", 20,
                     "Calls of the isolated loss+metrics graph timed after each window.",
                     lower_bound=1)
flags.DEFINE_integer("data_examples", 50_000, "Examples of the synthetic CIFAR-shaped dataset.",
                     lower_bound=1)
flags.DEFINE_integer("data_batches", 100, "Batches timed per input-pipeline measurement.",
                     lower_bound=1)
flags.DEFINE_string("data_real", "fashion_mnist",
                    "Also time `dcm_keras.data.load` on this real dataset ('' to skip).")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square matrices of the peak benchmark.",
                     lower_bound=16)
flags.DEFINE_integer("matmul_repeats", 10, "Matmuls per dtype (the best is kept).", lower_bound=1)
flags.DEFINE_bool("peer", False, "Also run the PyTorch peer, interleaved with our DCM pair.")
flags.DEFINE_string("peer_python", "/tmp/peer-venv/bin/python", "Python of the peer's venv.")
flags.DEFINE_string("peer_script", DEFAULT_PEER_SCRIPT, "The peer's torch_dcm_ref.py.")
flags.DEFINE_list("peer_modes", list(PEER_MODES),
                  "Modes of the peer (its 5th argument): fp32 (NCHW), fp32+cl (channels_last), "
                  "bf16 (torch.autocast), bf16+cl. Ours is compared with the best mode of each "
                  "precision.")
flags.DEFINE_string("peer_import", "import torch",
                    "Python statement run alone with --peer_python: its peak RSS is the peer's "
                    "framework import, subtracted from the peer's peak RSS (memory above import).")
flags.DEFINE_integer("peer_steps", 6, "Timed steps of each peer run (and of our windows then).",
                     lower_bound=1)
flags.DEFINE_integer("peer_rounds", 4, "Rounds of (peer, ours float32, ours best), then a "
                     "final peer run.", lower_bound=1)
flags.DEFINE_enum("peer_xla", "auto", ["auto", "on", "off"],
                  "XLA setting of our DCM pair in the peer phase; auto: per precision, the one "
                  "with the higher DCM throughput in this run's table (off without a DCM row).")
flags.DEFINE_bool("accuracy", False,
                  "Also train the DCM pair briefly on real data in float32 and in each other "
                  "precision (same seed) and compare test accuracy.")
flags.DEFINE_string("accuracy_dataset", "fashion_mnist", "Dataset of the accuracy check.")
flags.DEFINE_integer("accuracy_examples", 16_000, "Training examples of the accuracy check.",
                     lower_bound=1)
flags.DEFINE_integer("accuracy_epochs", 2, "Epochs of the accuracy check.", lower_bound=1)
flags.DEFINE_float("accuracy_lr", 0.05,
                   "Initial SGD learning rate of the accuracy check (linear decay to 0).")
flags.DEFINE_string("output_json", None, "Write every result (and the markdown) here.")
flags.DEFINE_string("worker", None, "Internal: run one measurement worker (JSON spec).")
# the flags a report records (its markdown reads them from there)
REPORTED_FLAGS = ("net", "num_classes", "batch_size", "image_size", "precisions", "xla", "windows",
                  "steps_per_window", "warmup", "configs", "interleave", "bn", "inter_op_threads",
                  "intra_op_threads", "peer", "peer_modes", "peer_steps", "peer_rounds",
                  "peer_import", "peer_xla", "accuracy", "accuracy_dataset", "accuracy_examples",
                  "accuracy_epochs", "accuracy_lr")


class Benchmark:
    """One run of the benchmark: its phases (each starts and drives worker processes) and what
    they measured, gathered into the report by `run`."""

    def __init__(self):
        self.log_dir = tempfile.mkdtemp(prefix="dcm_throughput_")
        self.base = {"net": FLAGS.net, "num_classes": FLAGS.num_classes,
                     "batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size,
                     "warmup": FLAGS.warmup, "steps_per_window": FLAGS.steps_per_window,
                     "inter_op_threads": FLAGS.inter_op_threads,
                     "intra_op_threads": FLAGS.intra_op_threads,
                     "loss_cost_repeats": FLAGS.loss_cost_repeats}
        self.machine = cpu_info()
        self.peaks: Dict[str, float] = {}
        self.rows: List[dict] = []
        self.distillation: List[dict] = []
        self.data: Optional[dict] = None
        self.peer: Optional[dict] = None
        self.accuracy: Optional[List[dict]] = None
        self.notes: List[str] = []

    # --- helpers -----------------------------------------------------------------------------
    def _spec(self, **kwargs) -> dict:
        return {**self.base, **kwargs}

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def measure_peak(self) -> None:
        worker = Worker(self._spec(kind="peak", matmul_size=FLAGS.matmul_size,
                                   matmul_repeats=FLAGS.matmul_repeats, check_net=not self.peaks),
                        self.log_dir, "peak")
        try:
            message = worker.read()
        finally:
            worker.proc.stdin.close()
            worker.wait()
        if message["event"] == "usage":
            raise app.UsageError(message["error"])
        self.machine.update(message["info"])
        for dtype, value in message["peak_gflops"].items():
            if value is not None:
                self.peaks[dtype] = max(self.peaks.get(dtype, 0.0), value)
        self.log(f"matmul peak GFLOP/s: { {k: round(v) for k, v in self.peaks.items()} }")

    def start_worker(self, config: str, precision: str, xla: bool, bn: str = "fused",
                     **extra) -> Worker:
        """One worker process for `config`, returned once it is built and warmed up."""
        (worker,) = self.start_workers([dict(config=config, precision=precision, xla=xla, bn=bn,
                                             **extra)])
        return worker

    def start_workers(self, runs: List[dict]) -> List[Worker]:
        """Workers for `runs` (`start_worker`'s arguments), up to one per CPU starting side by side.

        Start-up (imports, building, tracing, warm-up) is not timed, and mostly runs on one
        thread, so starting workers together saves time without touching what is measured: every
        timed window comes after all of them are ready.
        """
        workers: List[Worker] = []
        # On a GPU, cuDNN picks its kernels by timing them during warm-up: one at a time there.
        gpu = self.machine.get("gpus") or glob.glob("/dev/nvidia[0-9]*")
        at_once = 1 if gpu else self.machine.get("usable_cpus") or os.cpu_count() or 1
        try:
            for first in range(0, len(runs), at_once):
                batch = []
                for run in runs[first:first + at_once]:
                    batch.append(self._spawn(**run))
                    workers.append(batch[-1])
                for worker in batch:
                    worker.ready = worker.read()
        except BaseException:  # Ctrl-C too: no worker outlives the benchmark
            for worker in workers:
                worker.kill()
            raise
        return workers

    def _spawn(self, config: str, precision: str, xla: bool, bn: str = "fused",
               **extra) -> Worker:
        label = f"{config}-{precision}-{'xla' if xla else 'noxla'}-{bn}bn" + "".join(
            f"-{key}={value}" for key, value in sorted(extra.items()) if key != "loss_cost")
        self.log(f"starting {label}")
        worker = Worker(self._spec(kind="model", config=config, precision=precision, xla=xla,
                                   bn=bn, **extra), self.log_dir, label)
        worker.config, worker.precision, worker.xla, worker.bn = config, precision, xla, bn
        worker.windows = []
        return worker

    def row(self, worker: Worker) -> dict:
        """The table row of a worker whose windows are taken and which is closed."""
        rates = [w["images_per_s"] for w in worker.windows]
        middle = median(rates)
        flops = worker.ready["flops_per_image"]
        peak = mfu_peak(self.peaks, worker.precision)
        row = {
            "config": worker.config,
            "what": (TRAIN_CONFIGS[worker.config][3] if worker.config in TRAIN_CONFIGS
                     else "exported network, predict")
            + (" [Keras BN]" if worker.bn == "keras" else ""),
            "bn": worker.bn,
            "precision": worker.precision, "xla": worker.xla,
            "images_per_s": middle, "images_per_s_min": min(rates), "images_per_s_max": max(rates),
            "images_per_s_mean": sum(w["steps"] for w in worker.windows) * FLAGS.batch_size
            / sum(w["seconds"] for w in worker.windows),
            "images_per_cpu_s": sum(w["steps"] for w in worker.windows) * FLAGS.batch_size
            / sum(w["cpu_seconds"] for w in worker.windows),
            "windows": rates,
            "step_ms": 1000 * FLAGS.batch_size / middle,
            "gflop_per_image": flops / 1e9,
            "mfu": flops * middle / (peak * 1e9) if peak else None,
            "params": worker.ready["params"], "startup_s": worker.ready["startup_s"],
            "rss_mb": worker.rss_mb, "gpu_peak_mb": worker.done.get("gpu_peak_mb"),
            "import_rss_mb": worker.ready.get("import_rss_mb"),
            "rss_above_import_mb": above_import(worker.rss_mb, worker.ready.get("import_rss_mb")),
        }
        loss = [w.get("loss_graph_s") for w in worker.windows]
        if any(v is not None for v in loss):
            row["loss_graph_ms"] = 1000 * median(loss)
            row["loss_graph_share"] = median(
                [w["loss_graph_s"] / w["seconds"] * w["steps"] for w in worker.windows])
        return row

    # --- phases ------------------------------------------------------------------------------
    def run_group(self, configs: List[str], precision: str, xla: bool) -> List[dict]:
        workers: List[Worker] = []
        variants = ["fused", "keras"] if FLAGS.bn == "both" else [FLAGS.bn]
        runs = [(config, bn) for config in configs for bn in variants]
        try:
            if FLAGS.interleave:
                workers.extend(self.start_workers([
                    dict(config=config, precision=precision, xla=xla, bn=bn)
                    for config, bn in runs]))
                for window in range(FLAGS.windows):
                    for worker in workers:
                        worker.windows.append(worker.request(cmd="window"))
                    self.log(f"{precision} xla={xla} window {window + 1}/{FLAGS.windows}: " +
                             ", ".join(f"{w.config}/{w.bn} {w.windows[-1]['images_per_s']:.1f}"
                                       for w in workers))
                for worker in workers:
                    worker.done = worker.close()
            else:
                for config, bn in runs:
                    worker = self.start_worker(config, precision, xla, bn)
                    workers.append(worker)
                    for _ in range(FLAGS.windows):
                        worker.windows.append(worker.request(cmd="window"))
                    worker.done = worker.close()
        finally:
            for worker in workers:
                worker.kill()
        rows = [self.row(w) for w in workers]
        self.rows.extend(rows)
        by_config = {w.config: (w, r) for w, r in zip(workers, rows) if w.bn == variants[0]}
        if "dcm" in by_config and "ce_pair" in by_config:
            (dcm, dcm_row), (ce, ce_row) = by_config["dcm"], by_config["ce_pair"]
            paired = [d["seconds"] / d["steps"] / (c["seconds"] / c["steps"]) - 1
                      for d, c in zip(dcm.windows, ce.windows)]
            self.distillation.append({
                "precision": precision, "xla": xla,
                "dcm_vs_ce_step_time": median(paired), "paired_windows": paired,
                "paired": FLAGS.interleave,
                "dcm_loss_graph_ms": dcm_row.get("loss_graph_ms"),
                "ce_loss_graph_ms": ce_row.get("loss_graph_ms"),
                "dcm_loss_graph_share": dcm_row.get("loss_graph_share"),
                "kd_share": (dcm_row["loss_graph_ms"] - ce_row["loss_graph_ms"])
                / dcm_row["step_ms"] if dcm_row.get("loss_graph_ms") is not None else None,
            })
        return rows

    def run_data(self) -> None:
        self.log("timing the input pipeline")
        worker = Worker(self._spec(kind="data", data_examples=FLAGS.data_examples,
                                   data_batches=FLAGS.data_batches, data_real=FLAGS.data_real),
                        self.log_dir, "data")
        try:
            message = worker.read()
        finally:
            worker.proc.stdin.close()
            worker.wait()
        if "error" in message:
            self.data = {"error": message["error"]}
        else:
            self.data = {**message["results"], "rss_mb": worker.rss_mb}

    def run_accuracy(self, precisions: List[str]) -> None:
        """Every precision from seed 0, plus float32 from seed 1 to show how much accuracy moves
        with the seed alone. The runs train at once (accuracy does not depend on speed)."""
        runs = [(precision, 0) for precision in precisions] + [("float32", 1)]
        self.log(f"accuracy check on {FLAGS.accuracy_dataset}: {runs}")
        workers = [Worker(self._spec(kind="accuracy", precision=precision, seed=seed,
                                     dataset=FLAGS.accuracy_dataset,
                                     examples=FLAGS.accuracy_examples,
                                     epochs=FLAGS.accuracy_epochs, lr=FLAGS.accuracy_lr),
                          self.log_dir, f"accuracy-{precision}-seed{seed}")
                   for precision, seed in runs]
        self.accuracy = []
        try:
            for (precision, _), worker in zip(runs, workers):
                message = worker.read()
                worker.proc.stdin.close()
                worker.wait()
                self.accuracy.append({"precision": precision, **{
                    k: v for k, v in message.items() if k != "event"}, "rss_mb": worker.rss_mb})
        finally:
            for worker in workers:
                worker.kill()

    def run_peer(self, precisions: List[str], xla_choice: Dict[str, bool]) -> None:
        """The peer phase (`benchmarks.peer.compare_with_peer`) with this run's flags."""
        settings = PeerSettings(
            python=FLAGS.peer_python, script=FLAGS.peer_script, modes=FLAGS.peer_modes,
            import_statement=FLAGS.peer_import, steps=FLAGS.peer_steps, rounds=FLAGS.peer_rounds,
            net=FLAGS.net, num_classes=FLAGS.num_classes, image_size=FLAGS.image_size,
            batch_size=FLAGS.batch_size, bn=FLAGS.bn)
        self.peer = compare_with_peer(self, settings, precisions, xla_choice)

    def run(self) -> dict:
        self.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        configs = [c for c in CONFIGS if c in FLAGS.configs]
        unknown = set(FLAGS.configs) - set(CONFIGS)
        if unknown:
            raise app.UsageError(f"Unknown configs {sorted(unknown)}; valid: {', '.join(CONFIGS)}.")
        self.measure_peak()
        precisions = []
        for name in FLAGS.precisions:
            if name not in ("float32", "mixed_bfloat16", "mixed_float16", "best", "auto"):
                raise app.UsageError(f"Unknown precision {name!r}.")
            resolved = resolve_precision(name, self.machine)
            if resolved not in precisions:
                precisions.append(resolved)
        xla_settings = {"both": [False, True], "on": [True], "off": [False]}[FLAGS.xla]
        model_configs = [c for c in configs if c != "data"]
        if model_configs:
            for precision in precisions:
                for xla in xla_settings:
                    self.run_group(model_configs, precision, xla)
        if "data" in configs:
            self.run_data()
        if FLAGS.peer:
            peer_precisions = list(dict.fromkeys(["float32"] + precisions))
            xla_choice = {}
            for precision in peer_precisions:
                if FLAGS.peer_xla != "auto":
                    xla_choice[precision] = FLAGS.peer_xla == "on"
                    continue
                measured = {r["xla"]: r["images_per_s"] for r in self.rows
                            if r["config"] == "dcm" and r["precision"] == precision}
                xla_choice[precision] = max(measured, key=measured.get) if measured else False
            self.run_peer(peer_precisions, xla_choice)
        if FLAGS.accuracy:
            self.run_accuracy(list(dict.fromkeys(["float32"] + precisions)))
        self.measure_peak()  # again at the end: the best of both is the peak
        for r in self.rows + (self.peer["ours"] if self.peer else []):
            peak = mfu_peak(self.peaks, r["precision"])
            r["mfu"] = r["gflop_per_image"] * r["images_per_s"] / peak if peak else None
        report = {"date": self.date, "machine": self.machine, "peak_gflops": self.peaks,
                  "flags": {name: FLAGS[name].value for name in REPORTED_FLAGS},
                  "command": " ".join(sys.argv), "results": self.rows,
                  "distillation": self.distillation, "data": self.data, "peer": self.peer,
                  "accuracy": self.accuracy, "notes": self.notes}
        report["markdown"] = markdown(report)
        return report


def main(argv) -> None:
    del argv
    if FLAGS.worker:
        worker_main(json.loads(FLAGS.worker))
        return
    refuse_existing_output(FLAGS.output_json)
    report = Benchmark().run()
    print(report["markdown"])
    if FLAGS.output_json:
        write_new_json(FLAGS.output_json, report)


if __name__ == "__main__":
    app.run(main)

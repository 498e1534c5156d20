r"""Before/after pairs for the speed levers of the DCM step, measured in one interleaved run.

    python -m benchmarks.levers --precisions=float32 --levers=default,inter_op_1,xla
    python -m benchmarks.levers --precisions=float32,mixed_bfloat16 --windows=6

Each lever is a variant of the DCM pair of `benchmarks.throughput` (same network, batch, data and
optimizer) in its own worker process; all workers of one precision are alive together and take
their windows in turn, so a lever's ratio to `default` is the median of window-by-window ratios
taken next to each other. Peak RSS is each worker's own. The throughput flags (`--net`,
`--batch_size`, `--windows`, `--steps_per_window`, `--warmup`, ...) apply.
"""

from __future__ import annotations

import datetime
import tempfile
from typing import Dict, List

from absl import app, flags

from benchmarks import throughput as tp
from benchmarks.figures import fmt, median
from benchmarks.machine import (cpu_info, refuse_existing_output, resolve_precision,
                                write_new_json)

# name -> (what it changes, worker spec overrides)
LEVERS: Dict[str, tuple] = {
    "default": ("the scripts' settings: oneDNN on (experiments/__init__.py), inter-op and intra-op "
                "pools sized by TF", {}),
    "inter_op_1": ("one inter-op thread: ops run one at a time, each on every core",
                   {"inter_op_threads": 1}),
    "intra_op_1": ("two inter-op threads, one intra-op thread: two ops at a time, one core each",
                   {"inter_op_threads": 2, "intra_op_threads": 1}),
    "xla": ("the step compiled with XLA (jit_compile=True)", {"xla": True}),
    "onednn_off": ("TF_ENABLE_ONEDNN_OPTS=0: Eigen kernels instead of oneDNN (TensorFlow's own "
                   "default on x86 CPUs without AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX)",
                   {"env": {"TF_ENABLE_ONEDNN_OPTS": "0"}}),
    "keras_bn": ("Keras's own BatchNormalization instead of the library's fused one",
                 {"bn": "keras"}),
    "malloc_arena_1": ("MALLOC_ARENA_MAX=1: one glibc malloc arena (memory)",
                       {"env": {"MALLOC_ARENA_MAX": "1"}}),
    "malloc_mmap_1mb": ("MALLOC_MMAP_THRESHOLD_=1048576: every block over 1 MiB mmapped and "
                        "unmapped when freed (memory: RSS then holds no freed heap)",
                        {"env": {"MALLOC_MMAP_THRESHOLD_": "1048576"}}),
}

FLAGS = flags.FLAGS
flags.DEFINE_list("levers", ["default", "inter_op_1", "intra_op_1", "xla"],
                  f"Variants to compare with `default`: {', '.join(LEVERS)}.")


def measure(bench: "tp.Benchmark", precision: str, levers: List[str]) -> List[dict]:
    """Interleaved windows of every lever in `precision`; ratios are paired with `default`."""
    workers = []
    try:
        runs = []
        for name in levers:
            overrides = dict(LEVERS[name][1])
            runs.append(dict(config="dcm", precision=precision, xla=overrides.pop("xla", False),
                             bn=overrides.pop("bn", "fused"), loss_cost=False, **overrides))
        workers = bench.start_workers(runs)
        for name, worker in zip(levers, workers):
            worker.lever = name
        for window in range(FLAGS.windows):
            for worker in workers:
                worker.windows.append(worker.request(cmd="window"))
            bench.log(f"{precision} window {window + 1}/{FLAGS.windows}: " + ", ".join(
                f"{w.lever} {w.windows[-1]['images_per_s']:.1f}" for w in workers))
        for worker in workers:
            worker.done = worker.close()
    finally:
        for worker in workers:
            worker.kill()
    base = next(w for w in workers if w.lever == "default")
    rows = []
    for worker in workers:
        row = bench.row(worker)
        row["lever"] = worker.lever
        row["ratio_vs_default"] = median([w["images_per_s"] / b["images_per_s"]
                                          for w, b in zip(worker.windows, base.windows)])
        rows.append(row)
    return rows


def markdown(machine: dict, date: str, rows: List[dict], setup: str) -> str:
    """The levers' table; `setup` says what was measured (network, batch, windows)."""
    lines = [f"Levers of the DCM step ({setup}); {machine.get('cpu_kind')}, "
             f"{machine.get('usable_cpus')} CPUs; {date}.", "",
             "| precision | lever | images/s (median) | min-max | vs default (paired median) "
             "| images/CPU-s | peak RSS MiB |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['lever']} | {r['images_per_s']:.1f} "
                     f"| {r['images_per_s_min']:.0f}-{r['images_per_s_max']:.0f} "
                     f"| {r['ratio_vs_default']:.2f} | {r['images_per_cpu_s']:.1f} "
                     f"| {fmt(r['rss_mb'], '.0f')} |")
    lines += [""] + [f"- `{name}`: {LEVERS[name][0]}" for name in dict.fromkeys(
        r["lever"] for r in rows)]
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    unknown = [name for name in FLAGS.levers if name not in LEVERS]
    if unknown:
        raise app.UsageError(f"Unknown --levers {unknown}; valid: {', '.join(LEVERS)}.")
    levers = ["default"] + [name for name in dict.fromkeys(FLAGS.levers) if name != "default"]
    refuse_existing_output(FLAGS.output_json)
    machine = cpu_info()
    bench = tp.Benchmark()
    bench.log_dir = tempfile.mkdtemp(prefix="dcm_levers_")
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for precision in dict.fromkeys(resolve_precision(p, machine) for p in FLAGS.precisions):
        rows += measure(bench, precision, levers)
    text = markdown(machine, date, rows, f"{FLAGS.net} pair, batch {FLAGS.batch_size}, "
                    f"{FLAGS.windows} interleaved windows x {FLAGS.steps_per_window} steps")
    print(text)
    if FLAGS.output_json:
        write_new_json(FLAGS.output_json,
                       {"machine": machine, "date": date, "rows": rows, "markdown": text})


if __name__ == "__main__":
    app.run(main)

r"""Runs methods x seeds on the same budget and tabulates test error mean +/- std.

    python -m experiments.compare --preset=demo --work_dir=runs/compare
    KERAS_BACKEND=jax python -m experiments.compare --preset=fmnist_long --jobs=12   # one GPU
    python -m experiments.compare --preset=paper_cifar100 --work_dir=runs/compare   # GPU machines
    python -m experiments.compare --config=my_config.json --work_dir=runs/compare

Every run is a `python -m experiments.train` subprocess with its own run directory,
`<work_dir>/<preset>/<nets>/<method>_seed<k>` (its output goes to `train.log` there), so an
interrupted comparison picks up where it stopped: finished runs are reused, killed ones resume.
A finished run is never overwritten; one that was made with other settings stops the comparison.
The table (`table.md`, `table.json`) and the plot (`comparison.png`) land in `<work_dir>/<preset>/`.
They tabulate every finished run of the config's rows and methods in the work dir made with its
settings, whatever its seed: running `--seeds=0,1` and later `--seeds=2` gives one table over
seeds 0-2 (`--no_train` rebuilds it without training). A failed run's last log lines are printed;
a SIGTERM stops the runs in progress as Ctrl-C does. A config may list at most 1,000 runs.

`--jobs=N` trains up to N runs at the same time (many small runs on one GPU or many cores); the
table does not depend on N, but the epoch times are then contended. `--no_train` trains nothing
and tabulates the runs already finished in `--work_dir` (e.g. run folders copied back from another
machine), listing the others as missing.

A config file is a JSON object like the presets, which are the files in experiments/configs/
(`--preset=demo` reads `demo.json`): `{"name": ..., "rows": [["wrn_16_2", "wrn_16_2"]], "methods":
[...], "seeds": [...], "train_flags": {"dataset": ..., ...}}`, optionally with a `"note"` printed
under the table and a `"description"` of its own (not recorded with the results).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app, flags

from experiments import common
from experiments import run_dir as run_folder
from experiments.common import UserError
from experiments.config import OPERATIONAL_FLAGS, RUN_FLAGS, check_flag_value

# The presets: comparison config files, in the same format as --config (copy one to start your
# own). Each one's "description" says what it is for; it is not recorded with the results.
PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def preset_names() -> List[str]:
    """The names `--preset` accepts: the config files in `PRESETS_DIR`, without `.json`."""
    return sorted(name[:-len(".json")] for name in os.listdir(PRESETS_DIR)
                  if name.endswith(".json"))


def preset_path(name: str) -> str:
    """The config file of preset `name`; UserError naming the valid ones if there is none."""
    names = preset_names()
    if name not in names:
        raise UserError(f"Unknown preset {name!r}; valid: {', '.join(names)}.")
    return os.path.join(PRESETS_DIR, f"{name}.json")


# Every preset as a dict, for code that read them here before they became files.
PRESETS: Dict[str, dict] = {name: common.read_json(preset_path(name)) for name in preset_names()}

flags.DEFINE_enum("preset", "demo", preset_names(),
                  "Which comparison to run: a config file in experiments/configs/.")
flags.DEFINE_string("config", None, "JSON file with a custom comparison (replaces --preset).")
flags.DEFINE_string("work_dir", "runs/compare", "Where the runs, table and plot go.")
flags.DEFINE_list("methods", None, f"Override the methods ({', '.join(common.METHODS)}).")
flags.DEFINE_list("seeds", None, "Override the seeds, e.g. 0,1,2. The table also takes in the "
                  "finished runs of other seeds an earlier invocation left in --work_dir.")
flags.DEFINE_integer("epochs", None, "Override the epochs of every run.", lower_bound=1)
flags.DEFINE_integer("max_train_examples", None, "Override the training subset size.",
                     lower_bound=1)
flags.DEFINE_integer("jobs", 1, "How many training runs to run at the same time (each is its own "
                     "process). The table does not depend on it, but the epoch times (and so the "
                     "time multiple) are then measured on a shared machine.", lower_bound=1)
flags.DEFINE_bool("no_train", False, "Train nothing: tabulate only the runs already finished in "
                  "--work_dir and list the others as missing.")
FLAGS = flags.FLAGS


# The measured study every comparison's table is read against (CIFAR-10 first, then Fashion-MNIST).
ACCURACY_GUIDE = "docs/accuracy.md"
# The keys a comparison config may have.
CONFIG_KEYS = ("name", "description", "note", "rows", "methods", "seeds", "train_flags")
# What compare.py sets for each run; a config may set only the other run flags of train.py
# (an allow-list: `flagfile`, say, could otherwise point a run at another --model_dir).
PER_RUN = ("method", "nets", "seed", "model_dir", "overwrite")
TRAIN_FLAGS = tuple(f for f in RUN_FLAGS + OPERATIONAL_FLAGS if f not in PER_RUN)


# Configs beyond this many runs are refused before anything starts: a typo such as
# `"seeds": list(range(100000))` would otherwise queue days of training (docs/run_directory.md).
MAX_RUNS = 1000


def _check_list(config: dict, key: str, what: str, test) -> None:
    """Refuses `config[key]` unless it is a non-empty list whose items pass `test`."""
    value = config.get(key)
    if not isinstance(value, list) or not value:
        raise UserError(f"The comparison config needs a non-empty {key!r} list, got "
                        f"{json.dumps(value)}.")
    for item in value:
        if not test(item):
            raise UserError(f"The comparison config's {key!r} holds {json.dumps(item)}; each "
                            f"entry must be {what}.")


def load_config(preset: str, config_path: Optional[str], methods: Optional[Sequence[str]],
                seeds: Optional[Sequence[str]], epochs: Optional[int],
                max_train_examples: Optional[int]) -> dict:
    """The comparison to run: a preset or a config file, with the command line's overrides.

    Every key is type-checked before anything runs (UserError naming the key, the value and
    what it must be), and more than MAX_RUNS runs are refused.
    """
    common.check_path_flag(config_path, "--config")
    path = config_path or preset_path(preset)
    config = common.load_json_object(path, "The comparison config")
    unknown_keys = sorted(set(config) - set(CONFIG_KEYS))
    if unknown_keys:  # a typo ("train_flag") would otherwise run the defaults silently
        raise UserError(f"The comparison config {path} has unknown key(s) "
                        f"{', '.join(map(repr, unknown_keys))}; valid: {', '.join(CONFIG_KEYS)}.")
    config.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    for key in ("name", "description", "note"):
        if key in config and not isinstance(config[key], str):
            raise UserError(f"The comparison config's {key!r} is {json.dumps(config[key])}; it "
                            "must be a string.")
    config.pop("description", None)
    config.setdefault("train_flags", {})
    if not isinstance(config["train_flags"], dict):
        raise UserError(f"The comparison config's 'train_flags' is "
                        f"{json.dumps(config['train_flags'])}; it must be a JSON object of "
                        "experiments.train flags, e.g. {\"epochs\": 10}.")
    if methods:
        config["methods"] = list(methods)
    if seeds:
        try:
            config["seeds"] = [int(s) for s in seeds]
        except ValueError:
            raise UserError(f"--seeds must be integers, got {','.join(seeds)}.")
    if epochs:
        config["train_flags"]["epochs"] = epochs
    if max_train_examples:
        config["train_flags"]["max_train_examples"] = max_train_examples
    _check_list(config, "rows", "a non-empty list of network names",
                lambda nets: isinstance(nets, list) and nets)
    _check_list(config, "methods", f"one of {', '.join(common.METHODS)} (a string)",
                lambda m: isinstance(m, str) and m in common.METHODS)
    _check_list(config, "seeds", "an integer from 0 to 2**32 - 1",
                lambda s: isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32)
    runs = len(config["rows"]) * len(config["methods"]) * len(config["seeds"])
    if runs > MAX_RUNS:
        raise UserError(f"The comparison has {len(config['rows'])} rows x "
                        f"{len(config['methods'])} methods x {len(config['seeds'])} seeds = "
                        f"{runs} runs; at most {MAX_RUNS} are accepted (split it into several "
                        "configs).")
    if "baseline" not in config["methods"]:
        print("note: no baseline among the methods; the time multiple column is left empty.")
    for key, value in config["train_flags"].items():
        if key in PER_RUN:
            raise UserError(f"train_flags may not set {key!r}: the comparison sets it per run.")
        if key not in TRAIN_FLAGS:
            raise UserError(f"train_flags may not set {key!r}: it is not a run flag of "
                            f"experiments.train. Valid: {', '.join(TRAIN_FLAGS)}.")
        check_flag_value(key, value, "The comparison config's train_flags")
    # They become folder names under --work_dir: nothing may lead out of it.
    common.check_name(config["name"], "The comparison name")
    for nets in config["rows"]:
        for net in nets:
            common.check_name(net, "Network name")
    # Two runs with the same row, method and seed would share one run folder (counted in one
    # pass: a quadratic check took minutes on large configs).
    counts = collections.Counter(("/".join(nets), method, seed) for nets in config["rows"]
                                 for method in config["methods"] for seed in config["seeds"])
    twice = sorted(key for key, n in counts.items() if n > 1)
    if twice:
        raise UserError("The comparison lists the same run more than once ("
                        + "; ".join(f"{n} {m} seed {s}" for n, m, s in twice[:10])
                        + ("; ..." if len(twice) > 10 else "")
                        + "): rows, methods and seeds must not repeat.")
    return config


def _flag_text(value) -> str:
    """A value as it is written on a command line (absl syntax)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _same_value(recorded, wanted) -> bool:
    """Whether a flag recorded in results.json equals the value a run would be given."""
    a, b = _flag_text(recorded), _flag_text(wanted)
    if a == b:
        return True
    try:
        return [float(x) for x in a.split(",")] == [float(x) for x in b.split(",")]
    except ValueError:
        return False


def _setting_differences(done: dict, train_flags: Dict[str, object]) -> List[str]:
    """The run flags whose value in a finished run's results.json differs from `train_flags`.

    Operational flags (--backup_every) are not recorded and do not change results.
    """
    return [k for k, v in train_flags.items()
            if k in RUN_FLAGS and not _same_value(done["flags"].get(k), v)]


def earlier_runs(config: dict, work_dir: str, listed: set,
                 references: Optional[Dict[tuple, dict]] = None) -> Dict[tuple, dict]:
    """Finished runs of the config's rows and methods in `work_dir` under seeds it does not list
    (`listed` holds the keys it does), made with its settings: what an invocation with other
    `--seeds` left, tabulated with this one's. Runs with other settings are left out: those that
    differ in a flag the config sets and, where this invocation has a finished run of the same
    networks and method (`references`, its results by key), those whose recorded flags differ
    from that run's in anything but the seed (a flag the config leaves at its default)."""
    reference_flags = {}
    for (nets, method, _), done in (references or {}).items():
        if isinstance(done.get("flags"), dict):
            reference_flags.setdefault((nets, method), done["flags"])
    found = {}
    for nets in config["rows"]:
        folder = os.path.join(work_dir, config["name"], "-".join(nets))
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in entries:
            match = re.fullmatch(r"(?P<method>.+)_seed(?P<seed>[1-9][0-9]*|0)", entry)
            path = os.path.join(folder, entry)
            if match is None or match["method"] not in config["methods"] or os.path.islink(path):
                continue
            key = (tuple(nets), match["method"], int(match["seed"]))
            done = None if key in listed else run_folder.completed_results(path)
            if done is None or not isinstance(done.get("flags"), dict):
                continue
            reference = reference_flags.get(key[:2], {})
            wanted = {**{k: v for k, v in reference.items() if k != "seed"},
                      "method": key[1], "nets": list(nets), **config["train_flags"]}
            if not _setting_differences(done, wanted):
                found[key] = done
    return found


def run_dir(work_dir: str, name: str, nets: Sequence[str], method: str, seed: int) -> str:
    """Directory of one run of the comparison."""
    return os.path.join(work_dir, name, "-".join(nets), f"{method}_seed{seed}")


# The training subprocesses alive now, so that an interrupted comparison can stop those started
# by its worker threads (a Ctrl-C reaches only the main thread), and a flag that it is stopping.
_live: set = set()
_live_lock = threading.Lock()
_stopping = threading.Event()


def cpu_share(concurrent: int) -> Optional[int]:
    """Threads for each of `concurrent` runs' TensorFlow op pool: this process's cores split
    evenly (at least one), or None for one run alone (TensorFlow's default, every core)."""
    if concurrent <= 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // concurrent)


def run_one(directory: str, train_flags: Dict[str, object], concurrent: int = 1
            ) -> Optional[dict]:
    """Runs (or resumes) one training subprocess; returns its results, or None if it failed.

    `concurrent`: how many runs may be training at the same time (`--jobs`).
    """
    argv = [sys.executable, "-m", "experiments.train", f"--model_dir={directory}"]
    argv += [f"--{k}={_flag_text(v)}" for k, v in train_flags.items() if v is not None]
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if concurrent > 1:
        # TensorFlow otherwise reserves nearly all GPU memory for the first run, and the runs
        # started beside it fail to allocate theirs.
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        # Each run's op pool would otherwise take every core: two runs on two cores then ran
        # 20-25 % slower than with one thread each (128 Fashion-MNIST images x 60 epochs, 2-core
        # AMD EPYC, 2026-12-03). A value the user set is kept.
        env.setdefault("TF_NUM_INTRAOP_THREADS", str(cpu_share(concurrent)))
    # A link planted at train.log is refused, not followed (run_folder.open_log).
    with run_folder.open_log(directory, "train.log") as log:
        log.write(f"$ {shlex.join(argv)}\n")  # pastable: the nets hold ':' and paths spaces
        log.flush()
        with _live_lock:
            if _stopping.is_set():  # the comparison is being interrupted: start nothing new
                return None
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            _live.add(proc)
        try:
            code = proc.wait()
        except BaseException:  # Ctrl-C in this thread: stop the run; it resumes next time
            proc.kill()
            proc.wait()
            raise
        finally:
            with _live_lock:
                _live.discard(proc)
    if code != 0:
        return None
    return run_folder.completed_results(directory)


# How many of a failed run's last train.log lines compare.py prints under its FAILED line.
LOG_TAIL_LINES = 8


def _log_tail(directory: str, count: int = LOG_TAIL_LINES) -> Tuple[str, List[str]]:
    """`(the error line, the last `count` lines)` of the latest attempt in a run's train.log.

    The error line is its last `error:` or absl `FATAL` line (absl ends a flag error with a
    line pointing to --helpshort, which says nothing of what was wrong).
    """
    try:
        with open(os.path.join(directory, "train.log"), errors="replace") as f:
            lines = [line.rstrip() for line in f if line.strip()]
    except OSError:
        return "", []
    starts = [k for k, line in enumerate(lines) if line.startswith("$ ")]
    lines = lines[starts[-1] + 1:] if starts else lines  # this attempt's, not an earlier one's
    errors = [line for line in lines if line.startswith(("error:", "FATAL"))]
    return (errors or lines or [""])[-1].strip(), lines[-count:]


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (None for a single value: no spread is known)."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def final_train_accuracy(results: dict, net: str) -> Optional[float]:
    """Training accuracy (%) of a network's final classifier in the last epoch, or None.

    Keras's running mean over that epoch's (augmented) batches, as history.csv records it.
    """
    history = results.get("history") or []
    value = history[-1].get(f"{net}_logits_acc") if history else None
    try:
        return 100.0 * float(value)
    except (TypeError, ValueError):
        return None


def versus_baseline(config: dict, rows: List[dict]) -> List[dict]:
    """Each method's test-error margin over the baseline, per network, against the seed spread.

    `margin` = baseline mean error - method mean error (positive: the method is better);
    `spread` = the larger of the two sample standard deviations over seeds. A margin that does
    not exceed the spread is reported as within it: the seeds do not separate the two methods.
    With a single seed on either side there is no spread: `spread` and `exceeds_spread` are None.
    """
    out = []
    for nets in config["rows"]:
        mine = {r["method"]: r for r in rows if r["nets"] == list(nets)}
        base = mine.get("baseline")
        if base is None:
            continue
        for method, row in mine.items():
            if method == "baseline":
                continue
            nets_out = {}
            for key, err in row["test_error"].items():
                b = base["test_error"].get(key)
                if b is None:
                    continue
                margin = b["mean"] - err["mean"]
                known = b["std"] is not None and err["std"] is not None
                spread = max(b["std"], err["std"]) if known else None
                nets_out[key] = {"margin": margin, "spread": spread,
                                 "exceeds_spread": abs(margin) > spread if known else None}
            out.append({"nets": list(nets), "method": method, "networks": nets_out,
                        "time_vs_baseline": row["time_vs_baseline"]})
    return out


def verdict_lines(comparisons: List[dict]) -> List[str]:
    """One plain sentence per method: better, worse or within the seed spread, and its cost."""
    lines = []
    for c in comparisons:
        parts = []
        for key, v in c["networks"].items():
            if v["exceeds_spread"] is None:
                parts.append(f"{key} error {-v['margin']:+.2f} points (one seed: no spread to "
                             f"judge it against)")
                continue
            if not v["exceeds_spread"]:
                word = "within the seed spread"
            else:
                word = "better than baseline" if v["margin"] > 0 else "WORSE than baseline"
            parts.append(f"{key} error {-v['margin']:+.2f} points ({word}, spread "
                         f"{v['spread']:.2f})")
        x = c["time_vs_baseline"]
        cost = f"; training time x{x:.2f} of baseline" if x else ""
        lines.append(f"{c['method']} vs baseline ({' / '.join(c['nets'])}): "
                     f"{'; '.join(parts)}{cost}.")
    return lines


def closing_lines(comparisons: List[dict]) -> List[str]:
    """What the user's own table says of DCM against the baseline, in one line, and where the
    measured study is: nothing is claimed beyond these runs."""
    dcm = [v for c in comparisons if c["method"] == "dcm" for v in c["networks"].values()]
    judged = [v for v in dcm if v["exceeds_spread"] is not None]
    better = [v for v in judged if v["exceeds_spread"] and v["margin"] > 0]
    if not dcm:
        line = "This table has no DCM and baseline rows to compare."
    elif not judged:
        line = ("In these runs DCM cannot be judged against the baseline: with one seed on a "
                "side there is no seed spread (run more seeds).")
    elif better:
        line = (f"In these runs DCM's error is lower than the baseline's by more than the seed "
                f"spread for {len(better)} of {len(judged)} networks.")
    else:
        line = ("In these runs DCM's margin over the baseline does not exceed the seed spread "
                "for any network: these seeds do not separate it from the baseline.")
    return [line, f"How the margin depended on data and budget in the measured study: "
                  f"{ACCURACY_GUIDE}"]


def summarize(config: dict, results: Dict[tuple, dict]) -> List[dict]:
    """One table row per (networks, method): error mean/std per network and the time multiple."""
    rows = []
    for nets in config["rows"]:
        base = [r["epoch_train_seconds_median"] for (n, m, _), r in results.items()
                if n == tuple(nets) and m == "baseline" and r.get("epoch_train_seconds_median")]
        base_time = statistics.fmean(base) if base else None
        for method in config["methods"]:
            runs = [r for (n, m, _), r in sorted(results.items())
                    if n == tuple(nets) and m == method]
            if not runs:
                continue
            errors = {}
            for k, name in enumerate(nets):
                key = f"net{k + 1}"
                errors[key] = {"architecture": name, **mean_std(
                    [r["networks"][key]["test_error"]["logits"] for r in runs])}
                top5 = [r["networks"][key].get("top5_error") for r in runs]
                if all(t is not None for t in top5):
                    errors[key]["top5"] = mean_std(top5)
            train_acc = {}
            for k in range(len(nets)):
                values = [final_train_accuracy(r, f"net{k + 1}") for r in runs]
                if all(v is not None for v in values):
                    train_acc[f"net{k + 1}"] = mean_std(values)
            times = [r["epoch_train_seconds_median"] for r in runs
                     if r.get("epoch_train_seconds_median")]
            epoch_time = statistics.fmean(times) if times else None
            rows.append({
                "nets": list(nets), "method": method, "seeds": [r["flags"]["seed"] for r in runs],
                "test_error": errors, "train_accuracy": train_acc,
                "epoch_train_seconds": epoch_time,
                "time_vs_baseline": epoch_time / base_time if epoch_time and base_time else None,
                # None when a run's history.csv was incomplete (its results.json says so).
                "wall_time_s": (statistics.fmean(r["wall_time_s"] for r in runs)
                                if all(r.get("wall_time_s") is not None for r in runs)
                                else None),
            })
    return rows


def _mean_std_text(e: Dict[str, float]) -> str:
    """`mean ± std`, or `mean (1 seed)` when there is no spread."""
    return f"{e['mean']:.2f} (1 seed)" if e["std"] is None else f"{e['mean']:.2f} ± {e['std']:.2f}"


def markdown_table(config: dict, rows: List[dict], notes: Sequence[str] = ()) -> str:
    """The summary as a markdown table (error in %, mean +/- sample std over seeds).

    `notes`: sentences appended to the footnote (how the times were measured, missing runs).
    """
    width = max(len(nets) for nets in config["rows"])
    head = ["networks", "method"] + [f"net{k + 1} error (%)" for k in range(width)]
    head += ["train acc (%)", "train s/epoch", "time x baseline", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [" / ".join(row["nets"]), row["method"]]
        for k in range(width):
            e = row["test_error"].get(f"net{k + 1}")
            cells.append(_mean_std_text(e) if e else "")
        acc = [a["mean"] for a in row.get("train_accuracy", {}).values()]
        cells.append(f"{statistics.fmean(acc):.1f}" if acc else "")
        t, x = row["epoch_train_seconds"], row["time_vs_baseline"]
        cells += [f"{t:.1f}" if t else "", f"{x:.2f}" if x else "", str(len(row["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    flags_text = ", ".join(f"{k}={_flag_text(v)}" for k, v in config["train_flags"].items())
    seeds = sorted({s for row in rows for s in row["seeds"]}) or config["seeds"]
    lines += ["", f"Test error of each network's final classifier, mean ± sample std over seeds "
                  f"{', '.join(map(str, seeds))}; train acc = final-epoch training accuracy "
                  f"(augmented batches), mean over networks and seeds; time = median training "
                  f"time of an epoch (the first, which also traces the graphs, left out when "
                  f"there are more) relative to baseline. Settings: {flags_text}."
                  + "".join(f" {note}" for note in notes)]
    verdicts = verdict_lines(versus_baseline(config, rows))
    if verdicts:
        lines += ["", "Margin over baseline (negative = lower error) against the seed spread "
                      "(the larger sample std of the two):", ""]
        lines += [f"- {v}" for v in verdicts]
    return "\n".join(lines) + "\n"


def plot(config: dict, rows: List[dict], path: str) -> None:
    """Test error per method with std error bars, one panel per network pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = config["rows"]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False)
    for ax, nets in zip(axes[0], pairs):
        mine = [r for r in rows if r["nets"] == list(nets)]
        methods = [r["method"] for r in mine]
        width = 0.8 / len(nets)
        for k, name in enumerate(nets):
            key = f"net{k + 1}"
            xs = [i + (k - (len(nets) - 1) / 2) * width for i in range(len(mine))]
            bars = ax.bar(xs, [r["test_error"][key]["mean"] for r in mine], width,
                          yerr=[r["test_error"][key]["std"] or 0.0 for r in mine], capsize=4,
                          label=f"{key} ({name})", color=f"C{k}")
            # Bars start at 0 (a cut axis made them look truncated); the numbers carry the
            # small differences between methods.
            ax.bar_label(bars, fmt="%.2f", fontsize=7, label_type="center", color="white")
        ax.set_xticks(range(len(methods)), methods)
        ax.set_ylabel("test error (%)")
        ax.set_title(" / ".join(nets))
        errors = [r["test_error"][f"net{k + 1}"] for r in mine for k in range(len(nets))]
        high = max((e["mean"] + (e["std"] or 0.0) for e in errors), default=1.0)
        ax.set_ylim(0.0, max(high, 1.0) * 1.3)  # room for the legend above the bars
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", ncol=len(nets))
    seeds = len({s for r in rows for s in r["seeds"]})
    fig.suptitle(f"{config['name']}: mean ± std over {seeds} seeds" if seeds > 1 else
                 f"{config['name']}: one seed (no spread)")
    fig.tight_layout()
    with common.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


Key = Tuple[Tuple[str, ...], str, int]  # (networks, method, seed): one run of a comparison


def _test_error_line(label: str, done: dict) -> str:
    errors = ", ".join(f"{k} {v['test_error']['logits']:.2f}%" for k, v in done["networks"].items())
    return f"{label}: test error {errors}"


def train_all(runs: Sequence[Tuple[Key, str, Dict[str, object], str]], jobs: int
              ) -> Dict[Key, Optional[dict]]:
    """Trains `(key, directory, train_flags, label)` runs, up to `jobs` at a time.

    Returns each run's results (None if it failed) by key. Progress lines are printed as runs
    start and finish, so with `jobs` > 1 they interleave.
    """
    lock = threading.Lock()
    concurrent = min(jobs, len(runs))

    def say(*lines: str) -> None:
        with lock:  # a run's lines stay together, whole lines only
            for line in lines:
                print(line, flush=True)

    def train(directory: str, train_flags: Dict[str, object], label: str) -> Optional[dict]:
        say(f"{label}: training in {directory} ...")
        run_start = time.perf_counter()
        done = run_one(directory, train_flags, concurrent=concurrent)
        if _stopping.is_set():
            return None  # killed by the interruption; its FAILED line would only be noise
        if done is None:
            error, tail = _log_tail(directory)
            say(f"{label}: FAILED ({error}); the end of its log, "
                f"{os.path.join(directory, 'train.log')}:", *[f"    {line}" for line in tail])
        else:
            say(f"{label}: done in {time.perf_counter() - run_start:.0f}s",
                _test_error_line(label, done))
        return done

    _stopping.clear()
    pool = futures.ThreadPoolExecutor(max_workers=jobs)
    try:
        pending = {key: pool.submit(train, directory, train_flags, label)
                   for key, directory, train_flags, label in runs}
        return {key: future.result() for key, future in pending.items()}
    except BaseException:
        # Ctrl-C, or a run that could not start: as with a single run, the queued runs are not
        # started and the running ones are stopped (they resume from their last epoch next time).
        _stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        with _live_lock:
            for proc in _live:
                proc.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def compare(config: dict, work_dir: str, jobs: int = 1, no_train: bool = False) -> int:
    """Runs every (networks, method, seed) of `config` and writes the table and plot.

    Finished runs are reused; the others are trained, up to `jobs` at a time, or with `no_train`
    only listed as missing (an error if no run at all has finished). Returns the number of runs
    that failed.
    """
    out_dir = os.path.join(work_dir, config["name"])
    # Every folder and file the comparison writes below --work_dir, checked before any is.
    common.check_no_symlinks(work_dir, config["name"], *[
        os.path.relpath(run_dir(work_dir, config["name"], nets, method, seed), work_dir)
        for nets in config["rows"] for method in config["methods"] for seed in config["seeds"]])
    common.check_no_symlinks(out_dir, "table.md", "table.json", "comparison.png")
    keys: List[Key] = [(tuple(nets), method, seed) for nets in config["rows"]
                       for method in config["methods"] for seed in config["seeds"]]
    results: Dict[Key, dict] = {}
    missing, to_train = [], []
    start = time.perf_counter()
    # Every finished run is checked before anything trains, so one made with other settings stops
    # the comparison before it has spent any time, and reused runs never wait for a job slot.
    for i, key in enumerate(keys, 1):
        nets, method, seed = key
        directory = run_dir(work_dir, config["name"], nets, method, seed)
        train_flags = {"method": method, "nets": list(nets), "seed": seed,
                       **config["train_flags"]}
        label = f"[{i}/{len(keys)}] {'/'.join(nets)} {method} seed {seed}"
        done = run_folder.completed_results(directory)
        if done is None:
            if no_train:
                missing.append(directory)
                print(f"{label}: not finished in {directory} (missing, --no_train)", flush=True)
            else:
                to_train.append((key, directory, train_flags, label))
            continue
        diffs = _setting_differences(done, train_flags)
        if diffs:
            raise UserError(f"{directory} holds a finished run with other settings "
                            f"({', '.join(diffs)}); it is kept: use another --work_dir.")
        print(f"{label}: reusing the finished run in {directory} (skipped)", flush=True)
        print(_test_error_line(label, done), flush=True)
        results[key] = done
    if no_train and not results:
        raise UserError(f"--no_train: none of the {len(keys)} runs of comparison "
                        f"{config['name']!r} has finished in {out_dir}; nothing to tabulate.")

    os.makedirs(out_dir, exist_ok=True)
    failed = []
    trained = train_all(to_train, jobs)
    for key, directory, _, _ in to_train:
        done = trained[key]
        if done is None:
            failed.append(directory)
        else:
            results[key] = done
    # In the config's order, whichever finished first: the rows, the JSON and even the last
    # digit of every mean are then the same for any --jobs.
    results = {key: results[key] for key in keys if key in results}
    earlier = earlier_runs(config, work_dir, set(keys), results)
    if earlier:
        print(f"Also tabulating {len(earlier)} finished run(s) of this comparison that an earlier "
              "invocation left in the work dir (seeds "
              f"{', '.join(map(str, sorted({seed for _, _, seed in earlier})))}).", flush=True)
        results.update(earlier)

    notes = []
    if no_train:
        notes.append("Tabulated with --no_train from the runs already finished in the work dir: "
                     "their times compare only if they ran on the same machine and load.")
    elif min(jobs, len(to_train)) > 1:
        notes.append(f"With --jobs={jobs}, up to {min(jobs, len(to_train))} runs trained at the "
                     "same time on this machine, so their epoch times (and the time x baseline "
                     "column) are contended and only roughly comparable.")
    if missing:
        notes.append(f"{len(missing)} of the {len(keys)} runs had not finished and are left out "
                     "(missing_runs in table.json).")
    rows = summarize(config, results)
    if not rows:  # every run failed: an empty table would only hide the tables of earlier runs
        print(f"No run of comparison {config['name']!r} finished, so no table was written.",
              flush=True)
        return len(failed)
    table = markdown_table(config, rows, notes)
    common.write_text(os.path.join(out_dir, "table.md"), table)
    common.write_json(os.path.join(out_dir, "table.json"), {
        "config": config, "rows": rows, "vs_baseline": versus_baseline(config, rows),
        "failed_runs": failed, "missing_runs": missing,
        # How many runs could train at once here (their times are contended if > 1); None when
        # nothing was trained (--no_train).
        "jobs": None if no_train else jobs,
        "runs": {run_dir(work_dir, config["name"], *key): {
            **r["networks"], "train_accuracy": {
                net: final_train_accuracy(r, net) for net in r["networks"]},
            "epoch_train_seconds_median": r.get("epoch_train_seconds_median"),
            "wall_time_s": r.get("wall_time_s")} for key, r in results.items()},
        "compare_wall_time_s": time.perf_counter() - start})
    if rows:
        plot(config, rows, os.path.join(out_dir, "comparison.png"))
    print()
    print(table)
    if config.get("note"):
        print(config["note"])
    print(f"Table:       {os.path.join(out_dir, 'table.md')} (and table.json)")
    if rows:
        print(f"Plot:        {os.path.join(out_dir, 'comparison.png')}")
    print(f"TensorBoard: tensorboard --logdir {out_dir}")
    for line in closing_lines(versus_baseline(config, rows)):
        print(line)
    print(f"Done in {time.perf_counter() - start:.0f}s.")
    return len(failed)


def _stop_on_sigterm(signum, frame) -> None:
    """SIGTERM (`kill`, a job scheduler, `timeout`) stops the comparison as Ctrl-C does: it
    unwinds `train_all`, which kills the training runs it started (they resume next time);
    without it they were left running, orphaned."""
    # A second SIGTERM while the runs are being killed would cut that short and orphan them.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"Stopped by signal {signum}; the runs in progress stop here and resume next time.",
          file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        common.check_path_flag(FLAGS.work_dir, "--work_dir")
        config = load_config(FLAGS.preset, FLAGS.config, FLAGS.methods, FLAGS.seeds,
                             FLAGS.epochs, FLAGS.max_train_examples)
        failures = compare(config, FLAGS.work_dir, jobs=FLAGS.jobs, no_train=FLAGS.no_train)
    except (UserError, OSError) as e:  # anything else is a bug and keeps its traceback
        sys.exit(f"error: {common.one_line(e)}")
    if failures:
        sys.exit(f"error: {failures} run(s) failed; see their train.log.")


if __name__ == "__main__":
    app.run(main)

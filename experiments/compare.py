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

import os
import signal
import sys
import time
from typing import Dict, List

from absl import app, flags

from experiments import common
from experiments.common import UserError
from experiments.comparison_config import load_config, preset_names, setting_differences
from experiments.comparison_runs import (Key, earlier_runs, error_line, run_folder_path,
                                         stop_on_sigterm, train_all)
from experiments.comparison_stats import (closing_lines, final_train_accuracy, markdown_table,
                                          summarize, versus_baseline)
from experiments.plots import plot_comparison
from experiments.rundir import files
from experiments.rundir.run import completed_results

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


def compare(config: dict, work_dir: str, jobs: int = 1, no_train: bool = False) -> int:
    """Runs every (networks, method, seed) of `config` and writes the table and plot.

    Finished runs are reused; the others are trained, up to `jobs` at a time, or with `no_train`
    only listed as missing (an error if no run at all has finished). Returns the number of runs
    that failed.
    """
    out_dir = os.path.join(work_dir, config["name"])
    # Every folder and file the comparison writes below --work_dir, checked before any is.
    files.check_no_symlinks(work_dir, config["name"], *[
        os.path.relpath(run_folder_path(work_dir, config["name"], nets, method, seed), work_dir)
        for nets in config["rows"] for method in config["methods"] for seed in config["seeds"]])
    files.check_no_symlinks(out_dir, "table.md", "table.json", "comparison.png")
    keys: List[Key] = [(tuple(nets), method, seed) for nets in config["rows"]
                       for method in config["methods"] for seed in config["seeds"]]
    results: Dict[Key, dict] = {}
    missing, to_train = [], []
    start = time.perf_counter()
    # Every finished run is checked before anything trains, so one made with other settings stops
    # the comparison before it has spent any time, and reused runs never wait for a job slot.
    for i, key in enumerate(keys, 1):
        nets, method, seed = key
        directory = run_folder_path(work_dir, config["name"], nets, method, seed)
        train_flags = {"method": method, "nets": list(nets), "seed": seed,
                       **config["train_flags"]}
        label = f"[{i}/{len(keys)}] {'/'.join(nets)} {method} seed {seed}"
        done = completed_results(directory)
        if done is None:
            if no_train:
                missing.append(directory)
                print(f"{label}: not finished in {directory} (missing, --no_train)", flush=True)
            else:
                to_train.append((key, directory, train_flags, label))
            continue
        diffs = setting_differences(done, train_flags)
        if diffs:
            raise UserError(f"{directory} holds a finished run with other settings "
                            f"({', '.join(diffs)}); it is kept: use another --work_dir.")
        print(f"{label}: reusing the finished run in {directory} (skipped)", flush=True)
        print(error_line(label, done), flush=True)
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
    files.write_text(os.path.join(out_dir, "table.md"), table)
    files.write_json(os.path.join(out_dir, "table.json"), {
        "config": config, "rows": rows, "vs_baseline": versus_baseline(config, rows),
        "failed_runs": failed, "missing_runs": missing,
        # How many runs could train at once here (their times are contended if > 1); None when
        # nothing was trained (--no_train).
        "jobs": None if no_train else jobs,
        "runs": {run_folder_path(work_dir, config["name"], *key): {
            **r["networks"], "train_accuracy": {
                net: final_train_accuracy(r, net) for net in r["networks"]},
            "epoch_train_seconds_median": r.get("epoch_train_seconds_median"),
            "wall_time_s": r.get("wall_time_s")} for key, r in results.items()},
        "compare_wall_time_s": time.perf_counter() - start})
    if rows:
        plot_comparison(config, rows, os.path.join(out_dir, "comparison.png"))
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


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    signal.signal(signal.SIGTERM, stop_on_sigterm)
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

r"""Every accuracy table of docs/accuracy.md and docs/results/README.md, built from the JSON files.

    python docs/make_accuracy_tables.py           # rewrite the tables in place
    python docs/make_accuracy_tables.py --check   # exit 1 if a doc differs from a regeneration

A table sits between `<!-- table:NAME -->` and `<!-- /table -->`; everything between the two
markers is replaced. The inputs are the compare outputs docs/results/<config>.json (each the
`table.json` of `python -m experiments.compare --config=docs/results/configs/<config>.json`), the
configs themselves, and the step-cost benchmarks benchmarks/results/cifar_wrn16_1_pair_cost_*.json.
Where a config's runs were tabulated again after more of them finished (RETABULATED), the later
file is read and the first stays beside it, marked superseded in the record.

Statistics are recomputed from each run's own numbers (`runs` in the JSON), not from the rows:
results written by older code carry a standard deviation of 0 for one seed. Here one seed has
no spread, and a difference with no spread on either side is never "beyond" it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
CONFIGS = os.path.join(RESULTS, "configs")
COST_FILES = os.path.join(REPO, "benchmarks", "results", "cifar_wrn16_1_pair_cost_*.json")
DOCS = [os.path.join(HERE, "accuracy.md"), os.path.join(RESULTS, "README.md")]
TEST_IMAGES = 10_000  # both datasets' test sets; max_test_examples unset means all of them
TRAIN_IMAGES = {"fashion_mnist": 60_000}
METHODS = ["baseline", "dsn", "dml", "dcm", "same_stage", "cross_stage"]

# Issue 28's pre-registered CIFAR-10 study (the S2 configs are named after their epochs).
STUDY = [("S1, schedule", ["cifar10_n2000_e100"]),
         ("S2, compute-matched", ["cifar10_n2000_e*_matched"]),
         ("S3, 10,000 images", ["cifar10_n10000_e100"])]
CIFAR_EQUAL = ["cifar10_n500_e100", "cifar10_n2000_e50", "cifar10_n2000_e100",
               "cifar10_n2000_e*_matched", "cifar10_n10000_e100"]
CIFAR_HETERO = ["cifar10_n500_e100_hetero_lr002"]
# Where each Fashion-MNIST config ran: one H100 with JAX, else the 2-core CPU with TensorFlow.
GPU = {"fmnist_n60000_e8", "fmnist_n2048_e100", "fmnist_n1024_e200", "fmnist_n60000_e2_timing",
       "fmnist_n2048_e10_timing"} | {f"fmnist_n2048_e100_dcm_{x}" for x in
                                     ("norm", "warmup10", "kdw05", "wd0", "t3")}
FMNIST_GPU = ["fmnist_n60000_e8", "fmnist_n2048_e100", "fmnist_n1024_e200"]
FMNIST_CPU = ["fmnist_n8192_e1", "fmnist_n4096_e2", "fmnist_n8192_e2", "fmnist_n1024_e16",
              "fmnist_n4096_e2_stages"]
FACTORS_GPU = [("fmnist_n2048_e100_dcm_norm", "ce mean_per_network + kd mean_per_student"),
               ("fmnist_n2048_e100_dcm_warmup10", "kd_warmup_epochs 10 (of 100)"),
               ("fmnist_n2048_e100_dcm_kdw05", "kd_weight 0.5"),
               ("fmnist_n2048_e100_dcm_wd0", "weight_decay 0"),
               ("fmnist_n2048_e100_dcm_t3", "temperature 3")]
FACTORS_CPU = [("fmnist_n4096_e2_dcm_norm", "ce mean_per_network + kd mean_per_student"),
               ("fmnist_n4096_e2_dcm_warmup1", "kd_warmup_epochs 1 (of 2)"),
               ("fmnist_n4096_e2_dcm_kdw05", "kd_weight 0.5"),
               ("fmnist_n4096_e2_dcm_wd0", "weight_decay 0"),
               ("fmnist_n4096_e2_dcm_t3", "temperature 3")]
FACTORS_1024 = [("fmnist_n1024_e16_dcm_norm", "ce mean_per_network + kd mean_per_student")]
# Every point with a baseline and DCM, for the answer table: CIFAR-10 first, then Fashion-MNIST.
ANSWER = (CIFAR_EQUAL + CIFAR_HETERO
          + ["fmnist_n1024_e200", "fmnist_n1024_e200_cpu", "fmnist_n128_e120",
             "fmnist_n128_e200_mnv3small", "fmnist_n2048_e100", "fmnist_n128_e60",
             "fmnist_n60000_e8", "fmnist_n1024_e16", "fmnist_n8192_e2", "fmnist_n4096_e2",
             "fmnist_n8192_e1", "fmnist_n60000_e2_timing", "fmnist_n2048_e10_timing"])
# Results that were deleted once and restored from git history (commit 9822611 removed them).
RESTORED = {"fmnist_n60000_e2_timing", "fmnist_n2048_e10_timing"}
NOTES = {"fmnist_n60000_e2_timing": "restored; one seed, 1,000 test images, a timing run; "
                                    "config committed with its results (ecca592), not "
                                    "pre-registered",
         "fmnist_n2048_e10_timing": "restored; one seed, a timing run (0.1 s epochs); config "
                                    "committed with its results (ecca592), not pre-registered",
         "fmnist_n128_e120": "no config file: `--preset=demo_fit`"}
# A config's runs tabulated again once more of them had finished: the later file sits beside the
# first, which stays as it was written, and the tables read the later one where it exists.
RETABULATED = {"cifar10_n10000_e100": "cifar10_n10000_e100_with_dml"}


# --- Statistics ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds; `std` is None for fewer than two."""

    mean: float
    std: float | None
    n: int

    def text(self, digits: int = 2) -> str:
        if self.std is None:
            return f"{self.mean:.{digits}f} (1 seed)" if self.n == 1 else f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def stat(values: list[float]) -> Stat:
    """Mean and sample std (n - 1) of `values`; one value has no spread."""
    if not values:
        raise ValueError("stat() needs at least one value, got none")
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))


@dataclass(frozen=True)
class Margin:
    """a - b, and the spread it is judged by: the larger of the two stds (None: no spread)."""

    diff: float
    spread: float | None

    @property
    def beyond(self) -> bool:
        return self.spread is not None and abs(self.diff) > self.spread

    def text(self) -> str:
        if self.spread is None:
            return f"{self.diff:+.2f} (no spread)"
        return f"{self.diff:+.2f} ({'beyond' if self.beyond else 'within'} {self.spread:.2f})"


def margin(a: Stat, b: Stat) -> Margin:
    """a's mean minus b's, beyond the spread only when it exceeds both sample stds."""
    spread = None if a.std is None or b.std is None else max(a.std, b.std)
    return Margin(a.mean - b.mean, spread)


# --- Reading the results ---------------------------------------------------------------------

def read(stem: str, folder: str = RESULTS) -> dict | None:
    """<folder>/<stem>.json, or None when there is no such file."""
    path = os.path.join(folder, f"{stem}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def results_file(name: str, results: str = RESULTS) -> str:
    """The results file (stem) the tables read for config `name`: its later tabulation where
    one was committed (RETABULATED), else <name>."""
    later = RETABULATED.get(name)
    return later if later and os.path.exists(os.path.join(results, f"{later}.json")) else name


def load(name: str, results: str = RESULTS) -> dict | None:
    """The results of config `name` (results_file), or None when it has none yet."""
    return read(results_file(name, results), results)


def finished(names: list[str], results: str = RESULTS):
    """(name, its results) for each of `names` that has a results file, in order."""
    for name in names:
        table = load(name, results)
        if table is not None:
            yield name, table


def expand(patterns: list[str], results: str = RESULTS) -> list[str]:
    """Config names matching `patterns` (globs) among the configs and the results, in order."""
    out = []
    for pattern in patterns:
        found = {os.path.basename(p)[:-5] for d in (results, os.path.join(results, "configs"))
                 for p in glob.glob(os.path.join(d, f"{pattern}.json"))}
        out += [n for n in sorted(found, key=_epochs_key) if n not in out]
    return out


def _epochs_key(name: str):
    m = re.search(r"_e(\d+)", name)
    return (int(m.group(1)) if m else 0, name)


def seeds(table: dict, method: str) -> dict[int, dict]:
    """seed -> that run's entry, for one method of a compare output."""
    out = {}
    for path, run in table["runs"].items():
        stem, _, seed = os.path.basename(path).rpartition("_seed")
        if stem == method:
            out[int(seed)] = run
    return dict(sorted(out.items()))


def per_method(table: dict) -> dict[str, dict[str, Stat]]:
    """method -> {net1, net2, pair, acc1, acc2, acc} statistics over its seeds."""
    out = {}
    methods = [r["method"] for r in table["rows"]]
    for method in methods:
        runs = list(seeds(table, method).values())
        if not runs:
            continue
        err = {n: [r[n]["test_error"]["logits"] for r in runs] for n in ("net1", "net2")}
        acc = {n: [r["train_accuracy"][n] for r in runs
                   if (r.get("train_accuracy") or {}).get(n) is not None] for n in ("net1", "net2")}
        row = {n: stat(err[n]) for n in err}
        row["pair"] = stat([(a + b) / 2 for a, b in zip(err["net1"], err["net2"])])
        if acc["net1"] and acc["net2"]:
            row["acc1"], row["acc2"] = stat(acc["net1"]), stat(acc["net2"])
            row["acc"] = stat([(a + b) / 2 for a, b in zip(acc["net1"], acc["net2"])])
        out[method] = row
    return out


def time_multiple(table: dict, method: str) -> float | None:
    row = next((r for r in table["rows"] if r["method"] == method), {})
    return row.get("time_vs_baseline")


def budget(table: dict) -> str:
    f = table["config"]["train_flags"]
    n = f.get("max_train_examples") or TRAIN_IMAGES.get(f["dataset"], 0)
    return f"{n:,} × {f['epochs']} ({n // f['batch_size'] * f['epochs']:,} steps)"


def test_images(table: dict) -> int:
    return table["config"]["train_flags"].get("max_test_examples") or TEST_IMAGES


def nets(table: dict) -> str:
    return " / ".join(n.replace("keras:", "") for n in table["config"]["rows"][0])


def where(name: str) -> str:
    if name.startswith("cifar10"):
        return "CPU"
    return "H100" if name in GPU else "CPU"


# --- Tables ----------------------------------------------------------------------------------

def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _acc(r: dict, key: str = "acc") -> str:
    return f"{r[key].mean:.1f}" if key in r else ""


def answer_table(names: list[str], results: str = RESULTS) -> str:
    """Each point with a baseline and DCM: DCM's and DML's margins per network, with the fit."""
    rows = []
    for name, table in finished(names, results):
        m = per_method(table)
        if "baseline" not in m or "dcm" not in m:
            continue
        b = m["baseline"]
        vs = {k: " / ".join(margin(m[k][n], b[n]).text() for n in ("net1", "net2"))
              if k in m else "" for k in ("dcm", "dml")}
        data = "CIFAR-10" if name.startswith("cifar10") else "Fashion-MNIST"
        rows.append([data, nets(table), budget(table), f"{_acc(b, 'acc1')} / {_acc(b, 'acc2')}",
                     vs["dcm"], vs["dml"], str(b["net1"].n), f"{test_images(table):,}",
                     where(name), f"[{name}](results/{results_file(name, results)}.json)"])
    return _md(["data", "networks", "train images × epochs", "baseline train acc net1 / net2 (%)",
                "DCM − baseline, net1 / net2 (points; spread)", "DML − baseline, net1 / net2",
                "seeds", "test images", "machine", "results"], rows)


def network_table(names: list[str], results: str = RESULTS) -> str:
    """Per-network errors of every method, each against the baseline, with fit and time."""
    rows = []
    for name, table in finished(names, results):
        m = per_method(table)
        for method in [x for x in METHODS if x in m]:
            r, b = m[method], m.get("baseline")
            vs = ["", ""] if method == "baseline" or b is None else \
                [margin(r[n], b[n]).text() for n in ("net1", "net2")]
            t = time_multiple(table, method)
            rows.append([budget(table), method, r["net1"].text(), r["net2"].text(), *vs,
                         f"{_acc(r, 'acc1')} / {_acc(r, 'acc2')}", f"{t:.2f}" if t else "",
                         ", ".join(map(str, seeds(table, method)))])
    return _md(["train images × epochs", "method", "net1 error (%)", "net2 error (%)",
                "net1 − baseline (spread)", "net2 − baseline (spread)",
                "train acc net1 / net2 (%)", "epoch time × baseline, as run", "seeds"], rows)


def per_seed_table(names: list[str], results: str = RESULTS) -> str:
    """Each run against the baseline of the same seed (the same training subset)."""
    rows = []
    for name, table in finished(names, results):
        base = seeds(table, "baseline")
        for method in [r["method"] for r in table["rows"] if r["method"] != "baseline"]:
            cells = []
            for seed, run in seeds(table, method).items():
                if seed in base:
                    d = [run[n]["test_error"]["logits"] - base[seed][n]["test_error"]["logits"]
                         for n in ("net1", "net2")]
                    cells.append(f"seed {seed}: {d[0]:+.2f} / {d[1]:+.2f}")
            rows.append([budget(table), nets(table), method, "; ".join(cells)])
    return _md(["train images × epochs", "networks", "method",
                "− baseline of the same seed, net1 / net2 (points)"], rows)


def pair_table(names: list[str], results: str = RESULTS) -> str:
    """Pair-mean error (a seed's two networks averaged first), every method against baseline."""
    rows = []
    for name, table in finished(names, results):
        m = per_method(table)
        for method in [x for x in METHODS if x in m]:
            r, b = m[method], m.get("baseline")
            vs = "" if method == "baseline" or b is None else margin(r["pair"], b["pair"]).text()
            t = time_multiple(table, method)
            rows.append([budget(table), method, r["pair"].text(), vs, r["net1"].text(),
                         r["net2"].text(), r["acc"].text(1) if "acc" in r else "",
                         f"{t:.2f}" if t else "", str(r["pair"].n)])
    return _md(["train images × epochs", "method", "pair error (%)", "− baseline (spread)",
                "net1 error (%)", "net2 error (%)", "train acc (%)",
                "epoch time × baseline, as run", "seeds"], rows)


def factor_table(reference: str, factors: list[tuple[str, str]], results: str = RESULTS) -> str:
    """DCM with one flag changed, against DCM and the baseline of the reference config."""
    ref = load(reference, results)
    if ref is None:
        return f"(no results yet: {reference})"
    m = per_method(ref)
    rows = [("baseline (no distillation)", m["baseline"]), ("DCM, paper's loss", m["dcm"])]
    rows += [(label, per_method(t)["dcm"]) for n, label in factors
             if (t := load(n, results)) is not None]
    return _md(["DCM variant (one change from the recipe)", "pair error (%)",
                "− DCM (spread)", "− baseline (spread)", "train acc (%)", "seeds"],
               [[label, r["pair"].text(), margin(r["pair"], m["dcm"]["pair"]).text(),
                 margin(r["pair"], m["baseline"]["pair"]).text(),
                 r["acc"].text(1) if "acc" in r else "", str(r["pair"].n)] for label, r in rows])


def _finished_runs(name: str, results: str, method: str = "*") -> int:
    """Runs of `name` (of `method`, or all) committed as they finish under
    results/runs/<name>/<networks>/<method>_seed<N>/ whose results.json says complete."""
    done = 0
    for path in glob.glob(os.path.join(results, "runs", name, "*", f"{method}_seed*",
                                       "results.json")):
        try:
            with open(path) as f:
                done += json.load(f).get("complete") is True
        except (OSError, ValueError):
            pass
    return done


def progress(name: str, results: str = RESULTS) -> tuple[int, int | None]:
    """(finished, planned) runs of a config without a results file: the runs committed as they
    finish under results/runs/<name>/ (results.json saying complete), against the config's
    rows x methods x seeds (None where the config does not say)."""
    done = _finished_runs(name, results)
    try:  # a config file that is damaged or lacks a field plans nothing it could say
        config = read(name, os.path.join(results, "configs"))
        planned = len(config["rows"]) * len(config["methods"]) * len(config["seeds"])
    except (OSError, ValueError, KeyError, TypeError):
        planned = None
    return done, planned


def _runs_finished(done: int, planned: int | None) -> str:
    """"3 of 9 runs finished", or "3 runs finished" where the plan is unknown."""
    return f"{done}{f' of {planned}' if planned else ''} runs finished"


def _under_way(name: str, results: str, link_to_runs: str) -> str | None:
    """How far a config without a results file got ("3 of 9 runs finished ..."), or None when
    none of its runs has finished."""
    done, planned = progress(name, results)
    if not done:
        return None
    return (f"{_runs_finished(done, planned)} ([runs]({link_to_runs}runs/{name}/)), "
            "no results file yet")


def _not_tabulated(name: str, table: dict, results: str, link_to_runs: str) -> str:
    """"; not run: ..." for the methods and seeds the committed config plans and its results
    file leaves out (a compare narrowed with --methods or --seeds), else "". A left-out method
    whose runs were committed since says how many finished, so a results file written before
    them cannot read as the method's absence."""
    try:
        planned = read(name, os.path.join(results, "configs")) or {}
        told = table.get("config") or {}
        left = {key: [value for value in planned.get(key) or []
                      if key in told and value not in told[key]] for key in ("methods", "seeds")}
        runs_per_method = len(planned.get("rows") or []) * len(planned.get("seeds") or [])
    except (OSError, ValueError, TypeError, AttributeError):
        return ""
    not_run, text = [], ""
    for method in left["methods"]:
        done = _finished_runs(name, results, str(method))
        if done:
            text += (f"; {method}: {_runs_finished(done, runs_per_method)} since "
                     f"([runs]({link_to_runs}runs/{name}/)), not in the results file")
        else:
            not_run.append(str(method))
    not_run += [str(seed) for seed in left["seeds"]]
    return (f"; not run: {', '.join(not_run)} (in the config)" if not_run else "") + text


def _outcome(name: str, table: dict, results: str, link_to_runs: str) -> str:
    """"N failed, M missing" of a results file, and what its config planned that it left out."""
    return (f"{len(table.get('failed_runs') or [])} failed, "
            f"{len(table.get('missing_runs') or [])} missing"
            + _not_tabulated(name, table, results, link_to_runs))


def status_table(groups: list[tuple[str, list[str]]], results: str = RESULTS) -> str:
    """Each config of a study: whether it has results, with how many runs, failed and missing."""
    rows = []
    for label, patterns in groups:
        names = expand(patterns, results)
        if not names:
            rows.append([label, f"`{patterns[0]}`", "config not committed yet", "", ""])
        for name in names:
            config = os.path.join(results, "configs", f"{name}.json")
            link = f"[{name}](results/configs/{name}.json)" if os.path.exists(config) else name
            table = load(name, results)
            if table is None:
                under_way = _under_way(name, results, "results/")
                state = ("**not run yet** (no results file)" if under_way is None
                         else f"**under way**: {under_way}")
                rows.append([label, link, state, "", ""])
                continue
            runs = len(table["runs"])
            failed, missing = table.get("failed_runs") or [], table.get("missing_runs") or []
            state = "finished" if not failed and not missing else "incomplete"
            file = results_file(name, results)
            rows.append([label, link, f"{state}: [results](results/{file}.json)", f"{runs} runs",
                         _outcome(name, table, results, "results/")])
    return _md(["study", "config", "status", "runs reported", "failed / missing"], rows)


def matched_table(dcm_config: str, matched: list[str], results: str = RESULTS) -> str:
    """DCM of `dcm_config` against every other run of it and the methods trained longer for
    the same compute (S2), each with its final training accuracy."""
    names = [dcm_config] + expand(matched, results)
    loaded = {n: load(n, results) for n in names}
    waiting = [n for n, table in loaded.items() if table is None]
    if len(names) < 2 or waiting:
        return _md(["compute-matched comparison"], [[
            "waiting for results: " + ", ".join(waiting or [f"`{matched[0]}` (no config)"])]])
    dcm = per_method(loaded[dcm_config]).get("dcm")
    if dcm is None:
        return _md(["compute-matched comparison"], [[f"{dcm_config} has no DCM runs"]])

    dcm_seeds = seeds(loaded[dcm_config], "dcm")

    def by_seed(table: dict, method: str) -> str:
        """DCM's run of each seed against this method's run of the same seed (same images)."""
        err = lambda run, n: run[n]["test_error"]["logits"]  # noqa: E731
        return "; ".join(
            f"seed {k}: " + " / ".join(f"{err(dcm_seeds[k], n) - err(run, n):+.2f}"
                                       for n in ("net1", "net2"))
            for k, run in seeds(table, method).items() if k in dcm_seeds)

    def row(table: dict, method: str, r: dict, margins: list[str]) -> list[str]:
        return [budget(table), method, r["net1"].text(), r["net2"].text(), *margins,
                f"{_acc(r, 'acc1')} / {_acc(r, 'acc2')}", str(r["net1"].n)]

    rows = [row(loaded[dcm_config], "dcm", dcm, ["", "", ""])]
    for name, table in loaded.items():
        for method, r in per_method(table).items():
            if name == dcm_config and method == "dcm":
                continue
            rows.append(row(table, method, r, [margin(dcm[n], r[n]).text()
                                               for n in ("net1", "net2")]
                            + [by_seed(table, method)]))
    return _md(["train images × epochs", "method", "net1 error (%)", "net2 error (%)",
                "DCM − this, net1 (spread)", "DCM − this, net2 (spread)",
                "DCM − this by seed, net1 / net2", "train acc net1 / net2 (%)", "seeds"], rows)


def record_table(results: str = RESULTS) -> str:
    """Every config and every results file under docs/results/, and what became of it."""
    names = sorted({os.path.basename(p)[:-5] for d in (results, os.path.join(results, "configs"))
                    for p in glob.glob(os.path.join(d, "*.json"))})
    config_of = {later: name for name, later in RETABULATED.items()}
    rows = []
    for name in names:
        config = config_of.get(name, name)  # a later tabulation belongs to its config
        has_config = os.path.exists(os.path.join(results, "configs", f"{config}.json"))
        table = read(name, results)
        if table is None:
            under_way = _under_way(name, results, "")
            state = "not run yet" if under_way is None else f"under way: {under_way}"
        else:
            state = f"{len(table['runs'])} runs, " + _outcome(config, table, results, "")
            later = results_file(name, results)
            if later != name:
                state += f"; superseded by [{later}]({later}.json), which the tables read"
        rows.append([name, ("yes" if config == name else f"yes ({config})") if has_config else "no",
                     f"[json]({name}.json)" if table else "", state, NOTES.get(name, "")])
    return _md(["config", "config file", "results", "runs", "note"], rows)


def cost_table(pattern: str = COST_FILES) -> str:
    """The CIFAR setup's train-step rates per benchmark file, and DCM's multiple of the pair."""
    rows = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            report = json.load(f)
        rate = {r["config"]: r["images_per_s"] for r in report["results"]
                if r.get("precision", "float32") == "float32"}
        gflop = {r["config"]: r.get("gflop_per_image") for r in report["results"]}
        onednn = report["machine"].get("onednn_enabled")
        machine = report["machine"]
        cpu = (f"{machine.get('cpu_kind', '')} (family {machine.get('cpu_family', '?')}, model "
               f"{machine.get('cpu_model_number', '?')})")
        rows.append([report["date"], cpu,
                     {True: "on", False: "off"}.get(onednn, "not recorded"),
                     *(f"{rate[c]:.0f}" if c in rate else "" for c in ("pair", "dml", "dcm")),
                     f"{rate['pair'] / rate['dcm']:.2f}" if "pair" in rate and "dcm" in rate
                     else "", f"{gflop['dcm'] / gflop['pair']:.2f}" if gflop.get("pair")
                     and gflop.get("dcm") else "",
                     f"[{os.path.basename(path)}](../benchmarks/results/{os.path.basename(path)})"])
    return _md(["measured", "CPU", "oneDNN", "pair img/s", "DML img/s", "DCM img/s",
                "DCM step × pair's", "DCM FLOPs × pair's", "output"], rows)


TABLES = {
    "answer": lambda: answer_table(ANSWER),
    "study_status": lambda: status_table(STUDY),
    "compute_matched": lambda: matched_table("cifar10_n2000_e100", ["cifar10_n2000_e*_matched"]),
    "step_cost": cost_table,
    "cifar_equal": lambda: network_table(expand(CIFAR_EQUAL)),
    "cifar_hetero": lambda: network_table(CIFAR_HETERO),
    "cifar_per_seed": lambda: per_seed_table(expand(CIFAR_EQUAL) + CIFAR_HETERO),
    "fmnist_gpu": lambda: pair_table(FMNIST_GPU),
    "fmnist_gpu_factors": lambda: factor_table("fmnist_n2048_e100", FACTORS_GPU),
    "fmnist_cpu_replication": lambda: pair_table(["fmnist_n1024_e200_cpu"]),
    "fmnist_cpu": lambda: pair_table(FMNIST_CPU),
    "fmnist_cpu_factors": lambda: factor_table("fmnist_n4096_e2", FACTORS_CPU),
    "fmnist_n1024_e16_factor": lambda: factor_table("fmnist_n1024_e16", FACTORS_1024),
    "fmnist_single_seed": lambda: network_table(["fmnist_n60000_e2_timing",
                                                 "fmnist_n2048_e10_timing"]),
    "fmnist_demo": lambda: network_table(["fmnist_n128_e60", "fmnist_n128_e120"]),
    "fmnist_mnv3small": lambda: network_table(["fmnist_n128_e200_mnv3small"]),
    "record": record_table,
}
BLOCK = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def render(text: str, tables: dict | None = None) -> str:
    """`text` with every marked table regenerated; an unknown name is an error."""
    tables = TABLES if tables is None else tables

    def fill(match):
        name = match.group(2)
        if name not in tables:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(sorted(tables))}")
        return f"{match.group(1)}{tables[name]()}\n{match.group(4)}"

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a doc differs from a regeneration")
    args = parser.parse_args(argv)
    stale = []
    for path in DOCS:
        with open(path) as f:
            old = f.read()
        new = render(old)
        if new != old:
            stale.append(os.path.relpath(path, REPO))
            if not args.check:
                with open(path, "w") as f:
                    f.write(new)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run python docs/make_accuracy_tables.py",
              file=sys.stderr)
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale else "tables up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())

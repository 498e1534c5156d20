r"""Plots and tables of docs/accuracy.md, from the committed compare.py outputs only.

    python docs/make_accuracy_plots.py            # writes docs/accuracy_*.png, prints tables

Reads docs/results/<config>.json (each a copy of the `table.json` that
`python -m experiments.compare --config=docs/results/configs/<config>.json` wrote). Errors are
per pair: each seed's two networks are averaged first (both are WRN-10-1), then mean ± sample std
over the seeds; the per-network numbers are in the JSON files and in compare.py's tables.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
# The budget sweep, in order of SGD steps, then epochs (fewer images, more passes).
SWEEP = ["fmnist_n8192_e1", "fmnist_n4096_e2", "fmnist_n8192_e2", "fmnist_n1024_e16"]
STAGES = "fmnist_n4096_e2_stages"
ABLATIONS = [("fmnist_n4096_e2_dcm_norm", "ce mean_per_network + kd mean_per_student"),
             ("fmnist_n4096_e2_dcm_warmup1", "kd_warmup_epochs 1 (of 2)"),
             ("fmnist_n4096_e2_dcm_kdw05", "kd_weight 0.5"),
             ("fmnist_n4096_e2_dcm_wd0", "weight_decay 0"),
             ("fmnist_n4096_e2_dcm_t3", "temperature 3")]
# The one factor measured at the 1,024 x 16 point too.
ABLATIONS_1024 = [("fmnist_n1024_e16_dcm_norm", "ce mean_per_network + kd mean_per_student")]
METHODS = ["baseline", "dsn", "dml", "dcm", "same_stage", "cross_stage"]


def load(name):
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def ms(values):
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
            len(values))


def per_method(table):
    """method -> {pair error, per-net errors, train acc, time multiple, n} from one table.json."""
    out = {}
    for row in table["rows"]:
        method = row["method"]
        runs = [r for path, r in table["runs"].items()
                if os.path.basename(path).rsplit("_seed", 1)[0] == method]
        pair = [statistics.fmean(r[n]["test_error"]["logits"] for n in ("net1", "net2"))
                for r in runs]
        acc = [statistics.fmean(r["train_accuracy"][n] for n in ("net1", "net2")) for r in runs
               if r.get("train_accuracy") and None not in r["train_accuracy"].values()]
        out[method] = {"pair": ms(pair), "acc": ms(acc) if acc else None,
                       "net1": row["test_error"]["net1"], "net2": row["test_error"]["net2"],
                       "time": row.get("time_vs_baseline"),
                       "epoch_s": row.get("epoch_train_seconds")}
    return out


def budget_label(table):
    f = table["config"]["train_flags"]
    steps = f["max_train_examples"] // f["batch_size"] * f["epochs"]
    return f"{f['max_train_examples']} x {f['epochs']}\n({steps} steps)"


def fmt(m):
    return f"{m[0]:.2f} ± {m[1]:.2f}"


def sweep_table(tables):
    lines = ["| budget (images x epochs) | method | pair error (%) | net1 error (%) | "
             "net2 error (%) | train acc (%) | time x baseline | n |", "|" + "---|" * 8]
    for name, table in tables:
        results = per_method(table)
        for method in [m for m in METHODS if m in results]:
            r = results[method]
            acc = f"{r['acc'][0]:.1f} ± {r['acc'][1]:.1f}" if r["acc"] else ""
            t = f"{r['time']:.2f}" if r["time"] else ""
            lines.append(f"| {budget_label(table).replace(chr(10), ' ')} | {method} | {fmt(r['pair'])} | "
                         f"{r['net1']['mean']:.2f} ± {r['net1']['std']:.2f} | "
                         f"{r['net2']['mean']:.2f} ± {r['net2']['std']:.2f} | {acc} | {t} | "
                         f"{r['pair'][2]} |")
    return "\n".join(lines)


def ablation_table(reference, ablations):
    ref = per_method(reference)
    lines = ["| DCM variant (one change from the recipe) | pair error (%) | "
             "vs DCM (points) | vs baseline (points) | train acc (%) | n |", "|" + "---|" * 6]
    base, dcm = ref["baseline"]["pair"][0], ref["dcm"]["pair"][0]
    rows = [("baseline (no distillation)", ref["baseline"]), ("DCM, paper's loss", ref["dcm"])]
    rows += [(label, per_method(t)["dcm"]) for label, t in ablations]
    for label, r in rows:
        acc = f"{r['acc'][0]:.1f}" if r["acc"] else ""
        lines.append(f"| {label} | {fmt(r['pair'])} | {r['pair'][0] - dcm:+.2f} | "
                     f"{r['pair'][0] - base:+.2f} | {acc} | {r['pair'][2]} |")
    return "\n".join(lines)


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [(n, t) for n in SWEEP if (t := load(n)) is not None]
    if not tables:
        sys.exit(f"no results in {RESULTS}")
    stages = load(STAGES)
    ablations = [(label, t) for n, label in ABLATIONS if (t := load(n)) is not None]

    # 1. Test error and train accuracy against the budget, one line per method.
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [budget_label(t) for _, t in tables]
    for i, method in enumerate(METHODS[:4]):
        pts = [(x, per_method(t).get(method)) for x, (_, t) in enumerate(tables)]
        pts = [(x, r) for x, r in pts if r]
        xs = [x + (i - 1.5) * 0.06 for x, _ in pts]
        ax.errorbar(xs, [r["pair"][0] for _, r in pts], yerr=[r["pair"][1] for _, r in pts],
                    marker="o", capsize=3, label=method, color=f"C{i}")
        acc = [(x, r["acc"]) for x, (_, r) in zip(xs, pts) if r["acc"]]
        ax2.errorbar([a for a, _ in acc], [m[0] for _, m in acc], yerr=[m[1] for _, m in acc],
                     marker="o", capsize=3, label=method, color=f"C{i}")
    if stages:
        x = [lbl for lbl in labels].index(budget_label(stages)) if budget_label(stages) in labels else None
        if x is not None:
            for j, method in enumerate(["same_stage", "cross_stage"]):
                r = per_method(stages).get(method)
                if r:
                    ax.errorbar([x + (j + 2.5) * 0.06], [r["pair"][0]], yerr=[r["pair"][1]],
                                marker="s", capsize=3, linestyle="none", label=method,
                                color=f"C{4 + j}")
    for a, ylabel in ((ax, "test error (%), pair mean"), (ax2, "final-epoch train acc (%)")):
        a.set_xticks(range(len(labels)), labels)
        a.set_xlabel("training images x epochs")
        a.set_ylabel(ylabel)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    ax.set_title("Fashion-MNIST, WRN-10-1 pair: test error (mean ± std, 3 seeds)")
    ax2.set_title("training accuracy at the end (augmented batches)")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "accuracy_error_vs_budget.png"), dpi=90)
    plt.close(fig)

    # 2. The factors, one at a time, for DCM at the ablation point.
    if ablations:
        ref = dict(tables)[ABLATIONS[0][0].split("_dcm_")[0]]
        rows = [("baseline", per_method(ref)["baseline"]), ("DCM (paper)", per_method(ref)["dcm"])]
        rows += [(label, per_method(t)["dcm"]) for label, t in ablations]
        fig, ax = plt.subplots(figsize=(9, 4))
        ax.barh(range(len(rows)), [r["pair"][0] for _, r in rows],
                xerr=[r["pair"][1] for _, r in rows], capsize=4,
                color=["C0", "C3"] + ["C7"] * (len(rows) - 2))
        ax.set_yticks(range(len(rows)), [label for label, _ in rows])
        ax.invert_yaxis()
        low = min(r["pair"][0] - r["pair"][1] for _, r in rows)
        high = max(r["pair"][0] + r["pair"][1] for _, r in rows)
        ax.set_xlim(max(0, low - 0.5 * (high - low) - 0.5), high + 0.2 * (high - low) + 0.2)
        ax.set_xlabel("test error (%), pair mean ± std over 3 seeds")
        ax.set_title(f"DCM, one factor at a time ({budget_label(ref).replace(chr(10), ' ')})")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(HERE, "accuracy_dcm_factors.png"), dpi=90)
        plt.close(fig)

    print(sweep_table(tables + ([(STAGES, stages)] if stages else [])))
    if ablations:
        print()
        print(ablation_table(dict(tables)[ABLATIONS[0][0].split("_dcm_")[0]], ablations))
    more = [(label, t) for n, label in ABLATIONS_1024 if (t := load(n)) is not None]
    if more and "fmnist_n1024_e16" in dict(tables):
        print()
        print(ablation_table(dict(tables)["fmnist_n1024_e16"], more))


if __name__ == "__main__":
    main()

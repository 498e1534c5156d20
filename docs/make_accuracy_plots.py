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
# The short budgets (2-core CPU, TensorFlow, first 5,000 test images), in order of SGD steps,
# then epochs (fewer images, more passes).
SWEEP = ["fmnist_n8192_e1", "fmnist_n4096_e2", "fmnist_n8192_e2", "fmnist_n1024_e16"]
# The long budgets (one H100, JAX, all 10,000 test images), from the least to the most fitted.
SWEEP_GPU = ["fmnist_n60000_e8", "fmnist_n2048_e100", "fmnist_n1024_e200"]
STAGES = "fmnist_n4096_e2_stages"
ABLATIONS = [("fmnist_n4096_e2_dcm_norm", "ce mean_per_network + kd mean_per_student"),
             ("fmnist_n4096_e2_dcm_warmup1", "kd_warmup_epochs 1 (of 2)"),
             ("fmnist_n4096_e2_dcm_kdw05", "kd_weight 0.5"),
             ("fmnist_n4096_e2_dcm_wd0", "weight_decay 0"),
             ("fmnist_n4096_e2_dcm_t3", "temperature 3")]
ABLATIONS_GPU = [("fmnist_n2048_e100_dcm_norm", "ce mean_per_network + kd mean_per_student"),
                 ("fmnist_n2048_e100_dcm_warmup10", "kd_warmup_epochs 10 (of 100)"),
                 ("fmnist_n2048_e100_dcm_kdw05", "kd_weight 0.5"),
                 ("fmnist_n2048_e100_dcm_wd0", "weight_decay 0"),
                 ("fmnist_n2048_e100_dcm_t3", "temperature 3")]
# The one factor measured at the 1,024 x 16 point too.
ABLATIONS_1024 = [("fmnist_n1024_e16_dcm_norm", "ce mean_per_network + kd mean_per_student")]
# The 1,024 x 200 point again on the CPU with TensorFlow (tf.data pipeline), baseline and DCM.
REPLICATION = "fmnist_n1024_e200_cpu"
# Sequential runs (one at a time on the GPU): the training-time multiples.
METHODS = ["baseline", "dsn", "dml", "dcm", "same_stage", "cross_stage"]
FASHION_TRAIN = 60_000
# CIFAR-10 (2-core CPU, TensorFlow, all 10,000 test images): the WRN-16-1 pair's budgets, from
# the fitted one to the larger, and the heterogeneous pair at the fitted budget's flags.
CIFAR_SWEEP = ["cifar10_n500_e100", "cifar10_n2000_e50"]
CIFAR_HETERO = ["cifar10_n500_e100_hetero_lr002"]
CIFAR_METHODS = ["baseline", "dml", "dcm"]


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
    n = f.get("max_train_examples") or FASHION_TRAIN
    steps = n // f["batch_size"] * f["epochs"]
    return f"{n} x {f['epochs']}\n({steps} steps)"


def fmt(m):
    return f"{m[0]:.2f} ± {m[1]:.2f}"


def margin(r, base):
    """Pair-error difference to the baseline, and whether it exceeds the larger of the stds."""
    d = r["pair"][0] - base["pair"][0]
    beyond = abs(d) > max(r["pair"][1], base["pair"][1])
    return f"{d:+.2f}" + (" (beyond spread)" if beyond else "")


def sweep_table(tables):
    lines = ["| budget (images x epochs) | method | pair error (%) | vs baseline | net1 error (%) | "
             "net2 error (%) | train acc (%) | time x baseline | n |", "|" + "---|" * 9]
    for name, table in tables:
        results = per_method(table)
        for method in [m for m in METHODS if m in results]:
            r = results[method]
            acc = f"{r['acc'][0]:.1f} ± {r['acc'][1]:.1f}" if r["acc"] else ""
            t = f"{r['time']:.2f}" if r["time"] else ""
            vs = margin(r, results["baseline"]) if "baseline" in results and method != "baseline" else ""
            lines.append(f"| {budget_label(table).replace(chr(10), ' ')} | {method} | {fmt(r['pair'])} | {vs} | "
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


def network_margin(table, method, net):
    """A method's error minus the baseline's for one network, with the spread it is judged by.

    The same rule as experiments/compare.py: beyond the spread when the difference exceeds the
    larger of the two sample standard deviations over seeds.
    """
    rows = {r["method"]: r for r in table["rows"]}
    if "baseline" not in rows or method not in rows:
        return None
    a, b = rows[method]["test_error"][net], rows["baseline"]["test_error"][net]
    if a.get("std") is None or b.get("std") is None:
        return a["mean"] - b["mean"], None
    return a["mean"] - b["mean"], max(a["std"], b["std"])


def _margin_text(m):
    if m is None:
        return ""
    d, spread = m
    if spread is None:
        return f"{d:+.2f} (no spread)"
    return f"{d:+.2f} ({'beyond' if abs(d) > spread else 'within'} {spread:.2f})"


def cifar_table(tables):
    """Per-network errors, each method against the baseline and the spread, fit and time."""
    lines = ["| budget (images x epochs) | networks | method | net1 error (%) | net2 error (%) | "
             "net1 − baseline (spread) | net2 − baseline (spread) | train acc net1 / net2 (%) | "
             "time x baseline | n |", "|" + "---|" * 10]
    for _, table in tables:
        for row in table["rows"]:
            method = row["method"]
            e1, e2 = row["test_error"]["net1"], row["test_error"]["net2"]
            acc = row.get("train_accuracy") or {}
            acc_text = " / ".join(f"{acc[n]['mean']:.1f}" for n in ("net1", "net2") if n in acc)
            t = row.get("time_vs_baseline")
            std = lambda e: "" if e.get("std") is None else f" ± {e['std']:.2f}"  # noqa: E731
            lines.append(
                f"| {budget_label(table).replace(chr(10), ' ')} | {' / '.join(row['nets'])} "
                f"| {method} | {e1['mean']:.2f}{std(e1)} | {e2['mean']:.2f}{std(e2)} "
                f"| {_margin_text(network_margin(table, method, 'net1')) if method != 'baseline' else ''} "
                f"| {_margin_text(network_margin(table, method, 'net2')) if method != 'baseline' else ''} "
                f"| {acc_text} | {f'{t:.2f}' if t else ''} | {len(row['seeds'])} |")
    return "\n".join(lines)


def plot_cifar(plt, tables, path):
    """CIFAR-10: each network's test error against the budget, one line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    labels = [budget_label(t) for _, t in tables]
    for ax, net in zip(axes, ("net1", "net2")):
        for i, method in enumerate(CIFAR_METHODS):
            pts = [(x, {r["method"]: r for r in t["rows"]}.get(method))
                   for x, (_, t) in enumerate(tables)]
            pts = [(x + (i - 1) * 0.04, r["test_error"][net]) for x, r in pts if r]
            if pts:
                ax.errorbar([x for x, _ in pts], [e["mean"] for _, e in pts],
                            yerr=[e.get("std") or 0.0 for _, e in pts], marker="o", capsize=3,
                            label=method, color=f"C{i}")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xlabel("training images x epochs")
        ax.set_title(f"CIFAR-10, WRN-16-1 pair: {net}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test error (%), mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_factors(plt, ref, ablations, path):
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
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sweep(plt, tables, stages, path, title):
    """Test error and final train accuracy against the budget, one line per method."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [budget_label(t) for _, t in tables]
    for i, method in enumerate(METHODS):
        pts = [(x, per_method(t).get(method)) for x, (_, t) in enumerate(tables)]
        pts = [(x, r) for x, r in pts if r]
        if not pts:
            continue
        xs = [x + (i - 2.5) * 0.05 for x, _ in pts]
        style = dict(marker="o" if i < 4 else "s", capsize=3, label=method, color=f"C{i}",
                     linestyle="-" if i < 4 else ":")
        ax.errorbar(xs, [r["pair"][0] for _, r in pts], yerr=[r["pair"][1] for _, r in pts],
                    **style)
        acc = [(x, r["acc"]) for x, (_, r) in zip(xs, pts) if r["acc"]]
        ax2.errorbar([a for a, _ in acc], [m[0] for _, m in acc], yerr=[m[1] for _, m in acc],
                     **style)
    if stages:
        x = labels.index(budget_label(stages)) if budget_label(stages) in labels else None
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
    ax.set_title(title)
    ax2.set_title("training accuracy at the end (augmented batches)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [(n, t) for n in SWEEP if (t := load(n)) is not None]
    gpu = [(n, t) for n in SWEEP_GPU if (t := load(n)) is not None]
    cifar = [(n, t) for n in CIFAR_SWEEP if (t := load(n)) is not None]
    hetero = [(n, t) for n in CIFAR_HETERO if (t := load(n)) is not None]
    if not tables and not gpu and not cifar:
        sys.exit(f"no results in {RESULTS}")
    if cifar:
        plot_cifar(plt, cifar, os.path.join(HERE, "accuracy_cifar10_error_vs_budget.png"))
        print("## CIFAR-10 (CPU)\n")
        print(cifar_table(cifar + hetero))
        print()
    stages = load(STAGES)
    ablations = [(label, t) for n, label in ABLATIONS if (t := load(n)) is not None]
    ablations_gpu = [(label, t) for n, label in ABLATIONS_GPU if (t := load(n)) is not None]

    if tables:
        plot_sweep(plt, tables, stages, os.path.join(HERE, "accuracy_error_vs_budget.png"),
                   "short budgets (CPU): test error, mean ± std over 3 seeds")
    if gpu:
        plot_sweep(plt, gpu, None, os.path.join(HERE, "accuracy_error_vs_budget_gpu.png"),
                   "long budgets (GPU): test error, mean ± std over 3 seeds")
    if ablations:
        plot_factors(plt, dict(tables)["fmnist_n4096_e2"], ablations,
                     os.path.join(HERE, "accuracy_dcm_factors.png"))
    if ablations_gpu:
        plot_factors(plt, dict(gpu)["fmnist_n2048_e100"], ablations_gpu,
                     os.path.join(HERE, "accuracy_dcm_factors_gpu.png"))

    if gpu:
        print("## long budgets (GPU)\n")
        print(sweep_table(gpu))
    if ablations_gpu:
        print()
        print(ablation_table(dict(gpu)["fmnist_n2048_e100"], ablations_gpu))
    replication = load(REPLICATION)
    if replication:
        print()
        print(sweep_table([(REPLICATION, replication)]))
    if tables:
        print("\n## short budgets (CPU)\n")
        print(sweep_table(tables + ([(STAGES, stages)] if stages else [])))
    if ablations:
        print()
        print(ablation_table(dict(tables)["fmnist_n4096_e2"], ablations))
    more = [(label, t) for n, label in ABLATIONS_1024 if (t := load(n)) is not None]
    if more and "fmnist_n1024_e16" in dict(tables):
        print()
        print(ablation_table(dict(tables)["fmnist_n1024_e16"], more))


if __name__ == "__main__":
    main()

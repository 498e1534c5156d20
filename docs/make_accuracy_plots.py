r"""Plots of docs/accuracy.md and docs/results/README.md, from the committed compare.py outputs only.

    python docs/make_accuracy_plots.py            # writes docs/accuracy_*.png
    python docs/make_accuracy_tables.py           # the tables (their statistics live there)

Reads docs/results/<config>.json (each a copy of the `table.json` that
`python -m experiments.compare --config=docs/results/configs/<config>.json` wrote). Errors are
per pair: each seed's two networks are averaged first, then mean ± sample std over the seeds; one
seed has no spread and is drawn without an error bar.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_accuracy_tables as tables_mod  # noqa: E402  (a sibling script, not a package)

HERE = tables_mod.HERE
RESULTS = tables_mod.RESULTS
# The short budgets (2-core CPU, TensorFlow, first 5,000 test images), in order of SGD steps,
# then epochs (fewer images, more passes).
SWEEP = ["fmnist_n8192_e1", "fmnist_n4096_e2", "fmnist_n8192_e2", "fmnist_n1024_e16"]
# The long budgets (one H100, JAX, all 10,000 test images), from the least to the most fitted.
SWEEP_GPU = ["fmnist_n60000_e8", "fmnist_n2048_e100", "fmnist_n1024_e200"]
STAGES = "fmnist_n4096_e2_stages"
ABLATIONS = tables_mod.FACTORS_CPU
ABLATIONS_GPU = tables_mod.FACTORS_GPU
METHODS = tables_mod.METHODS
FASHION_TRAIN = 60_000
# CIFAR-10 WRN-16-1 pairs (2-core CPU, TensorFlow, all 10,000 test images); the study's configs
# join the plot once they have results.
CIFAR_SWEEP = tables_mod.CIFAR_EQUAL
CIFAR_METHODS = ["baseline", "dml", "dcm"]


def load(name):
    return tables_mod.load(name)


def per_method(table):
    """method -> {"pair": (mean, std or 0 for one seed, n), "acc": the same or None}."""
    out = {}
    for method, r in tables_mod.per_method(table).items():
        triple = lambda s: (s.mean, s.std or 0.0, s.n)  # noqa: E731  (no bar for one seed)
        out[method] = {"pair": triple(r["pair"]), "acc": triple(r["acc"]) if "acc" in r else None}
    return out


def budget_label(table):
    f = table["config"]["train_flags"]
    n = f.get("max_train_examples") or FASHION_TRAIN
    steps = n // f["batch_size"] * f["epochs"]
    return f"{n} x {f['epochs']}\n({steps} steps)"


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


def main(out_dir: str = HERE) -> list[str]:
    """Draws every plot whose results are present into `out_dir`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [(n, t) for n in SWEEP if (t := load(n)) is not None]
    gpu = [(n, t) for n in SWEEP_GPU if (t := load(n)) is not None]
    cifar = [(n, t) for n in tables_mod.expand(CIFAR_SWEEP) if (t := load(n)) is not None]
    if not tables and not gpu and not cifar:
        sys.exit(f"no results in {RESULTS}")
    written = []

    def out(name):
        written.append(os.path.join(out_dir, name))
        return written[-1]

    if cifar:
        plot_cifar(plt, cifar, out("accuracy_cifar10_error_vs_budget.png"))
    stages = load(STAGES)
    ablations = [(label, t) for n, label in ABLATIONS if (t := load(n)) is not None]
    ablations_gpu = [(label, t) for n, label in ABLATIONS_GPU if (t := load(n)) is not None]
    if tables:
        plot_sweep(plt, tables, stages, out("accuracy_error_vs_budget.png"),
                   "short budgets (CPU): test error, mean ± std over 3 seeds")
    if gpu:
        plot_sweep(plt, gpu, None, out("accuracy_error_vs_budget_gpu.png"),
                   "long budgets (GPU): test error, mean ± std over 3 seeds")
    if ablations:
        plot_factors(plt, dict(tables)["fmnist_n4096_e2"], ablations,
                     out("accuracy_dcm_factors.png"))
    if ablations_gpu:
        plot_factors(plt, dict(gpu)["fmnist_n2048_e100"], ablations_gpu,
                     out("accuracy_dcm_factors_gpu.png"))
    print("wrote " + ", ".join(os.path.relpath(p, out_dir) for p in written))
    return written


if __name__ == "__main__":
    main()

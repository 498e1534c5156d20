"""The experiment scripts' figures, in a module without flags (tests and notebooks import it).

`plot_test_error` draws a run's test_error.png (experiments/train.py), `plot_comparison` a
comparison's comparison.png (experiments/compare.py).
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

from experiments import common
from experiments.rundir import files


def plot_test_error(history: List[dict], network_heads: Dict[str, Tuple[str, List[str]]],
                    path: str, title: str) -> None:
    """Test error (%) per epoch of every head: a colour per network, a line style and marker
    per head (final head solid and thicker), the legend outside the axes.

    `network_heads` maps "net1" to (architecture, [head names]).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    aux_styles = [("--", "s"), (":", "^"), ("-.", "v"), ((0, (5, 1, 1, 1, 1, 1)), "D")]
    epochs, errors = set(), []
    for k, (net, (arch, heads)) in enumerate(network_heads.items()):
        for depth, head in enumerate(heads):
            key = f"val_{net}_{head}_acc"
            rows = [row for row in history if math.isfinite(row.get(key, math.nan))]
            if not rows:
                continue
            final = head == "logits"
            style, marker = ("-", "o") if final else aux_styles[depth % len(aux_styles)]
            ys = [common.error_percent(row[key]) for row in rows]
            epochs.update(row["epoch"] + 1 for row in rows)
            errors += ys
            ax.plot([row["epoch"] + 1 for row in rows], ys, color=f"C{k}",
                    linestyle=style, linewidth=1.8 if final else 1.1,
                    alpha=1.0 if final else 0.75, marker=marker if len(rows) < 20 else None,
                    markersize=3 if len(rows) > 1 else 7,
                    label=f"{net} ({arch})" if final else f"{net} {head}")
    if len(epochs) == 1:  # one evaluation: a lone dot on an axis of +-0.4 points said nothing
        epoch = next(iter(epochs))
        ax.set_xlim(epoch - 1, epoch + 1)
        ax.set_ylim(0.0, min(105.0, max(errors) * 1.2 + 1.0))
        ax.set_title(f"{title} (one evaluation)")
    else:
        ax.set_title(title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    # Outside the axes, so it never covers a curve.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    with files.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def plot_comparison(config: dict, rows: List[dict], path: str) -> None:
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
    with files.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)

"""The experiment scripts' figures, in a module without flags (tests and notebooks import it).

`plot_test_error` draws a run's test_error.png (experiments/train.py).
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

from experiments import common


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
    with common.replacing(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)

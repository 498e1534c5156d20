"""`DCM.summary()`: one row per network (net1, net2, ...) with its heads, then the KD graph."""

from __future__ import annotations

from typing import Callable, List, Optional

import keras


def _count(weights) -> int:
    return int(sum(int(keras.ops.size(w)) for w in weights))


def summary_lines(dcm) -> List[str]:
    """The rows `DCM.summary` prints.

    Keras's own summary shows each network as a layer named after its architecture, so a pair of
    identical networks reads as two identical rows; here each is named by its place in the DCM.
    """
    rows = [("network", "architecture", "heads (shallow to deep)", "params", "deployable")]
    for k, (net, heads) in enumerate(zip(dcm.networks, dcm.heads)):
        deployable = keras.Model(net.input, net.output["logits"])  # shares layers: no copy
        rows.append((f"net{k + 1}", f"{net.name} ({type(net).__name__})", ", ".join(heads),
                     f"{net.count_params():,}", f"{deployable.count_params():,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    connections = (dcm.connections if isinstance(dcm.connections, str)
                   else "explicit edge list")
    heads = sum(len(h) for h in dcm.heads)
    trainable = _count(dcm.trainable_weights)
    return ([f'Model: "{dcm.name}" (DCM)', *table[:1], "-" * len(table[0]), *table[1:], "",
             f"Distillation: {len(dcm.edges)} KL edges between {heads} heads "
             f"(connections={connections!r}, temperature={dcm.temperature:g}, "
             f"kd_weight={dcm.kd_weight:g})",
             f"Total params: {trainable + _count(dcm.non_trainable_weights):,} "
             f"(trainable {trainable:,}, non-trainable {_count(dcm.non_trainable_weights):,})"])


def print_summary(dcm, print_fn: Optional[Callable[[str], None]] = None) -> None:
    """Prints `summary_lines(dcm)` through `print_fn` (default: `print`)."""
    for line in summary_lines(dcm):
        (print_fn or print)(line)

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
    deployable = []
    for k, (net, heads) in enumerate(zip(dcm.networks, dcm.heads)):
        # Input -> final logits, sharing the layers (no copy): what export_network ships.
        deployable.append(keras.Model(net.input, net.output["logits"]).count_params())
        rows.append((f"net{k + 1}", f"{net.name} ({type(net).__name__})", ", ".join(heads),
                     f"{net.count_params():,}", f"{deployable[-1]:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    connections = (dcm.connections if isinstance(dcm.connections, str)
                   else "explicit edge list")
    heads = sum(len(h) for h in dcm.heads)
    trainable, frozen = _count(dcm.trainable_weights), _count(dcm.non_trainable_weights)
    in_networks = sum(net.count_params() for net in dcm.networks)
    return ([f'Model: "{dcm.name}" (DCM)', *table[:1], "-" * len(table[0]), *table[1:], "",
             f"Distillation: {len(dcm.edges)} KL edges between {heads} heads "
             f"(connections={connections!r}, temperature={dcm.temperature:g}, "
             f"kd_weight={dcm.kd_weight:g})",
             f"Total params: {trainable + frozen:,} (trainable {trainable:,}, non-trainable "
             f"{frozen:,}): the networks' {in_networks:,} with their auxiliary heads, and the "
             f"DCM's own {trainable + frozen - in_networks:,} (kd_scale)",
             f"Deployable params (final head only, as export_network ships): {sum(deployable):,} "
             f"({', '.join(f'net{k + 1} {n:,}' for k, n in enumerate(deployable))})"])


def print_summary(dcm, print_fn: Optional[Callable[[str], None]] = None) -> None:
    """Prints `summary_lines(dcm)` through `print_fn` (default: `print`)."""
    for line in summary_lines(dcm):
        (print_fn or print)(line)

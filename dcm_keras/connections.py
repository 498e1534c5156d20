"""The distillation graph: which head learns from which.

A graph is a list of `Edge(student, teacher, weight)` over head ids `net{k}_{head}` (for example
`net1_aux1`, `net2_logits`), where `k` counts the networks from 1 and `head` is a key of that
network's output dict. An edge `i <- j` adds `weight * KL(stop_gradient(p_j) || p_i)` to the loss.

Presets (heads are ordered shallow to deep; "same stage" aligns heads counted from the deepest, so
`logits` pairs with `logits`, the last aux head with the last aux head, and so on):

| preset        | edges                                                                   | 2 nets x 3 heads |
|---------------|-------------------------------------------------------------------------|------------------|
| `dense`       | every head <- every head of every *other* network (DCM)                 | 18               |
| `same_stage`  | the `dense` edges between heads at the same stage                       | 6                |
| `cross_stage` | the `dense` edges between heads at different stages                     | 12               |
| `final`       | final logits <- final logits of every other network (DML)               | 2                |
| `dks`         | every head <- every other head of the *same* network (DKS)              | 12               |
| `none`        | no edges: independent training or deep supervision (DSN)                | 0                |
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, List, Sequence, Tuple, Union

import numpy as np

from dcm_keras.errors import UserError

PRESETS = ("dense", "same_stage", "cross_stage", "final", "dks", "none")
FINAL_HEAD = "logits"


@dataclasses.dataclass(frozen=True)
class Edge:
    """`student` learns from `teacher` (teacher detached) with this weight."""

    student: str
    teacher: str
    weight: float = 1.0


EdgeLike = Union[Edge, Tuple[str, str], Tuple[str, str, float], dict]
Connections = Union[str, Iterable[EdgeLike]]


def head_ids(heads_per_network: Sequence[Sequence[str]]) -> List[List[str]]:
    """`[["aux1", "logits"], ...]` -> `[["net1_aux1", "net1_logits"], ...]`."""
    return [[f"net{k + 1}_{h}" for h in heads] for k, heads in enumerate(heads_per_network)]


def _stage_from_top(heads: Sequence[str], index: int) -> int:
    return len(heads) - 1 - index


def preset_edges(preset: str, heads_per_network: Sequence[Sequence[str]]) -> List[Edge]:
    """Edges of a named preset over networks with the given (shallow-to-deep) head names."""
    if preset not in PRESETS:
        raise UserError(f"Unknown connections preset {preset!r}. Valid presets: "
                        f"{', '.join(PRESETS)}, or an explicit list of (student, teacher[, weight]) edges.")
    ids = head_ids(heads_per_network)
    edges = []
    for a, heads_a in enumerate(heads_per_network):
        for i, head_i in enumerate(heads_a):
            if preset == "dks":
                edges += [Edge(ids[a][i], ids[a][j]) for j in range(len(heads_a)) if j != i]
                continue
            for b, heads_b in enumerate(heads_per_network):
                if b == a:
                    continue
                for j, head_j in enumerate(heads_b):
                    same = _stage_from_top(heads_a, i) == _stage_from_top(heads_b, j)
                    keep = {
                        "dense": True,
                        "same_stage": same,
                        "cross_stage": not same,
                        "final": head_i == FINAL_HEAD and head_j == FINAL_HEAD,
                        "none": False,
                    }[preset]
                    if keep:
                        edges.append(Edge(ids[a][i], ids[b][j]))
    return edges


def _as_edge(item: EdgeLike) -> Edge:
    if isinstance(item, Edge):
        return item
    if isinstance(item, dict):
        return Edge(item["student"], item["teacher"], float(item.get("weight", 1.0)))
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        return Edge(str(item[0]), str(item[1]), float(item[2]) if len(item) == 3 else 1.0)
    raise UserError(f"Cannot read edge {item!r}: give (student, teacher), "
                    "(student, teacher, weight), a dict or an Edge.")


def resolve(connections: Connections, heads_per_network: Sequence[Sequence[str]]) -> List[Edge]:
    """Turns a preset name or an explicit edge list into validated `Edge`s."""
    if isinstance(connections, str):
        return preset_edges(connections, heads_per_network)
    valid = [h for net in head_ids(heads_per_network) for h in net]
    edges, seen = [], set()
    for item in connections:
        edge = _as_edge(item)
        for end in (edge.student, edge.teacher):
            if end not in valid:
                raise UserError(f"Edge {edge.student!r} <- {edge.teacher!r} names head {end!r}, "
                                f"which does not exist. Valid heads: {', '.join(valid)}.")
        if edge.student == edge.teacher:
            raise UserError(f"Edge {edge.student!r} <- {edge.teacher!r} connects a head to itself.")
        if (edge.student, edge.teacher) in seen:
            raise UserError(f"Edge {edge.student!r} <- {edge.teacher!r} is listed twice.")
        if not np.isfinite(edge.weight) or edge.weight < 0:
            raise UserError(f"Edge {edge.student!r} <- {edge.teacher!r} has weight {edge.weight}; "
                            "weights must be finite and >= 0.")
        seen.add((edge.student, edge.teacher))
        edges.append(edge)
    return edges


def edge_arrays(edges: Sequence[Edge], flat_heads: Sequence[str]
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Student indices, teacher indices and weights into `flat_heads`, for a vectorised loss."""
    index = {h: i for i, h in enumerate(flat_heads)}
    students = np.array([index[e.student] for e in edges], dtype=np.int32)
    teachers = np.array([index[e.teacher] for e in edges], dtype=np.int32)
    weights = np.array([e.weight for e in edges], dtype=np.float32)
    return students, teachers, weights


def serialize(connections: Connections) -> Union[str, List[list]]:
    """JSON-friendly form for `get_config`."""
    if isinstance(connections, str):
        return connections
    return [[e.student, e.teacher, e.weight] for e in map(_as_edge, connections)]

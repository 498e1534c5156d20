"""The distillation graph: preset edge counts, stage alignment and explicit edge lists."""

import json

import numpy as np
import pytest

from dcm_keras import Edge, PRESETS, connections

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)

THREE = ["aux1", "aux2", "logits"]


def pairs(edges):
    return {(e.student, e.teacher) for e in edges}


def net_of(head_id):
    return head_id.split("_", 1)[0]


@pytest.mark.parametrize("preset,count", [
    ("dense", 18), ("same_stage", 6), ("cross_stage", 12), ("final", 2), ("none", 0), ("dks", 12),
])
def test_two_networks_three_heads(preset, count):
    edges = connections.resolve(preset, [THREE, THREE])
    assert len(edges) == count
    assert len(pairs(edges)) == count  # no duplicates
    assert all(e.weight == 1.0 for e in edges)
    assert all(e.student != e.teacher for e in edges)
    if preset == "dks":
        assert all(net_of(e.student) == net_of(e.teacher) for e in edges)
    else:
        assert all(net_of(e.student) != net_of(e.teacher) for e in edges)


def test_presets_partition_dense():
    heads = [THREE, THREE]
    dense = pairs(connections.resolve("dense", heads))
    same = pairs(connections.resolve("same_stage", heads))
    cross = pairs(connections.resolve("cross_stage", heads))
    final = pairs(connections.resolve("final", heads))
    assert same | cross == dense and not same & cross
    assert final <= same
    # Dense is every ordered cross-network pair.
    ids = [f"net{k}_{h}" for k in (1, 2) for h in THREE]
    assert dense == {(s, t) for s in ids for t in ids if net_of(s) != net_of(t)}


def test_same_stage_pairs_heads_at_equal_depth():
    same = pairs(connections.resolve("same_stage", [THREE, THREE]))
    assert same == {(f"net{a}_{h}", f"net{b}_{h}") for h in THREE for a, b in [(1, 2), (2, 1)]}
    final = pairs(connections.resolve("final", [THREE, THREE]))
    assert final == {("net1_logits", "net2_logits"), ("net2_logits", "net1_logits")}


@pytest.mark.parametrize("preset,count", [
    # 9 heads, each learns from the 6 heads of the two other networks.
    ("dense", 54), ("same_stage", 18), ("cross_stage", 36), ("final", 6), ("none", 0), ("dks", 18),
])
def test_three_networks(preset, count):
    edges = connections.resolve(preset, [THREE, THREE, THREE])
    assert len(edges) == count
    if preset == "final":
        assert pairs(edges) == {(f"net{a}_logits", f"net{b}_logits")
                                for a in (1, 2, 3) for b in (1, 2, 3) if a != b}


@pytest.mark.parametrize("preset,expected", [
    ("dense", {("net1_aux1", "net2_logits"), ("net1_aux2", "net2_logits"),
               ("net1_logits", "net2_logits"), ("net2_logits", "net1_aux1"),
               ("net2_logits", "net1_aux2"), ("net2_logits", "net1_logits")}),
    # Stages are aligned from the deepest head: logits <-> logits only.
    ("same_stage", {("net1_logits", "net2_logits"), ("net2_logits", "net1_logits")}),
    ("cross_stage", {("net1_aux1", "net2_logits"), ("net1_aux2", "net2_logits"),
                     ("net2_logits", "net1_aux1"), ("net2_logits", "net1_aux2")}),
    ("final", {("net1_logits", "net2_logits"), ("net2_logits", "net1_logits")}),
    ("dks", {(f"net1_{a}", f"net1_{b}") for a in THREE for b in THREE if a != b}),
    ("none", set()),
])
def test_heterogeneous_head_counts(preset, expected):
    assert pairs(connections.resolve(preset, [THREE, ["logits"]])) == expected


def test_same_stage_aligns_from_the_top_with_different_depths():
    # net1 has 3 heads, net2 has 2: aux2 <-> aux1 are both one stage below the top.
    same = pairs(connections.resolve("same_stage", [THREE, ["aux1", "logits"]]))
    assert same == {("net1_logits", "net2_logits"), ("net2_logits", "net1_logits"),
                    ("net1_aux2", "net2_aux1"), ("net2_aux1", "net1_aux2")}


def test_single_network():
    assert connections.resolve("dense", [THREE]) == []
    assert len(connections.resolve("dks", [THREE])) == 6


def test_unknown_preset_lists_valid_presets():
    with pytest.raises(ValueError, match="Unknown connections preset 'desne'") as info:
        connections.resolve("desne", [THREE, THREE])
    for preset in PRESETS:
        assert preset in str(info.value)


def test_explicit_edges_in_every_form():
    edges = connections.resolve([
        ("net1_logits", "net2_logits"),
        ("net2_logits", "net1_logits", 0.5),
        ["net1_aux1", "net2_aux2"],
        {"student": "net2_aux1", "teacher": "net1_aux2", "weight": 2},
        {"student": "net2_aux2", "teacher": "net1_aux1"},
        Edge("net1_aux2", "net1_logits", 3.0),
    ], [THREE, THREE])
    assert edges == [
        Edge("net1_logits", "net2_logits", 1.0),
        Edge("net2_logits", "net1_logits", 0.5),
        Edge("net1_aux1", "net2_aux2", 1.0),
        Edge("net2_aux1", "net1_aux2", 2.0),
        Edge("net2_aux2", "net1_aux1", 1.0),
        Edge("net1_aux2", "net1_logits", 3.0),
    ]
    assert all(isinstance(e.weight, float) for e in edges)


def test_edge_arrays_index_flat_heads():
    flat = [f"net{k}_{h}" for k in (1, 2) for h in THREE]
    edges = [Edge("net2_aux1", "net1_logits", 0.25), Edge("net1_aux2", "net2_logits", 4.0)]
    students, teachers, weights = connections.edge_arrays(edges, flat)
    assert [flat[i] for i in students] == ["net2_aux1", "net1_aux2"]
    assert [flat[i] for i in teachers] == ["net1_logits", "net2_logits"]
    np.testing.assert_array_equal(weights, np.array([0.25, 4.0], np.float32))


def test_unknown_head_lists_valid_heads():
    with pytest.raises(ValueError, match="'net3_logits', which does not exist") as info:
        connections.resolve([("net1_logits", "net3_logits")], [THREE, THREE])
    for head in ["net1_aux1", "net1_aux2", "net1_logits", "net2_aux1", "net2_logits"]:
        assert head in str(info.value)
    with pytest.raises(ValueError, match="'net2_aux1', which does not exist"):
        connections.resolve([("net2_aux1", "net1_logits")], [THREE, ["logits"]])


@pytest.mark.parametrize("edges,match", [
    ([("net1_logits", "net1_logits")], "connects a head to itself"),
    ([("net1_logits", "net2_logits"), ("net1_logits", "net2_logits", 2.0)], "listed twice"),
    ([("net1_logits", "net2_logits", -1.0)], "weights must be finite and >= 0"),
    ([("net1_logits", "net2_logits", float("nan"))], "weights must be finite and >= 0"),
    ([("net1_logits",)], "Cannot read edge"),
    ([42], "Cannot read edge"),
])
def test_bad_explicit_edges(edges, match):
    with pytest.raises(ValueError, match=match):
        connections.resolve(edges, [THREE, THREE])


def test_serialize_is_json_and_round_trips():
    explicit = [("net1_logits", "net2_logits", 0.5), Edge("net2_aux1", "net1_aux2"),
                {"student": "net2_logits", "teacher": "net1_logits"}]
    text = json.dumps(connections.serialize(explicit))
    again = connections.resolve(json.loads(text), [THREE, THREE])
    assert again == connections.resolve(explicit, [THREE, THREE])
    assert connections.serialize("same_stage") == "same_stage"

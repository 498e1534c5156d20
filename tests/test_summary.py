"""`DCM.summary()` names the networks and shows heads and edges."""

import pytest

from dcm_keras import DCM, networks

pytestmark = pytest.mark.core  # also run under JAX by `make test` (-m core)


def test_summary_names_networks_heads_and_edges():
    nets = [networks.build("wrn_10_1", 10, input_shape=(8, 8, 3)),
            networks.build("wrn_10_1", 10, input_shape=(8, 8, 3), aux_heads=False)]
    dcm = DCM(nets, connections="dense")
    lines = []
    dcm.summary(print_fn=lines.append)
    text = "\n".join(lines)
    rows = {line.split()[0]: line for line in lines if line.split()[:1] in (["net1"], ["net2"])}
    assert len(rows) == 2 and lines[1].startswith("network")
    assert "aux1, aux2, logits" in rows["net1"] and "aux1" not in rows["net2"]
    assert f"{nets[0].count_params():,}" in rows["net1"]
    assert f"{len(dcm.edges)} KL edges between 4 heads" in text and "connections='dense'" in text
    assert len(dcm.edges) == 6  # 3 heads <-> 1 head, both ways

"""`DCM.summary()` names the networks and shows heads and edges."""

import pytest

from dcm_keras import DCM, networks

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)


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


def test_summary_separates_deployable_parameters_from_the_dcm_state():
    """The total counts the DCM's non-trainable kd_scale; the deployable line does not."""
    nets = [networks.build("wrn_10_1", 10, input_shape=(8, 8, 3)) for _ in range(2)]
    dcm = DCM(nets)
    lines = []
    dcm.summary(print_fn=lines.append)
    shipped = [dcm.export_network(k).count_params() for k in range(2)]
    in_networks = sum(net.count_params() for net in nets)
    total = in_networks + 1  # + kd_scale
    assert dcm.count_params() == total
    assert lines[-2].startswith(f"Total params: {total:,} (") and \
        f"the networks' {in_networks:,} with their auxiliary heads, and the DCM's own 1 " \
        "(kd_scale)" in lines[-2]
    assert lines[-1] == (f"Deployable params (final head only, as export_network ships): "
                         f"{sum(shipped):,} (net1 {shipped[0]:,}, net2 {shipped[1]:,})")
    assert shipped[0] < nets[0].count_params()  # the auxiliary heads are not shipped

"""The registry: names, families, errors, and registering a builder (the contract every family
honours is in test_contract.py)."""

import ast
import pathlib

import pytest

from dcm_keras import networks
from dcm_keras.networks import registry


def test_list_networks_has_every_family():
    names = networks.list_networks()
    for expected in ["mobilenet", "resnet20", "resnet32", "resnet56", "resnet110", "resnet18",
                     "resnet34", "resnet50", "wrn_D_K", "keras:NAME"]:
        assert expected in names
    # Exact names first (sorted), then the parametrised families.
    assert names[-2:] == ["wrn_D_K", "keras:NAME"] and names[:-2] == sorted(names[:-2])


def test_families_and_their_members():
    assert networks.list_families() == ["cifar_resnet", "keras", "mobilenet", "resnet", "wrn"]
    # Registration order, smallest first, so the representative is the cheapest member.
    assert networks.list_networks("cifar_resnet") == ["resnet20", "resnet32", "resnet56",
                                                      "resnet110"]
    assert networks.list_networks("resnet") == ["resnet18", "resnet34", "resnet50"]
    assert [networks.representative(f) for f in networks.list_families()] == [
        "resnet20", "keras:MobileNet", "mobilenet", "resnet18", "wrn_10_1"]
    assert networks.family_of("wrn_28_10") == "wrn"
    assert networks.family_of("keras:ResNet50V2") == "keras"
    assert networks.family_of("resnet56") == "cifar_resnet"
    with pytest.raises(ValueError, match="Unknown network family 'vit'.*cifar_resnet"):
        networks.representative("vit")


def test_unknown_name_lists_valid_names():
    for call in (lambda: networks.build("resnet21", num_classes=10),
                 lambda: networks.family_of("resnet21")):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "resnet21" in message
        for expected in ["mobilenet", "wrn_D_K", "resnet56", "resnet50", "keras:NAME"]:
            assert expected in message


def test_name_must_be_a_string():
    with pytest.raises(TypeError):
        networks.build(56, num_classes=10)


@pytest.mark.parametrize("name", ["wrn_15_2", "wrn_6_2", "wrn_28_0"])
def test_bad_wrn_depth_or_width(name):
    with pytest.raises(ValueError, match="WRN"):
        networks.build(name, num_classes=10)


def test_negative_weight_decay_rejected():
    with pytest.raises(ValueError, match="weight_decay"):
        networks.build("resnet20", num_classes=10, weight_decay=-1e-4)


def test_register_network_keeps_the_named_builder(monkeypatch):
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))  # undone after the test
    calls = []

    @networks.register_network("tiny_mobilenet", family="tiny")
    def tiny_mobilenet(**kwargs):
        calls.append(kwargs)
        return "exact"

    @networks.register_network("tiny_N", family="tiny", regex=r"tiny_(\d+)", example="tiny_3")
    def tiny(match, **kwargs):
        return f"pattern {match.group(1)}"

    assert tiny_mobilenet.__name__ == "tiny_mobilenet"  # returned unchanged
    assert networks.build("tiny_mobilenet", 7, (8, 8, 1), aux_heads=False, seed=1) == "exact"
    assert calls == [dict(num_classes=7, input_shape=(8, 8, 1), aux_heads=False, seed=1)]
    assert networks.build("tiny_12", 7) == "pattern 12"
    assert networks.list_networks("tiny") == ["tiny_mobilenet", "tiny_N"]
    assert "tiny" in networks.list_families()
    assert networks.representative("tiny") == "tiny_mobilenet"
    # The plain register(name, builder) form: the name is its own family.
    networks.register("plain", tiny_mobilenet)
    assert networks.family_of("plain") == "plain"
    with pytest.raises(ValueError, match="does not match"):
        networks.register_pattern(r"tiny_(\d+)", "tiny_M", tiny, family="tiny", example="tiny")


def test_family_modules_do_not_import_the_package_back():
    # The package imports the families to fill the registry; a family importing the package
    # (`from dcm_keras import networks`) would be a cycle. They import `registry` instead.
    package = pathlib.Path(networks.__file__).parent
    for path in package.glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert "dcm_keras.networks" not in names, f"{path.name} imports the package"
    assert networks.build is registry.build

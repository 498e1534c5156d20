"""ResNets: torchvision's parameter counts, counts derived by hand, and the head structure.

The smallest member of each family (resnet20, resnet18) has its counts checked, with the contract
every family honours, in test_contract.py; the literals there are pinned to the arithmetic here.
"""

import json

import numpy as np
import pytest

from dcm_keras import networks
from dcm_keras.networks.resnet import CifarResNet, ResNet

IMAGENET_INPUT = (64, 64, 3)  # parameter counts do not depend on the input size


def _trainable(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# Independent arithmetic for the expected counts: conv kernels (no bias), BN scale and offset.
def _conv(k, cin, cout):
    return k * k * cin * cout


def _bn(c):
    return 2 * c


def _stage_params(cin, width, blocks, stride, bottleneck):
    total = 0
    for i in range(blocks):
        s = stride if i == 0 else 1
        if bottleneck:
            cout = 4 * width
            total += (_conv(1, cin, width) + _bn(width) + _conv(3, width, width) + _bn(width)
                      + _conv(1, width, cout) + _bn(cout))
        else:
            cout = width
            total += _conv(3, cin, width) + _bn(width) + _conv(3, width, width) + _bn(width)
        if s != 1 or cin != cout:
            total += _conv(1, cin, cout) + _bn(cout)
        cin = cout
    return total, cin


def _dense(cin, classes):
    return cin * classes + classes


def _expected_cifar(depth, classes, heads):
    n = (depth - 2) // 6
    total = _conv(3, 3, 16) + _bn(16)
    p1, c1 = _stage_params(16, 16, n, 1, False)
    p2, c2 = _stage_params(c1, 32, n, 2, False)
    p3, c3 = _stage_params(c2, 64, n, 2, False)
    total += p1 + p2 + p3 + _dense(c3, classes)
    if heads:
        a, ca = _stage_params(c1, 32, n, 2, False)
        b, cb = _stage_params(ca, 64, max(n // 2, 1), 2, False)
        c, cc = _stage_params(c2, 128, n, 2, False)
        total += a + b + _dense(cb, classes) + c + _dense(cc, classes)
    return total


def _expected_imagenet(counts, bottleneck, classes, heads):
    widths = (64, 128, 256, 512)
    total = _conv(7, 3, 64) + _bn(64)
    cin, outs = 64, []
    for i, (w, b) in enumerate(zip(widths, counts)):
        p, cin = _stage_params(cin, w, b, 1 if i == 0 else 2, bottleneck)
        total += p
        outs.append(cin)
    total += _dense(cin, classes)
    if heads:
        a, ca = _stage_params(outs[1], 256, counts[2], 2, bottleneck)
        b, cb = _stage_params(ca, 512, max(counts[3] // 2, 1), 2, bottleneck)
        c, cc = _stage_params(outs[2], 512, counts[3], 2, bottleneck)
        total += a + b + _dense(cb, classes) + c + _dense(cc, classes)
    return total


TORCHVISION = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
SPECS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
         "resnet50": ((3, 4, 6, 3), True)}


@pytest.fixture(scope="module")
def resnet50():
    return networks.build("resnet50", num_classes=1000, input_shape=IMAGENET_INPUT)


@pytest.fixture
def resnet56(built_network):
    return built_network("resnet56", 100, (32, 32, 3))


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_imagenet_arithmetic_matches_torchvision(name):
    assert _expected_imagenet(*SPECS[name], 1000, False) == TORCHVISION[name]


@pytest.mark.parametrize("name", ["resnet34", "resnet50"])  # resnet18: test_contract.py
def test_imagenet_counts_match_torchvision(name):
    model = networks.build(name, num_classes=1000, input_shape=IMAGENET_INPUT, aux_heads=False)
    assert isinstance(model, ResNet) and model.name == name
    assert _trainable(model) == TORCHVISION[name]


def test_imagenet_head_counts(resnet50):
    assert _trainable(resnet50) == _expected_imagenet(*SPECS["resnet50"], 1000, True)


@pytest.mark.parametrize("depth", [32, 56, 110])  # resnet20: test_contract.py
def test_cifar_counts(built_network, depth):
    for heads in (False, True):
        model = built_network(f"resnet{depth}", 100, (32, 32, 3), heads)  # resnet56: shared
        assert isinstance(model, CifarResNet) and model.name == f"resnet{depth}"
        assert _trainable(model) == _expected_cifar(depth, 100, heads)


def test_counts_literal():
    # Pinned so a change in the arithmetic above cannot hide a change in the model; the same
    # literals are the models' counts in test_contract.py.
    assert _expected_cifar(20, 100, False) == 278_324
    assert _expected_cifar(20, 100, True) == 1_187_132
    assert _expected_imagenet(*SPECS["resnet18"], 1000, True) == 26_882_040


def test_cifar_head_structure(resnet56):
    model = resnet56
    names = {layer.name for layer in model.layers}
    # n = 9: aux1 runs 9 blocks of stage 2 and 4 of stage 3; aux2 runs 9 blocks at width 128.
    assert model.get_layer("aux1_stage2_block9_out").output.shape == (None, 16, 16, 32)
    assert model.get_layer("aux1_stage3_block4_out").output.shape == (None, 8, 8, 64)
    assert "aux1_stage3_block5_out" not in names
    assert model.get_layer("aux2_stage3_block9_out").output.shape == (None, 8, 8, 128)
    assert model.get_layer("stage3_block9_out").output.shape == (None, 8, 8, 64)
    # Option B: projection (1x1 conv + BN) only where the shape changes.
    assert "stage1_block1_shortcut_conv" not in names
    assert model.get_layer("stage2_block1_shortcut_conv").strides == (2, 2)
    assert "stage2_block1_shortcut_bn" in names and "stage2_block2_shortcut_conv" not in names
    for prefix in ["aux1", "aux2", "logits"]:
        assert f"{prefix}_bn" not in names  # post-activation: pool the block output directly
        assert model.get_layer(prefix).units == 100


def test_resnet20_smallest_heads(built_network):
    model = built_network("resnet20", 100)  # n = 3, so aux1's stage 3 has 1 block
    names = {layer.name for layer in model.layers}
    assert "aux1_stage3_block1_out" in names and "aux1_stage3_block2_out" not in names


def test_imagenet_head_structure(resnet50):
    model = resnet50
    names = {layer.name for layer in model.layers}
    assert model.get_layer("stem_conv").kernel_size == (7, 7)
    assert model.get_layer("stem_conv").strides == (2, 2)
    assert model.get_layer("stem_pool").output.shape == (None, 16, 16, 64)
    assert model.get_layer("stage1_block1_shortcut_conv").strides == (1, 1)  # 64 -> 256
    assert model.get_layer("stage2_block1_conv2").strides == (2, 2)  # stride on the 3x3 (v1.5)
    assert model.get_layer("stage2_block3_out").output.shape == (None, 8, 8, 512)
    # aux1: full stage 3 copy (6 blocks) + stage 4 copy with 3 // 2 = 1 block.
    assert model.get_layer("aux1_stage3_block6_out").output.shape == (None, 4, 4, 1024)
    assert model.get_layer("aux1_stage4_block1_out").output.shape == (None, 2, 2, 2048)
    assert "aux1_stage4_block2_out" not in names
    # aux2: full stage 4 copy at the same width.
    assert model.get_layer("aux2_stage4_block3_out").output.shape == (None, 2, 2, 2048)
    assert "aux2_stage4_block4_out" not in names
    out = model(np.zeros((1,) + IMAGENET_INPUT, "float32"), training=False)
    assert list(out) == ["aux1", "aux2", "logits"]
    assert all(tuple(v.shape) == (1, 1000) for v in out.values())


@pytest.mark.parametrize("input_shape", [(32, 32, 3), (50, 70, 3)])
def test_imagenet_resnet_any_input_size(input_shape):
    model = ResNet(block_counts=(1, 1, 1, 1), num_classes=10, input_shape=input_shape,
                   aux_heads=False)
    assert model.name == "resnet10"
    out = model(np.zeros((2,) + input_shape, "float32"), training=False)
    assert tuple(out["logits"].shape) == (2, 10)


def test_configurable_resnet_config_round_trip():
    model = ResNet(block_counts=(1, 2, 1, 1), bottleneck=True, num_classes=10,
                   input_shape=(32, 32, 3), aux_heads=False, weight_decay=1e-4)
    assert model.name == "resnet17"
    config = json.loads(json.dumps(model.get_config()))
    assert config["block_counts"] == [1, 2, 1, 1] and config["bottleneck"] is True
    clone = ResNet.from_config(config)
    assert clone.block_counts == (1, 2, 1, 1) and clone.weight_decay == 1e-4
    assert [layer.name for layer in clone.layers] == [layer.name for layer in model.layers]
    assert _trainable(clone) == _trainable(model)


@pytest.mark.parametrize("depth", [19, 21, 2, 0, 20.0, True])
def test_bad_cifar_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        CifarResNet(depth=depth, num_classes=10)


@pytest.mark.parametrize("counts", [(2, 2, 2), (2, 2, 2, 0), (2, 2, 2, 2, 2), (2, 2, 2, 2.0)])
def test_bad_block_counts(counts):
    with pytest.raises(ValueError, match="block_counts"):
        ResNet(block_counts=counts, num_classes=10)

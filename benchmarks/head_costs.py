"""Parameters and FLOPs of the auxiliary head kinds of `networks.attach_heads` (README table).

    .venv/bin/python -m benchmarks.head_costs            # prints two Markdown tables

FLOPs: forward, 2 x the multiply-adds of every convolution and dense layer, per image. The four
keras.applications models are counted at their ImageNet shape (224x224x3, 1000 classes), built
with `weights=None`; nothing is trained or downloaded.
"""

from __future__ import annotations

import numpy as np

APPS = ("ResNet50V2", "MobileNetV3Small", "EfficientNetB0", "ConvNeXtTiny")
KINDS = ("replica", "replica_half", "light")


def _flops(layers) -> int:
    import keras

    total = 0
    for layer in layers:
        if isinstance(layer, keras.Model):
            total += _flops(layer.layers)
            continue
        kernel = getattr(layer, "kernel", None)
        if kernel is None or not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense,
                                                    keras.layers.DepthwiseConv2D)):
            continue
        out = layer._inbound_nodes[0].outputs[0].shape  # the layer's first (own) call
        positions = int(np.prod(out[1:-1])) if len(out) > 2 else 1
        total += 2 * int(np.prod(kernel.shape)) * positions
    return total


def _params(layers) -> int:
    return sum(int(np.prod(w.shape)) for layer in layers for w in layer.trainable_weights)


def _app(name: str):
    import keras

    fn = getattr(keras.applications, name)
    extra = {"include_preprocessing": False} if name in ("MobileNetV3Small", "ConvNeXtTiny") else {}
    return fn(weights=None, input_shape=(224, 224, 3), classes=1000,
              classifier_activation=None, **extra)


def head_costs(base, **attach) -> dict:
    """Parameter and FLOP counts of `base` and of each head `attach_heads(base, **attach)` adds."""
    from dcm_keras import networks

    net = networks.attach_heads(base, **attach)
    row = {"branch_points": net.branch_points, "base": (_params(base.layers),
                                                        _flops(base.layers))}
    for k in range(1, len(net.branch_points) + 1):
        head = [layer for layer in net.layers
                if layer.name == f"aux{k}" or layer.name.startswith(f"aux{k}_")]
        row[f"aux{k}"] = (_params(head), _flops(head))
    return row


def main() -> None:
    from dcm_keras import networks

    print("| model | branch points ('auto') | network: params / MFLOPs | head | aux1 params / "
          "MFLOPs | aux2 params / MFLOPs | heads / network params | heads / network FLOPs |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for name in APPS:
        base = _app(name)
        for kind in KINDS:
            row = head_costs(base, head=kind)
            (p, f), heads = row["base"], [row["aux1"], row["aux2"]]
            cells = [f"{hp:,} / {hf / 1e6:,.0f}" for hp, hf in heads]
            print(f"| {name} | {', '.join(row['branch_points'])} | {p:,} / {f / 1e6:,.0f} | {kind} "
                  f"| {' | '.join(cells)} | {sum(h[0] for h in heads) / p:.2f} "
                  f"| {sum(h[1] for h in heads) / f:.2f} |")
    print()
    print("| wrn_16_2, 100 classes, 32x32 | params with heads | aux1 params | aux2 params | "
          "MFLOPs with heads |")
    print("|---|---:|---:|---:|---:|")
    paper = networks.build("wrn_16_2", 100)
    split = {k: [l for l in paper.layers if l.name == k or l.name.startswith(f"{k}_")]
             for k in ("aux1", "aux2")}
    print(f"| paper's heads (networks.build) | {_params(paper.layers):,} | "
          f"{_params(split['aux1']):,} | {_params(split['aux2']):,} | "
          f"{_flops(paper.layers) / 1e6:,.0f} |")
    plain = networks.build("wrn_16_2", 100, aux_heads=False)
    for kind in KINDS:
        row = head_costs(plain, head=kind)
        (p, f), (p1, f1), (p2, f2) = row["base"], row["aux1"], row["aux2"]
        print(f"| attach_heads {kind} | {p + p1 + p2:,} | {p1:,} | {p2:,} | "
              f"{(f + f1 + f2) / 1e6:,.0f} |")


if __name__ == "__main__":
    main()

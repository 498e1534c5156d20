"""The paper's kind of auxiliary heads for any functional Keras classifier.

    base = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None,
        include_preprocessing=False)
    net = dcm_keras.networks.attach_heads(base, weight_decay=5e-4)  # {"aux1", "aux2", "logits"}

The graph is read node by node (nested functional models, e.g. a keras-hub backbone inside its
classifier, are read through). A *branch point* is a layer whose output every path from the input
to the logits goes through, so that the rest of the network depends on that tensor alone: a
residual block's output is one, a layer inside the block is not. `"auto"` takes the stage outputs,
the last branch point at each spatial resolution, skips the final stage and keeps the two deepest:
the paper's two heads per network (after stages 1 and 2 of a 3-stage WRN, 2 and 3 of a ResNet-50).

Head kinds (see README "Your own backbone" for their measured cost):
- `"replica"`: a fresh copy (same layer configs, new weights) of everything from the branch point to
  the logits, the paper's rule. The released WRN code also widens aux2's stage; this does not.
- `"replica_half"`: the copy with half the blocks of each copied stage (`max(n // 2, 1)` of `n`,
  trailing identity-shaped residual blocks dropped; the released code does this for aux1's last
  stage). Where no residual block is found it is the full copy.
- `"light"`: 3x3 conv (stride 2, `min(C, 256)` filters), BN, ReLU, global average pooling, dense.

The main path keeps the model's own layers and weights (copies with the same weights when
`weight_decay` is given), so `DCM.export_network` returns a network with the original's
parameters and outputs.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import keras

from dcm_keras._keras_compat import Functional
from dcm_keras.errors import UserError
from dcm_keras.networks.common import BN_EPSILON, BN_MOMENTUM
from dcm_keras.networks.weight_decay import l2_config, with_weight_decay

HEAD_KINDS = ("replica", "replica_half", "light")
_SQUASHING = ("softmax", "sigmoid", "log_softmax")


class _Graph:
    """A functional model as one flat, topologically ordered list of (operation, node) steps."""

    def __init__(self, model: keras.Model):
        self.steps: List[Tuple[object, object]] = []
        self.alias: Dict[int, int] = {}  # tensor id inside a nested model -> id outside
        self._add(model)
        self.input, self.output = model.inputs[0], model.outputs[0]
        self.consumers: Dict[int, List[int]] = {}
        for p, (_, node) in enumerate(self.steps):
            for t in node.input_tensors:
                self.consumers.setdefault(self.id(t), []).append(p)

    def id(self, tensor) -> int:
        i = id(tensor)
        while i in self.alias:
            i = self.alias[i]
        return i

    def _add(self, model: keras.Model) -> None:
        # Keras keeps the graph in `_nodes_by_depth` (deepest = nearest the inputs); no public API
        # lists a functional model's nodes in order.
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                op = node.operation
                if node.is_input or op is None:
                    continue
                if isinstance(op, Functional):  # read a nested model's graph in place
                    for inner, outer in zip(op.inputs, node.input_tensors):
                        self.alias[id(inner)] = self.id(outer)
                    self._add(op)
                    for outer, inner in zip(node.outputs, op.outputs):
                        self.alias[id(outer)] = self.id(inner)
                else:
                    self.steps.append((op, node))

    def cuts(self) -> List[int]:
        """Positions of the steps whose single output every later step depends on alone."""
        reach = max(self.consumers.get(self.id(self.input), [-1]))
        cuts = []
        for p, (_, node) in enumerate(self.steps):
            if reach <= p and len(node.outputs) == 1:
                cuts.append(p)
            for t in node.outputs:
                reach = max(reach, *self.consumers.get(self.id(t), [-1]))
        return cuts

    def replay(self, values: Dict[int, object], start: int = 0, rename=None, skip=()):
        """Runs steps `start:` on `values` (tensor id -> tensor); returns the output tensor.

        `rename(op)` gives the operation to call (the op itself by default); `skip` maps a step
        range (first, last) to be bypassed: its last output takes its first input's value.
        """
        bypass = {first: last for first, last in skip}
        p = start
        while p < len(self.steps):
            op, node = self.steps[p]
            if p in bypass:
                last = bypass[p]
                values[self.id(self.steps[last][1].outputs[0])] = values[
                    self.id(node.input_tensors[0])]
                p = last + 1
                continue
            fill = lambda x: values[self.id(x)] if isinstance(x, keras.KerasTensor) else x
            args = keras.tree.map_structure(fill, node.arguments.args)
            kwargs = keras.tree.map_structure(fill, node.arguments.kwargs)
            out = (rename(op) if rename else op)(*args, **kwargs)
            for t, v in zip(node.outputs, keras.tree.flatten(out)):
                values[self.id(t)] = v
            p += 1
        return values[self.id(self.output)]

    def name(self, p: int) -> str:
        return self.steps[p][0].name

    def shape(self, p: int) -> tuple:
        return tuple(self.steps[p][1].outputs[0].shape)


def _stage_outputs(graph: _Graph) -> List[int]:
    """The last cut at each spatial resolution (a merge if any), the final stage's excluded.

    Padding layers are passed over: they grow the resolution just before a strided layer. So is
    what follows a global pooling: MobileNetV3's 1x1 classifier convolutions are no stage.
    """
    pools = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
    cuts = graph.cuts()  # a pooling inside a block (squeeze-excitation) is not one
    pooled = [p for p in cuts if isinstance(graph.steps[p][0], pools)]
    spatial = [(p, graph.shape(p)[1:3]) for p in cuts if len(graph.shape(p)) == 4
               and not isinstance(graph.steps[p][0], keras.layers.ZeroPadding2D)
               and p < min(pooled, default=len(graph.steps))]
    ends, run = [], []
    for (p, size), (_, after) in zip(spatial, spatial[1:]):
        run.append(p)
        if after != size:  # prefer a residual block's output to the next block's expansion
            merged = [q for q in run if len(graph.steps[q][1].input_tensors) > 1]
            ends.append((merged or run)[-1])
            run = []
    return ends


def _squashing(op) -> Optional[str]:
    if isinstance(op, keras.layers.Softmax):
        return "softmax"
    activation = getattr(op, "activation", None)
    name = getattr(activation, "__name__", str(activation))
    return name if name in _SQUASHING else None


def _check_model(model) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise TypeError(f"attach_heads needs a keras.Model, got {type(model).__name__}.")
    if isinstance(model, keras.Sequential):
        if not model.built:
            raise UserError(f"Sequential model {model.name!r} is not built; give it an Input.")
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    if not isinstance(model, Functional):
        raise UserError(
            f"Model {model.name!r} is a subclassed model ({type(model).__name__}); its layer "
            "graph cannot be read. attach_heads needs a functional model "
            "(keras.Model(inputs, outputs), keras.applications, keras-hub).")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(
            f"Model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs; attach_heads needs one image input and one logits output (a model that "
            "already has heads cannot get more).")
    if len(model.inputs[0].shape) != 4 or len(model.outputs[0].shape) != 2:
        raise UserError(
            f"Model {model.name!r} maps {tuple(model.inputs[0].shape)} to "
            f"{tuple(model.outputs[0].shape)}; attach_heads needs images (batch, H, W, C) to "
            "logits (batch, classes).")
    return model


@keras.saving.register_keras_serializable(package="dcm_keras")
class HeadedModel(keras.Model):
    """A classifier with auxiliary heads: outputs `{"aux1", ..., "logits"}`. See `attach_heads`.

    Its config holds the base model's config and the head choices, so it saves to `.keras`, loads
    back with `safe_mode=True` and clones like any registered model.
    """

    def __init__(self, base, branch_points: Union[str, Sequence[str]] = "auto",
                 head: str = "replica", weight_decay: Optional[float] = None,
                 strip_activation: bool = False, **kwargs):
        if isinstance(base, dict):
            base = keras.saving.deserialize_keras_object(copy.deepcopy(base))
        base = _check_model(base)
        if head not in HEAD_KINDS:
            raise UserError(f"Unknown head {head!r}. Valid heads: {', '.join(HEAD_KINDS)}.")
        if weight_decay is not None:
            base = with_weight_decay(base, weight_decay)
        graph = _Graph(base)
        last_op = graph.steps[-1][0]
        squash = _squashing(last_op)
        rename = None
        if squash and not strip_activation:
            raise UserError(
                f"Model {base.name!r} ends in a {squash} ({last_op.name!r}); DCM needs logits. "
                "Build it with classifier_activation=None (keras.applications) or "
                "activation=None (keras-hub), or pass strip_activation=True.")
        if squash and isinstance(last_op, (keras.layers.Activation, keras.layers.Softmax)):
            graph.output = graph.steps[-1][1].input_tensors[0]
            graph.steps.pop()
        elif squash:
            linear = type(last_op).from_config({**last_op.get_config(), "activation": "linear"})
            rename = lambda op: linear if op is last_op else op  # noqa: E731
        points = self._resolve(graph, branch_points, base.name)

        values = {graph.id(graph.input): base.inputs[0]}
        logits = graph.replay(values, rename=rename)
        if rename is not None:
            linear.set_weights(last_op.get_weights())
        outputs, chosen = {}, []
        for k, p in enumerate(points, start=1):
            prefix, branch = f"aux{k}", values[graph.id(graph.steps[p][1].outputs[0])]
            if head == "light":
                outputs[prefix] = _light_head(branch, int(logits.shape[-1]), prefix, weight_decay)
            else:
                skip = _half_skips(graph, p) if head == "replica_half" else ()
                fresh = lambda op, prefix=prefix: _fresh(op, prefix)  # noqa: E731
                outputs[prefix] = graph.replay(dict(values), p + 1, fresh, skip)
            chosen.append(graph.name(p))
        outputs["logits"] = logits
        kwargs.setdefault("name", base.name)
        super().__init__(inputs=base.inputs[0], outputs=outputs, **kwargs)
        self.branch_points = chosen
        self.head = head
        self.weight_decay = weight_decay
        self.strip_activation = strip_activation
        self._base_config = keras.saving.serialize_keras_object(base)
        self._auto = branch_points == "auto"
        self._branch_shapes = [graph.shape(p)[1:] for p in points]

    @staticmethod
    def _resolve(graph: _Graph, branch_points, model_name: str) -> List[int]:
        stages = _stage_outputs(graph)
        listed = ", ".join(repr(graph.name(p)) for p in stages) or "none found"
        if branch_points == "auto":
            if not stages:
                raise UserError(f"Model {model_name!r}: no stage output found before the final "
                                "stage (no drop of spatial resolution); give branch_points.")
            return stages[-2:]
        if isinstance(branch_points, str) or not all(isinstance(n, str) for n in branch_points):
            raise UserError(f"branch_points must be 'auto' or a list of layer names, got "
                            f"{branch_points!r}. Stage outputs of {model_name!r}: {listed}.")
        by_name = {graph.name(p): p for p in range(len(graph.steps))}
        cuts = set(graph.cuts()[:-1])
        points = []
        for name in branch_points:
            if name not in by_name:
                raise UserError(f"Model {model_name!r} has no layer named {name!r}. "
                                f"Its stage outputs (what 'auto' chooses from): {listed}.")
            if by_name[name] not in cuts:
                raise UserError(
                    f"Layer {name!r} of {model_name!r} is not a branch point: the layers after "
                    "it also read earlier tensors (e.g. it is inside a residual block) or it is "
                    f"the output. Branch after a block's output; stage outputs: {listed}.")
            points.append(by_name[name])
        if points != sorted(set(points)):
            raise UserError(f"branch_points must be distinct and ordered shallow to deep, got "
                            f"{list(branch_points)}.")
        return points

    def summary(self, *args, **kwargs):
        super().summary(*args, **kwargs)
        print_fn = kwargs.get("print_fn") or print
        how = "'auto'" if self._auto else "given"
        heads = "; ".join(f"aux{k} after {name!r} {tuple(shape)}" for k, (name, shape)
                          in enumerate(zip(self.branch_points, self._branch_shapes), start=1))
        print_fn(f"Auxiliary heads ({self.head!r}, branch points {how}): {heads or 'none'}")

    def get_config(self):
        # The chosen layers, not "auto": a file reloads with the same heads even if a later
        # version of the "auto" rule would choose others.
        return {"name": self.name, "trainable": self.trainable, "base": self._base_config,
                "branch_points": list(self.branch_points), "auto_branch_points": self._auto,
                "head": self.head, "weight_decay": self.weight_decay,
                "strip_activation": self.strip_activation}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        auto = config.pop("auto_branch_points", False)
        model = cls(**config)
        model._auto = auto
        return model

    def with_weight_decay(self, weight_decay: float) -> "HeadedModel":
        """A new HeadedModel (fresh weights) whose base and heads carry `weight_decay`."""
        return type(self).from_config({**self.get_config(), "weight_decay": weight_decay})


def _fresh(op, prefix: str):
    """A new operation with `op`'s config and fresh weights, named `{prefix}_{op.name}`."""
    config = op.get_config()
    config["name"] = f"{prefix}_{op.name}"  # also for plain ops (ConvNeXt's `x + y`)
    return type(op).from_config(config)


def _half_skips(graph: _Graph, p: int) -> List[Tuple[int, int]]:
    """Step ranges of the residual blocks that `replica_half` drops after branch point `p`."""
    cuts = [c for c in graph.cuts() if c >= p]
    blocks = []  # (first step, last step, resolution, droppable)
    for a, b in zip(cuts, cuts[1:]):
        merges = any(len(graph.steps[q][1].input_tensors) > 1 for q in range(a + 1, b + 1))
        same = graph.shape(a) == graph.shape(b) and len(graph.shape(b)) == 4
        blocks.append((a + 1, b, graph.shape(b)[1:3], merges and same))
    skips, stage = [], []
    for i, block in enumerate(blocks):
        stage.append(block)
        if i + 1 == len(blocks) or blocks[i + 1][2] != block[2]:
            droppable = [(first, last) for first, last, _, ok in stage if ok]
            n = len(droppable) + (len(droppable) < len(stage))
            drop = min(len(droppable), n - max(n // 2, 1))
            skips += droppable[len(droppable) - drop:]
            stage = []
    return skips


def _light_head(x, num_classes: int, prefix: str, weight_decay: Optional[float]):
    reg = l2_config(weight_decay)
    filters = min(int(x.shape[-1]), 256)
    x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                            kernel_initializer="he_normal", kernel_regularizer=reg,
                            name=f"{prefix}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                        gamma_regularizer=reg, beta_regularizer=reg,
                                        name=f"{prefix}_bn")(x)
    x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{prefix}_pool")(x)
    return keras.layers.Dense(num_classes, kernel_initializer="he_normal", kernel_regularizer=reg,
                              bias_regularizer=reg, name=prefix)(x)


def attach_heads(model: keras.Model, branch_points: Union[str, Sequence[str]] = "auto",
                 head: str = "replica", weight_decay: Optional[float] = None,
                 name: Optional[str] = None, strip_activation: bool = False) -> HeadedModel:
    """Gives a functional classifier the paper's kind of auxiliary heads, ready for `DCM`.

    Args:
        model: a functional model from one image input to one logits output.
        branch_points: layer names, shallow to deep, after which heads branch, or `"auto"`
            (the two deepest stage outputs before the final stage).
        head: `"replica"`, `"replica_half"` or `"light"` (see the module docstring).
        weight_decay: coupled L2 on every trainable weight, kept in the layer configs (see
            `with_weight_decay`); None leaves the model's own regularizers.
        name: the result's name (default: the model's).
        strip_activation: accept a model ending in softmax/sigmoid and drop that activation.

    Returns:
        A `HeadedModel` with outputs `{"aux1", ..., "logits"}`.
    """
    kwargs = {"name": name} if name else {}
    return HeadedModel(model, branch_points, head, weight_decay, strip_activation, **kwargs)

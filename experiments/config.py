"""The typed configuration of one training run of `experiments.train`, and its value checks.

`TrainConfig` holds the run flags, one field per flag. The recorded ones (`RUN_FLAGS`, in the
order train.py defines them) are what `flags.json` records and what a resume compares; the
operational ones (`OPERATIONAL_FLAGS`, e.g. `--backup_every`) change how a run is carried out,
never its results, so they are not recorded: a resume may change them. A comparison config's
`train_flags` may set either kind (less what compare.py sets per run). `to_json()` gives exactly
the dict `flags.json` has always held, so earlier runs still resume and compare.py still reads
them.

Kept free of TensorFlow imports, like `experiments.common`: compare.py reads it without paying
for them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Dict, List, Mapping, Optional, Tuple, Union

from experiments.common import METHODS, UserError
from experiments.rundir import files

# Field metadata key: False for a flag that flags.json does not record (an operational flag).
_RECORDED = "recorded"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One run's flags, as parsed by absl (see experiments/train.py for what each means)."""

    method: str
    connections: Optional[str]
    nets: Tuple[str, ...]
    dataset: str
    data_dir: Optional[str]
    image_size: Optional[int]
    epochs: int
    batch_size: int
    lr: float
    lr_boundaries: Tuple[str, ...]  # the flag's text: flags.json records strings, e.g. ["60"]
    lr_decay: float
    momentum: float
    weight_decay: float
    temperature: float
    kd_weight: float
    kd_warmup_epochs: int
    ce_normalization: str
    kd_normalization: str
    precision: str
    jit_compile: bool
    distribute: str
    model_dir: str
    seed: int
    deterministic: bool
    max_train_examples: Optional[int]
    max_test_examples: Optional[int]
    eval_every: int
    overwrite: bool
    # Operational flags (not in flags.json; runs recorded before they existed get the default).
    backup_every: int = dataclasses.field(default=1, metadata={_RECORDED: False})

    @classmethod
    def from_flags(cls, flag_values) -> "TrainConfig":
        """The config of parsed absl `flag_values` (train.py's `FLAGS`)."""
        return cls.from_json({name: flag_values[name].value
                              for name in RUN_FLAGS + OPERATIONAL_FLAGS})

    @classmethod
    def from_json(cls, values: Mapping[str, object]) -> "TrainConfig":
        """The config that `to_json()` (a `flags.json`) holds, optionally with operational flags;
        UserError if a recorded flag is missing or a flag is unknown."""
        missing = [name for name in RUN_FLAGS if name not in values]
        unknown = [name for name in values if name not in RUN_FLAGS + OPERATIONAL_FLAGS]
        if missing or unknown:
            raise UserError("Not a complete set of experiments.train flags: "
                            + "; ".join(f"{what} {', '.join(names)}" for what, names in
                                        (("missing", missing), ("unknown", unknown)) if names)
                            + ".")
        return cls(**{name: tuple(value) if name in _SEQUENCES and value is not None else value
                      for name, value in values.items()})

    def to_json(self) -> Dict[str, object]:
        """The JSON-ready dict of every flag, in definition order: what flags.json holds."""
        return {name: list(value) if name in _SEQUENCES and value is not None else value
                for name, value in ((f, getattr(self, f)) for f in RUN_FLAGS)}

    @property
    def aux_heads(self) -> bool:
        """Whether `--method` trains the networks with auxiliary heads."""
        return METHODS[self.method][0]

    @property
    def distillation(self) -> Union[str, List]:
        """The distillation graph: `--connections` (a preset or edges), else the method's preset."""
        if self.connections is None:
            return METHODS[self.method][1]
        return parse_connections(self.connections)

    @property
    def boundaries(self) -> List[int]:
        """`--lr_boundaries` as epochs."""
        return parse_boundaries(list(self.lr_boundaries))

    def learning_rate(self, epoch: int) -> float:
        """The paper's step schedule: `lr * lr_decay ** (number of boundaries <= epoch)`."""
        return self.lr * self.lr_decay ** sum(epoch >= b for b in self.boundaries)


# The recorded run flags of experiments/train.py (flags.json's keys), in definition order.
RUN_FLAGS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig)
                                   if f.metadata.get(_RECORDED, True))
# The run flags that do not change results: not recorded, and a resume may change them.
OPERATIONAL_FLAGS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig)
                                           if f.name not in RUN_FLAGS)
# Fields held as tuples (the config is frozen) that flags.json records as lists.
_SEQUENCES = ("nets", "lr_boundaries")


def parse_json(text: str, what: str):
    """`text` parsed as JSON; a UserError naming `what` and the position when it is not."""
    try:
        return files.parse_json(text)
    except files.DamagedJSON as e:
        raise UserError(f"{what} is not valid JSON ({e}).") from None


def parse_connections(text: Optional[str]):
    """`--connections` as a preset name or a list of edges; raises UserError when unreadable."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("["):
        edges = parse_json(text, "--connections")
        if not isinstance(edges, list):
            raise UserError("--connections JSON must be a list of [student, teacher, weight].")
        for k, edge in enumerate(edges):
            _check_edge(edge, k)
        return edges
    from dcm_keras.connections import PRESETS  # imports TensorFlow: only when needed

    if text not in PRESETS:
        raise UserError(f"Unknown --connections {text!r}. Valid: {', '.join(PRESETS)}, or a "
                        "JSON list of [student, teacher, weight] edges.")
    return text


def _check_edge(edge, k: int) -> None:
    """Refuses an edge of `--connections` JSON that is not [student, teacher(, weight)]."""
    where = f"--connections edge {k + 1} ({json.dumps(edge)})"
    if isinstance(edge, dict):
        unknown = sorted(set(edge) - {"student", "teacher", "weight"})
        if unknown or "student" not in edge or "teacher" not in edge:
            raise UserError(f"{where} must have the keys student, teacher and optionally "
                            "weight" + (f", not {', '.join(unknown)}" if unknown else "") + ".")
        edge = [edge["student"], edge["teacher"]] + ([edge["weight"]] if "weight" in edge else [])
    if not isinstance(edge, list) or len(edge) not in (2, 3):
        raise UserError(f"{where} must be [student, teacher] or [student, teacher, weight].")
    if not all(isinstance(head, str) and head for head in edge[:2]):
        raise UserError(f"{where}: student and teacher must be head names such as "
                        "\"net1_logits\".")
    if len(edge) == 3:
        weight = edge[2]
        if (not isinstance(weight, (int, float)) or isinstance(weight, bool)
                or not math.isfinite(weight) or weight < 0):
            raise UserError(f"{where}: the weight must be a finite number >= 0, got "
                            f"{json.dumps(weight)}.")


def parse_boundaries(values: List[str]) -> List[int]:
    """`--lr_boundaries` as strictly increasing positive epochs."""
    try:
        epochs = [int(v) for v in values]
    except ValueError:
        raise UserError(f"--lr_boundaries must be integers (epochs), got {','.join(values)}.")
    if any(e < 1 for e in epochs) or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise UserError("--lr_boundaries must be strictly increasing epochs >= 1, got "
                        f"{','.join(values)}.")
    return epochs


def _is_number(value, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if integer else math.isfinite(value)


# What a flag's JSON value must be, by the field's annotation: (test, description).
_JSON_TYPES = {
    "int": (lambda v: _is_number(v, True), "an integer"),
    "float": (lambda v: _is_number(v, False), "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "Tuple[str, ...]": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(
        isinstance(x, str) or _is_number(x, True) for x in v)),
                        "a list of strings or integers (or one comma-separated string)"),
}


def check_flag_value(name: str, value, where: str) -> None:
    """Refuses a JSON `value` of the wrong type for run flag `name` (a config's train_flags),
    naming `where`, the flag, the value and what it must be."""
    annotation = next(f.type for f in dataclasses.fields(TrainConfig) if f.name == name)
    optional = annotation.startswith("Optional[")
    base = annotation[len("Optional["):-1] if optional else annotation
    test, expected = _JSON_TYPES[base]
    if (value is None and optional) or test(value):
        return
    raise UserError(f"{where} {name!r} is {json.dumps(value)}; it must be {expected}"
                    + (" or null" if optional else "") + ".")


"""The flags of `experiments.train`, each declared once, and the typed config they make.

`TrainConfig` has one field per flag, and each field's metadata (`FlagSpec`, made by `_flag`)
says everything about its flag: the absl kind, default, help, bounds and enum values, its value
checks, whether `flags.json` records it, whether it identifies a run, and whether a comparison
sets it per run. The rest is derived from it:

- `define_flags` registers the absl flags and their validators (train.py calls it once);
- `RUN_FLAGS` (recorded, in definition order) are what `flags.json` records and what a resume
  compares; `OPERATIONAL_FLAGS` (e.g. `--backup_every`) change how a run is carried out, never
  its results, so they are not recorded and a resume may change them;
- `identity` and `flag_differences`: the recorded flags that define the experiment (not the ones
  that only locate things: `--model_dir`, `--data_dir`, `--overwrite`), which a resume and a
  backup must match;
- `PER_RUN_FLAGS` (what experiments.compare sets for each run) and `COMPARISON_FLAGS` (the
  others, which a comparison config's `train_flags` may set).

`to_json()` gives exactly the dict `flags.json` has always held, so earlier runs still resume
and compare.py still reads them.

Kept free of TensorFlow and Keras imports, like `experiments.common`: compare.py reads it, and
train.py checks its flags, without paying for them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

from absl import flags

from experiments.common import METHODS, UserError, one_line
from experiments.rundir import files

# The absl flags are defined by `define_flags` on behalf of its caller: help (`--helpshort`)
# lists them as the calling script's own flags, not this module's.
flags.disclaim_key_flags()


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


def _check_nets(nets: List[str]) -> None:
    if len(nets) < 1:
        raise UserError("give at least one network")


# dcm_keras.data.DATASETS, copied: importing dcm_keras starts the backend (a test keeps them equal).
DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagenet2012", "image_folder:PATH")


def _check_dataset(name: str) -> None:
    if not (name in DATASETS[:-1] or (name.startswith("image_folder:") and len(name) > 13)):
        raise UserError(f"valid datasets: {', '.join(DATASETS)}")


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    """Everything about one flag of experiments.train (a `TrainConfig` field's metadata)."""

    kind: str  # the absl kind: enum, string, list, integer, float or bool
    default: object
    help: str
    lower: Optional[float] = None  # absl bounds (integer and float flags)
    upper: Optional[float] = None
    choices: Optional[Tuple[str, ...]] = None  # an enum's values
    recorded: bool = True  # flags.json records it (else it is operational)
    identity: bool = True  # it defines the experiment: a resume must keep it
    finite: bool = False  # refuse nan and inf (absl's bounds let them through)
    per_run: bool = False  # experiments.compare sets it for each run
    required: bool = False
    check: Optional[Callable[[object], object]] = None  # raises UserError for a bad value


_SPEC = "flag"  # the field metadata key


def _flag(kind: str, default, help: str, **spec) -> "dataclasses.Field":
    """A `TrainConfig` field declaring its absl flag (see `FlagSpec` for the keywords)."""
    declared = FlagSpec(kind, default, help, **spec)
    # An operational flag gets a field default: no flags.json holds it.
    extra = {} if declared.recorded else {"default": default}
    return dataclasses.field(metadata={_SPEC: declared}, **extra)


METHOD_HELP = ("baseline: networks alone; dsn: + auxiliary heads (deep supervision); dks: + KD "
               "between heads of one network; dml: KD between final heads; dcm: heads + dense "
               "cross-layer KD; same_stage / cross_stage: DCM's two halves.")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "auto")
STRATEGIES = ("auto", "none", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One run's flags, as parsed by absl; each field's metadata declares its flag."""

    method: str = _flag("enum", "dcm", METHOD_HELP, choices=tuple(METHODS), per_run=True)
    connections: Optional[str] = _flag(
        "string", None, "Overrides the method's distillation graph: a preset (dense, same_stage, "
        "cross_stage, final, dks, none) or a JSON list of [student, teacher, weight] edges over "
        "heads net{k}_{head}, e.g. '[[\"net1_logits\",\"net2_logits\",1]]'.",
        check=parse_connections)
    nets: Tuple[str, ...] = _flag(
        "list", ["wrn_28_10", "wrn_28_10"],
        "Comma-separated networks trained together (see dcm_keras.networks), or "
        "keras.applications classifiers as keras:NAME (e.g. keras:MobileNetV3Small), built from "
        "scratch with the paper's kind of heads (networks.attach_heads).",
        check=_check_nets, per_run=True)
    dataset: str = _flag("string", "cifar100",
                         "cifar10, cifar100, fashion_mnist, imagenet2012 or image_folder:PATH.",
                         check=_check_dataset)
    data_dir: Optional[str] = _flag("string", None,
                                    "Dataset location (tfds data_dir or an IDX folder).",
                                    identity=False)
    image_size: Optional[int] = _flag("integer", None,
                                      "Input size for imagenet2012 and image folders.", lower=1)
    epochs: int = _flag("integer", 200, "Training epochs.", lower=1)
    batch_size: int = _flag("integer", 128, "Global batch size (split over replicas).", lower=1)
    lr: float = _flag("float", 0.1, "Initial learning rate.", lower=0.0, finite=True)
    # The flag's text: flags.json records strings, e.g. ["60"].
    lr_boundaries: Tuple[str, ...] = _flag(
        "list", ["60", "120", "160"],
        "Epochs at which the learning rate is multiplied by --lr_decay.", check=parse_boundaries)
    lr_decay: float = _flag("float", 0.2, "Learning-rate factor at each boundary.", lower=0.0,
                            finite=True)
    momentum: float = _flag("float", 0.9, "SGD momentum (not Nesterov).", lower=0.0, upper=1.0,
                            finite=True)
    weight_decay: float = _flag("float", 5e-4, "Coupled L2 weight decay on every weight.",
                                lower=0.0, finite=True)
    temperature: float = _flag("float", 1.0, "Softmax temperature of the distillation terms.",
                               lower=1e-6, finite=True)
    kd_weight: float = _flag("float", 1.0, "Weight of the whole distillation part.", lower=0.0,
                             finite=True)
    kd_warmup_epochs: int = _flag("integer", 0, "Ramp the distillation weight linearly from 0 "
                                  "over this many epochs (0 = paper).", lower=0)
    ce_normalization: str = _flag(
        "enum", "sum", "sum (paper): add every head's cross-entropy; mean_per_network: average "
        "them within each network.", choices=("sum", "mean_per_network"))
    kd_normalization: str = _flag(
        "enum", "sum", "sum (paper): add every KL edge; mean_per_student: average the edges into "
        "each receiving head.", choices=("sum", "mean_per_student"))
    precision: str = _flag("enum", "float32", "auto: mixed_float16 on GPU, mixed_bfloat16 on a "
                           "CPU with bf16 instructions, else float32.", choices=PRECISIONS)
    jit_compile: bool = _flag("bool", False, "Compile the train step with XLA (TensorFlow "
                              "backend; JAX always compiles it).")
    distribute: str = _flag("enum", "auto", "auto: MirroredStrategy when more than one GPU is "
                            "visible; multi_worker: MultiWorkerMirroredStrategy configured by "
                            "$TF_CONFIG.", choices=STRATEGIES)
    model_dir: str = _flag("string", None, "Run directory (created if needed).", required=True,
                           identity=False, per_run=True)
    seed: int = _flag("integer", 0, "Seed of initialisation, shuffling and augmentation "
                      "(0 to 2**32 - 1).", lower=0, upper=2**32 - 1, per_run=True)
    deterministic: bool = _flag("bool", False, "Also make TensorFlow ops deterministic (slower; "
                                "exact reruns and resumes).")
    max_train_examples: Optional[int] = _flag(
        "integer", None, "Train on N training examples only: the first N of a built-in dataset; "
        "of an image folder, a stratified subset (every class in proportion) drawn with --seed.",
        lower=1)
    max_test_examples: Optional[int] = _flag(
        "integer", None, "Evaluate on N test examples only: the first N of a built-in dataset; "
        "of an image folder, a stratified subset drawn with seed 0 (the same for every run).",
        lower=1)
    eval_every: int = _flag("integer", 1, "Evaluate on the test split every N epochs (and always "
                            "after the last): long runs on small training sets spend most of "
                            "their time evaluating otherwise.", lower=1)
    overwrite: bool = _flag("bool", False, "Replace a run with different flags in --model_dir.",
                            identity=False, per_run=True)
    backup_every: int = _flag(
        "integer", 1, "Write the fault-tolerance backup (weights, optimizer state) every N epochs "
        "and always after the last: a run killed in between resumes from its last backup and "
        "trains up to N-1 epochs again, but runs of many tiny epochs stop spending most of their "
        "time writing checkpoints. Results do not depend on it, so a resume may change it.",
        lower=1, recorded=False, identity=False)

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


# Every flag's declaration, in definition order.
SPECS: Dict[str, FlagSpec] = {f.name: f.metadata[_SPEC] for f in dataclasses.fields(TrainConfig)}
# The recorded run flags (flags.json's keys), in definition order.
RUN_FLAGS: Tuple[str, ...] = tuple(name for name, s in SPECS.items() if s.recorded)
# The run flags that do not change results: not recorded, and a resume may change them.
OPERATIONAL_FLAGS: Tuple[str, ...] = tuple(name for name, s in SPECS.items() if not s.recorded)
# What experiments.compare sets for each run, and the flags a comparison config may set (an
# allow-list: `flagfile`, say, could otherwise point a run at another --model_dir).
PER_RUN_FLAGS: Tuple[str, ...] = tuple(name for name, s in SPECS.items() if s.per_run)
COMPARISON_FLAGS: Tuple[str, ...] = tuple(name for name, s in SPECS.items() if not s.per_run)
# Flags that locate things rather than define the experiment: a resumed run may change them.
NOT_IDENTITY: Tuple[str, ...] = tuple(name for name, s in SPECS.items() if not s.identity)
# Fields held as tuples (the config is frozen) that flags.json records as lists.
_SEQUENCES = tuple(name for name, s in SPECS.items() if s.kind == "list")


def identity(flags_json: Mapping[str, object]) -> dict:
    """The flags that define the experiment: a flags.json dict less its locations."""
    return {k: v for k, v in flags_json.items() if k not in NOT_IDENTITY}


def flag_differences(old: Mapping[str, object], new: Mapping[str, object]) -> List[str]:
    """`name: old -> new` for each flag of `new` that defines the experiment and differs.

    Flags that only locate things (NOT_IDENTITY) may change between a run and its resumption.
    """
    return [f"{name}: {old.get(name)!r} -> {value!r}" for name, value in identity(new).items()
            if json.dumps(old.get(name)) != json.dumps(value)]


_DEFINE = {"enum": flags.DEFINE_enum, "string": flags.DEFINE_string, "list": flags.DEFINE_list,
           "integer": flags.DEFINE_integer, "float": flags.DEFINE_float,
           "bool": flags.DEFINE_bool}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Registers every flag of experiments.train, and its validators, as the caller's flags.

    Each value is checked as absl parses it, before the backend starts; flags that must fit
    together are checked by `run_setup.check_flags`.
    """
    for name, spec in SPECS.items():
        args = {"enum_values": list(spec.choices)} if spec.kind == "enum" else {}
        if spec.lower is not None or spec.upper is not None:
            args.update(lower_bound=spec.lower, upper_bound=spec.upper)
        _DEFINE[spec.kind](name=name, default=spec.default, help=spec.help,
                           flag_values=flag_values, **args)
    for name, spec in SPECS.items():
        if spec.required:
            flags.mark_flag_as_required(name, flag_values)
    # Registered in declaration order: absl lists the failures of several flags in that order.
    for name, spec in SPECS.items():
        if spec.check is not None:
            flags.register_validator(name, _validator(spec.check), flag_values=flag_values)
        # absl's bounds let NaN through (every comparison with it is false), and infinity passes
        # a lower bound: neither trains to anything, and flags.json could not record them.
        if spec.finite:
            flags.register_validator(name, lambda v: v is None or math.isfinite(v),
                                     f"--{name} must be a finite number (not nan or inf)",
                                     flag_values=flag_values)


def _validator(check: Callable[[object], object]) -> Callable[[object], bool]:
    """An absl validator of `check` (which raises UserError), failing with its one-line message."""
    def validate(value) -> bool:
        try:
            check(value)
        except UserError as e:
            raise flags.ValidationError(one_line(e))
        return True

    return validate


def flagfile_text(flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """The run's flags in absl's flagfile format (as `flags_into_string()` writes them).

    Flags of other modules are left out: TensorFlow defines some only once imported, after
    parsing, so `--flagfile` would reject them.
    """
    lines = flag_values.flags_into_string().splitlines()
    own = {flag_values[name].serialize() for name in SPECS}
    return "".join(f"{line}\n" for line in lines if line in own)


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


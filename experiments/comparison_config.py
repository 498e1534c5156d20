"""A comparison's config: the presets, loading and checking a config, and its run settings.

A config is a JSON object in the format experiments/compare.py describes; `load_config` checks
every key of it before anything runs, and `setting_differences` says where a finished run was
made with other settings.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Dict, List, Optional, Sequence

from experiments import common
from experiments.common import UserError
from experiments.config import COMPARISON_FLAGS, PER_RUN_FLAGS, RUN_FLAGS, check_flag_value
from experiments.rundir import files

# The presets: comparison config files, in the same format as --config (copy one to start your
# own). Each one's "description" says what it is for; it is not recorded with the results.
PRESETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def preset_names() -> List[str]:
    """The names `--preset` accepts: the config files in `PRESETS_DIR`, without `.json`."""
    return sorted(name[:-len(".json")] for name in os.listdir(PRESETS_DIR)
                  if name.endswith(".json"))


def preset_path(name: str) -> str:
    """The config file of preset `name`; UserError naming the valid ones if there is none."""
    names = preset_names()
    if name not in names:
        raise UserError(f"Unknown preset {name!r}; valid: {', '.join(names)}.")
    return os.path.join(PRESETS_DIR, f"{name}.json")


# Every preset as a dict, for code that read them here before they became files.
PRESETS: Dict[str, dict] = {name: files.read_json(preset_path(name)) for name in preset_names()}


# The keys a comparison config may have.
CONFIG_KEYS = ("name", "description", "note", "rows", "methods", "seeds", "train_flags")
# What compare.py sets for each run; a config may set only the other run flags of train.py
# (an allow-list: `flagfile`, say, could otherwise point a run at another --model_dir). Both are
# declared with the flags (experiments/config.py).
PER_RUN = PER_RUN_FLAGS
TRAIN_FLAGS = COMPARISON_FLAGS


# Configs beyond this many runs are refused before anything starts: a typo such as
# `"seeds": list(range(100000))` would otherwise queue days of training (docs/run_directory.md).
MAX_RUNS = 1000


def _check_list(config: dict, key: str, what: str, test) -> None:
    """Refuses `config[key]` unless it is a non-empty list whose items pass `test`."""
    value = config.get(key)
    if not isinstance(value, list) or not value:
        raise UserError(f"The comparison config needs a non-empty {key!r} list, got "
                        f"{json.dumps(value)}.")
    for item in value:
        if not test(item):
            raise UserError(f"The comparison config's {key!r} holds {json.dumps(item)}; each "
                            f"entry must be {what}.")


def load_config(preset: str, config_path: Optional[str], methods: Optional[Sequence[str]],
                seeds: Optional[Sequence[str]], epochs: Optional[int],
                max_train_examples: Optional[int]) -> dict:
    """The comparison to run: a preset or a config file, with the command line's overrides.

    Every key is type-checked before anything runs (UserError naming the key, the value and
    what it must be), and more than MAX_RUNS runs are refused.
    """
    common.check_path_flag(config_path, "--config")
    path = config_path or preset_path(preset)
    config = files.load_json_object(path, "The comparison config")
    unknown_keys = sorted(set(config) - set(CONFIG_KEYS))
    if unknown_keys:  # a typo ("train_flag") would otherwise run the defaults silently
        raise UserError(f"The comparison config {path} has unknown key(s) "
                        f"{', '.join(map(repr, unknown_keys))}; valid: {', '.join(CONFIG_KEYS)}.")
    config.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    for key in ("name", "description", "note"):
        if key in config and not isinstance(config[key], str):
            raise UserError(f"The comparison config's {key!r} is {json.dumps(config[key])}; it "
                            "must be a string.")
    config.pop("description", None)
    config.setdefault("train_flags", {})
    if not isinstance(config["train_flags"], dict):
        raise UserError(f"The comparison config's 'train_flags' is "
                        f"{json.dumps(config['train_flags'])}; it must be a JSON object of "
                        "experiments.train flags, e.g. {\"epochs\": 10}.")
    if methods:
        config["methods"] = list(methods)
    if seeds:
        try:
            config["seeds"] = [int(s) for s in seeds]
        except ValueError:
            raise UserError(f"--seeds must be integers, got {','.join(seeds)}.")
    if epochs:
        config["train_flags"]["epochs"] = epochs
    if max_train_examples:
        config["train_flags"]["max_train_examples"] = max_train_examples
    _check_list(config, "rows", "a non-empty list of network names",
                lambda nets: isinstance(nets, list) and nets)
    _check_list(config, "methods", f"one of {', '.join(common.METHODS)} (a string)",
                lambda m: isinstance(m, str) and m in common.METHODS)
    _check_list(config, "seeds", "an integer from 0 to 2**32 - 1",
                lambda s: isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32)
    runs = len(config["rows"]) * len(config["methods"]) * len(config["seeds"])
    if runs > MAX_RUNS:
        raise UserError(f"The comparison has {len(config['rows'])} rows x "
                        f"{len(config['methods'])} methods x {len(config['seeds'])} seeds = "
                        f"{runs} runs; at most {MAX_RUNS} are accepted (split it into several "
                        "configs).")
    if "baseline" not in config["methods"]:
        print("note: no baseline among the methods; the time multiple column is left empty.")
    for key, value in config["train_flags"].items():
        if key in PER_RUN:
            raise UserError(f"train_flags may not set {key!r}: the comparison sets it per run.")
        if key not in TRAIN_FLAGS:
            raise UserError(f"train_flags may not set {key!r}: it is not a run flag of "
                            f"experiments.train. Valid: {', '.join(TRAIN_FLAGS)}.")
        check_flag_value(key, value, "The comparison config's train_flags")
    # They become folder names under --work_dir: nothing may lead out of it.
    common.check_name(config["name"], "The comparison name")
    for nets in config["rows"]:
        for net in nets:
            common.check_name(net, "Network name")
    # Two runs with the same row, method and seed would share one run folder (counted in one
    # pass: a quadratic check took minutes on large configs).
    counts = collections.Counter(("/".join(nets), method, seed) for nets in config["rows"]
                                 for method in config["methods"] for seed in config["seeds"])
    twice = sorted(key for key, n in counts.items() if n > 1)
    if twice:
        raise UserError("The comparison lists the same run more than once ("
                        + "; ".join(f"{n} {m} seed {s}" for n, m, s in twice[:10])
                        + ("; ..." if len(twice) > 10 else "")
                        + "): rows, methods and seeds must not repeat.")
    return config


def flag_text(value: object) -> str:
    """A value as it is written on a command line (absl syntax)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _same_value(recorded, wanted) -> bool:
    """Whether a flag recorded in results.json equals the value a run would be given."""
    a, b = flag_text(recorded), flag_text(wanted)
    if a == b:
        return True
    try:
        return [float(x) for x in a.split(",")] == [float(x) for x in b.split(",")]
    except ValueError:
        return False


def setting_differences(done: dict, train_flags: Dict[str, object]) -> List[str]:
    """The run flags whose value in a finished run's results.json differs from `train_flags`.

    Operational flags (--backup_every) are not recorded and do not change results.
    """
    return [k for k, v in train_flags.items()
            if k in RUN_FLAGS and not _same_value(done["flags"].get(k), v)]

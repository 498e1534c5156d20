"""The typed run config of experiments.train (`TrainConfig`) and the comparison presets' files."""

import dataclasses
import json
import os

import pytest

from experiments import common, compare, comparison_config
from experiments.config import RUN_FLAGS, TrainConfig, parse_boundaries

# flags.json of a run made before TrainConfig existed (the defaults, plus a model_dir).
RECORDED = {
    "method": "dcm", "connections": None, "nets": ["wrn_28_10", "wrn_28_10"],
    "dataset": "cifar100", "data_dir": None, "image_size": None, "epochs": 200,
    "batch_size": 128, "lr": 0.1, "lr_boundaries": ["60", "120", "160"], "lr_decay": 0.2,
    "momentum": 0.9, "weight_decay": 0.0005, "temperature": 1.0, "kd_weight": 1.0,
    "kd_warmup_epochs": 0, "ce_normalization": "sum", "kd_normalization": "sum",
    "precision": "float32", "jit_compile": False, "distribute": "auto", "model_dir": "/runs/a",
    "seed": 0, "deterministic": False, "max_train_examples": None, "max_test_examples": None,
    "eval_every": 1, "overwrite": False}


def test_flags_json_round_trips_unchanged():
    config = TrainConfig.from_json(RECORDED)
    assert config.nets == ("wrn_28_10", "wrn_28_10") and config.boundaries == [60, 120, 160]
    # The same keys in the same order, the same values, the same text once written.
    assert json.dumps(config.to_json(), indent=2) == json.dumps(RECORDED, indent=2)
    assert list(RUN_FLAGS) == list(RECORDED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3


def test_an_incomplete_or_foreign_record_is_refused():
    partial = {k: v for k, v in RECORDED.items() if k != "seed"}
    with pytest.raises(common.UserError, match="missing seed"):
        TrainConfig.from_json(partial)
    with pytest.raises(ValueError, match="unknown flagfile"):  # still a ValueError
        TrainConfig.from_json({**RECORDED, "flagfile": "x"})


def test_schedule_and_method_defaults():
    config = TrainConfig.from_json({**RECORDED, "method": "dml", "lr_boundaries": ["2", "4"]})
    assert [config.learning_rate(e) for e in range(6)] == pytest.approx(
        [0.1, 0.1, 0.02, 0.02, 0.004, 0.004])
    assert config.aux_heads is False and config.distillation == "final"
    edges = [["net1_logits", "net2_logits", 1]]
    config = dataclasses.replace(config, connections=json.dumps(edges))
    assert config.distillation == edges
    with pytest.raises(common.UserError, match="strictly increasing"):
        parse_boundaries(["5", "2"])


def test_presets_are_config_files():
    """--preset=NAME reads experiments/configs/NAME.json, in the format of --config files."""
    assert comparison_config.preset_names() == sorted(comparison_config.PRESETS) == [
        "demo", "demo_fit", "fmnist_long", "paper_cifar100"]
    for name in comparison_config.preset_names():
        path = os.path.join(comparison_config.PRESETS_DIR, f"{name}.json")
        from_preset = comparison_config.load_config(name, None, None, None, None, None)
        from_file = comparison_config.load_config("demo", path, None, None, None, None)
        assert from_preset == from_file and from_preset["name"] == name
        assert "description" not in from_preset  # documentation, not recorded in table.json
    with pytest.raises(common.UserError, match="demo, demo_fit, fmnist_long, paper_cifar100"):
        comparison_config.preset_path("nope")


def test_the_presets_are_package_data():
    """An installed package (not only a checkout) finds the preset files."""
    tomllib = pytest.importorskip("tomllib")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "configs/*.json" in package_data["experiments"]


def test_train_flag_validator_lists_the_data_registry():
    """config.py validates --dataset before the backend starts, so it keeps its own tuple of
    names (the registry lives in dcm_keras, whose import starts the backend); they must agree."""
    import ast

    from dcm_keras import data

    # Read from the source: the module-level tuple as written.
    tree = ast.parse(open(os.path.join(os.path.dirname(compare.__file__), "config.py")).read())
    [names] = [ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
               and [getattr(t, "id", None) for t in node.targets] == ["DATASETS"]]
    assert names == data.DATASETS


CONFIG = {"name": "c", "rows": [["wrn_10_1"]], "methods": ["baseline"], "seeds": [0],
          "train_flags": {"epochs": 1}}


def _load(tmp_path, epochs=None, **change):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**CONFIG, **change}))
    return comparison_config.load_config("demo", str(path), None, None, epochs, None)


@pytest.mark.parametrize("change,words", [
    # Each used to end in a traceback or, for "abc", in a failed run and an empty table.
    ({"methods": [["dcm"]]}, r"'methods' holds \[\"dcm\"\]; each entry must be one of baseline"),
    ({"train_flags": []}, r"'train_flags' is \[\]; it must be a JSON object"),
    ({"train_flags": {"epochs": "abc"}}, r"train_flags 'epochs' is \"abc\"; it must be an "
                                         r"integer\."),
    ({"train_flags": {"lr": True}}, "'lr' is true; it must be a finite number"),
    ({"train_flags": {"max_train_examples": 1.5}}, "an integer or null"),
    ({"train_flags": {"lr_boundaries": [{"a": 1}]}}, "a list of strings or integers"),
    ({"train_flags": {"deterministic": 1}}, "it must be true or false"),
    ({"rows": ["wrn_10_1"]}, r"'rows' holds \"wrn_10_1\"; each entry must be a non-empty list"),
    ({"name": 5}, "'name' is 5; it must be a string"),
    ({"seeds": [-1]}, "'seeds' holds -1; each entry must be an integer from 0 to 2\\*\\*32 - 1"),
])
def test_a_comparison_config_of_the_wrong_types_is_refused_naming_key_and_value(
        tmp_path, change, words):
    with pytest.raises(common.UserError, match=words):
        _load(tmp_path, **change)


def test_train_flags_given_as_a_list_with_epochs_on_the_command_line_is_refused(tmp_path):
    with pytest.raises(common.UserError, match="'train_flags' is \\[\\]"):
        _load(tmp_path, epochs=1, train_flags=[])


def test_the_preset_values_pass_the_type_checks():
    for name in comparison_config.preset_names():
        assert comparison_config.load_config(name, None, None, None, None, None)["train_flags"]


def test_a_deeply_nested_config_is_damaged_in_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 50000)
    with pytest.raises(common.UserError, match="deep.json is damaged: nested deeper"):
        comparison_config.load_config("demo", str(path), None, None, None, None)


def test_absurdly_many_runs_are_refused_at_once(tmp_path):
    # 100,000 seeds spent 25 minutes in a quadratic duplicate check before starting them all.
    import time

    start = time.perf_counter()
    with pytest.raises(common.UserError, match=r"= 100000 runs; at most 1000 are accepted"):
        _load(tmp_path, seeds=list(range(100000)))
    assert time.perf_counter() - start < 5
    assert comparison_config.MAX_RUNS == 1000


def test_the_duplicate_check_is_linear(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(comparison_config, "MAX_RUNS", 10**6)
    seeds = list(range(20000)) + [7]
    start = time.perf_counter()
    with pytest.raises(common.UserError, match=r"more than once \(wrn_10_1 baseline seed 7\)"):
        _load(tmp_path, seeds=seeds)
    assert time.perf_counter() - start < 5  # the quadratic check took minutes here


def test_an_empty_config_path_is_refused():
    with pytest.raises(common.UserError, match="--config is empty"):
        comparison_config.load_config("demo", "", None, None, None, None)

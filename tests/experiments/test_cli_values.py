"""Values that used to end in a traceback, train to nothing, or pass silently (issue 20), each now
one error line before anything is written: non-finite float flags, seeds outside 0..2**32-1,
comparison configs with unknown keys, a string where a list belongs or the same run twice, a
damaged flags.json, and a disk too full for the run's checkpoints.
"""

import json
import subprocess

import pytest

from cli_helpers import Watched, message_lines, one_line_error, run_all, tiny_train

pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.requires_tensorflow("experiment scripts are tested on TensorFlow"),
]

BAD_FLAGS = {"weight_decay_nan": "--weight_decay=nan", "seed_negative": "--seed=-1",
             "seed_too_large": f"--seed={2**32}", "lr_nan": "--lr=nan", "lr_inf": "--lr=inf",
             "momentum_nan": "--momentum=nan", "lr_decay_inf": "--lr_decay=inf"}
COMPARE = {"name": "c", "rows": [["wrn_10_1"]], "methods": ["baseline"], "seeds": [0],
           "train_flags": {"epochs": 1}}
BAD_CONFIGS = {"typo_key": {"train_flag": {"epochs": 1}},
               "methods_string": {"methods": "baseline"},
               "same_run_twice": {"seeds": [0, 0]},
               "negative_seed": {"seeds": [-1]}}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, small_folder):
    root = tmp_path_factory.mktemp("values")
    cases = {name: tiny_train(small_folder, root / name, flag) for name, flag in BAD_FLAGS.items()}
    for name, change in BAD_CONFIGS.items():
        path = root / f"{name}.json"
        config = {k: v for k, v in COMPARE.items() if k not in change and
                  not (k == "train_flags" and "train_flag" in change)}
        path.write_text(json.dumps({**config, **change}))
        cases[name] = ["compare", f"--config={path}", f"--work_dir={root / 'work'}", "--jobs=2"]
    damaged = root / "damaged"
    damaged.mkdir()
    (damaged / "flags.json").write_text('{"method": "dcm", "nets": ["wrn_1')  # cut short
    cases["damaged_flags"] = tiny_train(small_folder, damaged)
    return run_all(cases, root), root


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_flag_values_that_cannot_train_get_one_line(outcomes, case):
    error = one_line_error(outcomes[0][case])
    flag = BAD_FLAGS[case].split("=")[0]
    assert error.startswith(f"FATAL Flags parsing error: flag {flag}=")
    assert ("finite number" in error) if "seed" not in case else ("[0, 4294967295]" in error)
    assert not (outcomes[1] / case).exists()


def test_a_comparison_config_with_an_unknown_key_is_refused(outcomes):
    error = one_line_error(outcomes[0]["typo_key"])
    assert "unknown key(s) 'train_flag'" in error and "valid: name, description" in error
    assert "train_flags" in error


def test_methods_given_as_a_string_is_refused(outcomes):
    error = one_line_error(outcomes[0]["methods_string"])
    assert "needs a non-empty 'methods' list, got \"baseline\"" in error


def test_the_same_run_twice_is_refused_before_anything_starts(outcomes):
    error = one_line_error(outcomes[0]["same_run_twice"])
    assert "the same run more than once (wrn_10_1 baseline seed 0)" in error
    assert "'seeds' holds -1; each entry must be an integer from 0 to 2**32 - 1" in one_line_error(
        outcomes[0]["negative_seed"])
    assert not (outcomes[1] / "work").exists()


def test_a_damaged_flags_json_is_named_as_such(outcomes):
    error = one_line_error(outcomes[0]["damaged_flags"])
    assert "flags.json is damaged" in error and "--overwrite" in error
    assert "but no flags.json" not in error  # what it said before: flags.json is right there
    assert sorted(p.name for p in (outcomes[1] / "damaged").iterdir()) == ["flags.json"]


def test_a_disk_already_full_is_refused_before_training(tmp_path, small_folder):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        process = Watched(*tiny_train(small_folder, disk / "run"))
        code = process.finish(timeout=240)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    error = one_line_error((code, message_lines(process.stderr)))
    assert "not enough disk space for this run's checkpoints" in error, error
    assert "Epoch 1/" not in process.stdout  # refused before an epoch was spent

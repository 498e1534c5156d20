"""The helpers behind the scripts' bookkeeping: flag identity, timing, messages, flag checks.

The file I/O helpers (history.csv, JSON, atomic writes) are tested in tests/experiments/rundir/.
"""

import json

import pytest

from experiments import common
from experiments.config import flag_differences


def test_flag_differences_ignore_locations():
    old = {"method": "dcm", "epochs": 3, "nets": ["a", "b"], "model_dir": "/x", "data_dir": None,
           "overwrite": False}
    moved = dict(old, model_dir="/y", data_dir="/data", overwrite=True)
    assert flag_differences(old, moved) == []
    changed = dict(old, epochs=4, nets=["a", "c"])
    assert flag_differences(old, changed) == [
        "epochs: 3 -> 4", "nets: ['a', 'b'] -> ['a', 'c']"]
    # A flag the recorded run did not have counts as a difference.
    assert flag_differences(old, dict(old, seed=0)) == ["seed: None -> 0"]


def test_steady_epoch_seconds_leaves_out_the_tracing_epoch():
    history = [{"train_seconds": 10.0}, {"train_seconds": 2.0}, {"train_seconds": 3.0},
               {"train_seconds": 2.5}]
    assert common.steady_epoch_seconds(history) == 2.5
    assert common.steady_epoch_seconds([{"train_seconds": 4.0}]) == 4.0
    assert common.steady_epoch_seconds([]) is None


@pytest.mark.parametrize("method,heads,preset", [
    ("baseline", False, "none"), ("dsn", True, "none"), ("dks", True, "dks"),
    ("dml", False, "final"), ("dcm", True, "dense"), ("same_stage", True, "same_stage"),
    ("cross_stage", True, "cross_stage")])
def test_methods(method, heads, preset):
    assert common.METHODS[method] == (heads, preset)


def test_one_line():
    assert common.one_line(ValueError("a\n  b")) == "a b"
    assert common.one_line(KeyError()) == "KeyError"
    assert json.loads(json.dumps(common.versions()))["python"]


def test_error_percent_drops_float32_noise_but_keeps_counts():
    import numpy as np

    assert common.error_percent(np.float32(0.8)) == 20.0  # 19.999998807907104 unrounded
    assert common.error_percent(np.float32(1 - 1 / 50_000)) == pytest.approx(0.002, abs=1e-12)
    assert common.error_percent(1.0) == 0.0 and common.error_percent(0.0) == 100.0


def test_an_empty_path_is_refused(tmp_path):
    # `--model_dir=$UNSET` wrote a whole run into the current folder.
    for value in ("", "  "):
        with pytest.raises(common.UserError, match="--model_dir is empty"):
            common.check_path_flag(value, "--model_dir")
    common.check_path_flag(None, "--model_dir")
    common.check_path_flag("runs/x", "--model_dir")


def test_an_output_file_that_is_a_folder_or_below_a_file_is_refused(tmp_path):
    with pytest.raises(common.UserError, match="--output .* is a folder; give a file path"):
        common.check_output_file(str(tmp_path), "--output")
    (tmp_path / "file").write_text("x")
    with pytest.raises(common.UserError, match="is a file, not a folder"):
        common.check_output_file(str(tmp_path / "file" / "sub" / "out.json"), "--output")
    with pytest.raises(common.UserError, match="--output is empty"):
        common.check_output_file("", "--output")
    common.check_output_file(str(tmp_path / "new" / "out.json"), "--output")


@pytest.mark.large  # starts TensorFlow in a subprocess
def test_one_user_error_class_and_the_scripts_checks_start_no_backend():
    """The scripts' UserError is the library's class, loaded without dcm_keras/__init__ (which
    starts TensorFlow), whichever of the two is imported first."""
    import subprocess
    import sys

    script = """
import sys
from experiments import common
from benchmarks import machine
from experiments.rundir import files, run
assert machine.resolve_precision("auto", {"cpu_flags": ["avx512_bf16"]}) == "mixed_bfloat16"
heavy = sorted(m for m in ("tensorflow", "keras", "jax") if m in sys.modules)
assert not heavy, heavy
import dcm_keras
from dcm_keras.errors import UserError
assert common.UserError is UserError is dcm_keras.UserError is dcm_keras.errors.UserError
assert dcm_keras.precision is sys.modules["dcm_keras.precision"]
try:
    dcm_keras.DCM([])
except common.UserError as e:
    print("caught:", e)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "caught:" in result.stdout


@pytest.mark.parametrize("script", ["train", "compare", "evaluate", "convert"])
def test_the_scripts_check_their_flags_before_the_backend_starts(script):
    """Each script's module (flags, checks, run-folder files) imports no backend: a mistake is
    reported in a fraction of a second, not after TensorFlow's start."""
    import subprocess
    import sys

    check = (f"import sys\nimport experiments.{script}\n"
             "heavy = sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules)\n"
             "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]

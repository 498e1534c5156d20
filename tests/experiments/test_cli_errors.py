"""Bad input to `experiments.train` / `.evaluate` / `.compare`: a clear one-line error, a non-zero
exit status, no traceback, and nothing written.

All the failing commands start at once (each pays for importing TensorFlow) and are checked
separately.
"""

import json
from pathlib import Path

import pytest

from cli_helpers import one_line_error, run_all
from cli_helpers import tiny_train as _train

# The scripts run with TensorFlow-only parts (tf.distribute, op determinism, tf.data); once
# per `make test` is enough, so a session under another Keras backend skips them.
pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.requires_tensorflow("experiment scripts are tested on TensorFlow"),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, small_folder):
    """{case: (exit status, message lines, model_dir)} for every failing command."""
    root = tmp_path_factory.mktemp("errors")

    empty = root / "empty_folder"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir()

    corrupt = root / "corrupt_folder"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (corrupt / split / c).mkdir(parents=True)
            for i in range(6):
                (corrupt / split / c / f"{i}.png").write_bytes(
                    (Path(small_folder) / "train" / "class000" / f"{i}.png").read_bytes())
    (corrupt / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")

    other_run = root / "other_run"
    other_run.mkdir()
    recorded = {"method": "dml", "nets": ["wrn_10_1", "wrn_10_1"], "epochs": 7}
    (other_run / "flags.json").write_text(json.dumps(recorded))

    cases = {
        "method": _train(small_folder, root / "m1", "--method=foo"),
        "nets": _train(small_folder, root / "m2", "--nets=wrn_10_1,foo"),
        "dataset_name": _train(small_folder, root / "m3", "--dataset=mnist"),
        "connections": _train(small_folder, root / "m4", "--connections=everything"),
        "boundaries": _train(small_folder, root / "m5", "--lr_boundaries=5,2"),
        "missing_folder": _train(root / "does_not_exist", root / "m6"),
        "missing_data_dir": ["train", "--dataset=fashion_mnist", f"--model_dir={root / 'm10'}",
                             f"--data_dir={root / 'no_such_dir'}"],
        "no_classes": _train(empty, root / "m7"),
        "corrupt_image": _train(corrupt, root / "m8"),
        "other_flags": _train(small_folder, other_run),
        "dml_one_net": _train(small_folder, root / "m9", "--method=dml", "--nets=wrn_10_1"),
        "evaluate_missing_model": ["evaluate", f"--model={root / 'nope.keras'}",
                                   "--dataset=cifar10"],
        "compare_method": ["compare", "--methods=baseline,foo", f"--work_dir={root / 'c'}"],
    }
    return run_all(cases, root)


def test_unknown_method_lists_the_valid_ones(outcomes):
    message = one_line_error(outcomes["method"])
    assert "--method=foo" in message
    for method in ("baseline", "dsn", "dks", "dml", "dcm", "same_stage", "cross_stage"):
        assert method in message


def test_unknown_network_lists_the_valid_ones(outcomes):
    message = one_line_error(outcomes["nets"])
    assert "'foo'" in message and "wrn_D_K" in message and "mobilenet" in message
    assert not outcomes["nets"][2].exists()  # nothing was written


def test_unknown_dataset_lists_the_valid_ones(outcomes):
    message = one_line_error(outcomes["dataset_name"])
    assert "mnist" in message and "cifar100" in message and "image_folder:PATH" in message


def test_bad_connections_and_boundaries(outcomes):
    message = one_line_error(outcomes["connections"])
    assert "everything" in message and "dense" in message and "same_stage" in message
    message = one_line_error(outcomes["boundaries"])
    assert "increasing" in message


def test_missing_data_folder(outcomes):
    message = one_line_error(outcomes["missing_folder"])
    assert "does_not_exist" in message and "does not exist" in message
    assert not outcomes["missing_folder"][2].exists()


def test_missing_data_dir(outcomes):
    message = one_line_error(outcomes["missing_data_dir"])
    assert "no_such_dir does not exist" in message
    assert not outcomes["missing_data_dir"][2].exists()


def test_image_folder_without_classes(outcomes):
    message = one_line_error(outcomes["no_classes"])
    assert "no class subfolders" in message


def test_corrupt_image_is_named(outcomes):
    message = one_line_error(outcomes["corrupt_image"])
    assert "broken.png" in message


def test_model_dir_of_another_run_is_refused(outcomes):
    message = one_line_error(outcomes["other_flags"])
    assert "different flags" in message and "--overwrite" in message
    assert "epochs: 7 -> 1" in message and "method: 'dml' -> 'dcm'" in message
    model_dir = outcomes["other_flags"][2]
    assert sorted(p.name for p in model_dir.iterdir()) == ["flags.json"]  # left untouched
    assert json.loads((model_dir / "flags.json").read_text())["epochs"] == 7


def test_distillation_method_needs_two_networks(outcomes):
    message = one_line_error(outcomes["dml_one_net"])
    assert "at least two --nets" in message


def test_evaluate_missing_model(outcomes):
    message = one_line_error(outcomes["evaluate_missing_model"])
    assert "nope.keras" in message


def test_compare_unknown_method(outcomes):
    message = one_line_error(outcomes["compare_method"])
    assert "foo" in message and "baseline" in message


# Runs experiments.train with one library function replaced by one that raises: $PATCH is
# `module:attribute.path:ErrorType`, the type a builtin or one of dcm_keras.errors.
_PATCHED_TRAIN = """
import builtins, functools, importlib, os, sys
from absl import app
import dcm_keras.errors
from experiments import train

module, path, kind = os.environ["PATCH"].split(":")
error = getattr(dcm_keras.errors, kind, None) or getattr(builtins, kind)
*owners, name = path.split(".")
owner = functools.reduce(getattr, owners, importlib.import_module(module))

def broken(*args, **kwargs):
    raise error("injected by the test")

setattr(owner, name, broken)
app.run(train.main)
"""


@pytest.fixture(scope="module")
def patched(tmp_path_factory, small_folder):
    """{case: (exit status, stderr lines, model_dir)} of train runs with a raising library call."""
    from cli_helpers import message_lines, start_module

    root = tmp_path_factory.mktemp("patched")
    (root / "patched_train.py").write_text(_PATCHED_TRAIN)
    cases = {"bug_in_build": "dcm_keras.networks:build:TypeError",
             "bug_in_compile": "dcm_keras.model:DCM.compile:ValueError",
             "mistake_in_build": "dcm_keras.networks:build:UserError"}
    procs = {}
    for name, patch in cases.items():
        args = _train(small_folder, root / name)[1:]  # without the script name
        procs[name] = start_module("patched_train", args, str(root), {"PATCH": patch})
    outcomes = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=240)
        outcomes[name] = (proc.returncode, message_lines(err), root / name)
    return outcomes


@pytest.mark.parametrize("case,error", [("bug_in_build", "TypeError"),
                                        ("bug_in_compile", "ValueError")])
def test_a_bug_keeps_its_traceback(patched, case, error):
    """Only user mistakes become one line: a TypeError, or a ValueError where no user input is
    checked, is a bug, and its traceback says where it happened."""
    code, lines, model_dir = patched[case]
    assert code != 0
    assert any("Traceback" in line for line in lines), lines
    assert f"{error}: injected by the test" in lines[-1], lines
    assert not any(line.startswith("error:") for line in lines), lines
    assert not model_dir.exists()  # set-up failed before anything was written


def test_a_library_user_error_is_one_line(patched):
    assert one_line_error(patched["mistake_in_build"]) == "error: injected by the test"
    assert not patched["mistake_in_build"][2].exists()

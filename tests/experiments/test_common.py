"""The helpers behind the scripts' bookkeeping: history across resumes, flag identity, timing."""

import json
import os

import pytest

from experiments import common


def test_read_history_keeps_the_last_row_of_each_epoch(tmp_path):
    # A kill between logging epoch 1 and backing it up re-runs epoch 1 after the resume; the line
    # cut short by a kill is skipped.
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_net1_logits_acc\n"
                    "0,2.0,0.5\n"
                    "1,1.5,0.6\n"
                    "1,1.4,0.65\n"
                    "2,1.2,NA\n"
                    "3")
    rows = common.read_history(str(path))
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[1]["loss"] == 1.4 and rows[1]["val_net1_logits_acc"] == 0.65
    assert rows[2]["val_net1_logits_acc"] != rows[2]["val_net1_logits_acc"]  # NaN
    assert common.read_history(str(tmp_path / "missing.csv")) == []


def test_flag_differences_ignore_locations():
    old = {"method": "dcm", "epochs": 3, "nets": ["a", "b"], "model_dir": "/x", "data_dir": None,
           "overwrite": False}
    moved = dict(old, model_dir="/y", data_dir="/data", overwrite=True)
    assert common.flag_differences(old, moved) == []
    changed = dict(old, epochs=4, nets=["a", "c"])
    assert common.flag_differences(old, changed) == [
        "epochs: 3 -> 4", "nets: ['a', 'b'] -> ['a', 'c']"]
    # A flag the recorded run did not have counts as a difference.
    assert common.flag_differences(old, dict(old, seed=0)) == ["seed: None -> 0"]


def test_steady_epoch_seconds_leaves_out_the_tracing_epoch():
    history = [{"train_seconds": 10.0}, {"train_seconds": 2.0}, {"train_seconds": 3.0},
               {"train_seconds": 2.5}]
    assert common.steady_epoch_seconds(history) == 2.5
    assert common.steady_epoch_seconds([{"train_seconds": 4.0}]) == 4.0
    assert common.steady_epoch_seconds([]) is None


def test_completed_results_and_atomic_json(tmp_path):
    assert common.completed_results(str(tmp_path)) is None
    (tmp_path / "results.json").write_text('{"complete": tru')  # cut short
    assert common.completed_results(str(tmp_path)) is None
    common.write_json(str(tmp_path / "results.json"), {"complete": True, "x": (1, 2)})
    assert common.completed_results(str(tmp_path)) == {"complete": True, "x": [1, 2]}
    assert not list(tmp_path.glob("*.tmp"))


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


@pytest.mark.parametrize("text", ["[" * 200000, '{"a":' * 100000, '{"a": tru', "1" * 5000])
def test_every_json_reader_calls_deep_nesting_damage_not_a_recursion_error(text):
    with pytest.raises(common.DamagedJSON) as caught:
        common.parse_json(text)
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, RecursionError)
    if text.startswith("[["):
        assert "nested deeper than Python can read" in str(caught.value)


def test_deeply_nested_json_file_is_damaged_in_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * 50000)
    assert common.read_json(str(path)) is None
    with pytest.raises(common.UserError, match=r"The config .*config.json is damaged: nested"):
        common.load_json_object(str(path), "The config")


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


def test_a_disk_message_names_the_folder_not_its_descriptor(tmp_path, monkeypatch):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError, match=f"and {tmp_path} has") as caught:
            common.check_free_space(f"/proc/self/fd/{fd}", 2**60, "this test")
        assert "/proc/self/fd" not in str(caught.value)
        with pytest.raises(OSError, match="and the run has"):
            common.check_free_space(f"/proc/self/fd/{fd}", 2**60, "this test", where="the run")
    finally:
        os.close(fd)

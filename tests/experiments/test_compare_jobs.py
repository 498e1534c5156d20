"""`experiments.compare --jobs=N` (runs trained side by side) and `--no_train` (tabulate only).

One real comparison, 2 methods x 1 seed with `--jobs=2`, is tabulated again with `--no_train`
(in its own and in partly copied work dirs); an in-process test with a fake `run_one` makes the
runs finish out of order, which two real runs may or may not do.
"""

import json
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from cli_helpers import describe, message_lines, one_line_error, run

# The scripts run with TensorFlow-only parts (see test_compare_cli.py).
tensorflow_only = pytest.mark.requires_tensorflow("experiment scripts are tested on TensorFlow")

METHODS = ("baseline", "dml")
PAIR = "wrn_10_1-wrn_10_1"


def tiny_config(small_folder: str) -> dict:
    return {"name": "tiny", "rows": [["wrn_10_1", "wrn_10_1"]], "methods": list(METHODS),
            "seeds": [0],
            "train_flags": {"dataset": f"image_folder:{small_folder}", "image_size": 8,
                            "epochs": 1, "batch_size": 8, "lr": 0.05, "lr_boundaries": []}}


@pytest.fixture(scope="module")
def parallel(tmp_path_factory, small_folder):
    """Config path, work dir, output and table files of the comparison run with --jobs=2."""
    root = tmp_path_factory.mktemp("compare_jobs")
    config_path = root / "tiny.json"
    config_path.write_text(json.dumps(tiny_config(small_folder)))
    work_dir = root / "work"
    result = run("compare", f"--config={config_path}", f"--work_dir={work_dir}", "--jobs=2",
                 timeout=400)
    assert result.returncode == 0, describe(result)
    out = work_dir / "tiny"
    return config_path, work_dir, result, (out / "table.md").read_text(), \
        json.loads((out / "table.json").read_text())


def table_lines(table: str):
    """The table's rows and margin lines (the footnote says how the runs were made)."""
    return [line for line in table.splitlines() if line.startswith(("|", "- "))]


def without_timings(summary: dict) -> dict:
    summary = json.loads(json.dumps(summary))
    for key in ("compare_wall_time_s", "jobs"):
        summary.pop(key)
    return summary


@pytest.mark.large
@tensorflow_only
def test_jobs_trains_every_run_and_says_times_are_contended(parallel):
    _, _, result, table, summary = parallel
    assert result.stdout.count("training in") == len(METHODS)
    for i in (1, 2):
        assert re.search(rf"^\[{i}/2\] wrn_10_1/wrn_10_1 \w+ seed 0: done in \d+s$",
                         result.stdout, re.M), result.stdout
    assert summary["jobs"] == 2 and summary["failed_runs"] == [] == summary["missing_runs"]
    assert [row["method"] for row in summary["rows"]] == list(METHODS)
    assert "With --jobs=2, up to 2 runs trained at the same time" in table
    assert "only roughly comparable" in table


@pytest.mark.large
@tensorflow_only
def test_no_train_tabulates_the_same_table(parallel):
    config_path, work_dir, _, table, summary = parallel
    result = run("compare", f"--config={config_path}", f"--work_dir={work_dir}", "--no_train")
    assert result.returncode == 0, describe(result)
    assert "training in" not in result.stdout
    assert result.stdout.count("(skipped)") == len(METHODS)
    out = work_dir / "tiny"
    again = json.loads((out / "table.json").read_text())
    assert again["jobs"] is None and summary["jobs"] == 2
    assert without_timings(again) == without_timings(summary)
    new_table = (out / "table.md").read_text()
    assert table_lines(new_table) == table_lines(table) and len(table_lines(table)) >= 3
    assert "--jobs" not in new_table and "Tabulated with --no_train" in new_table


@pytest.mark.large
@tensorflow_only
def test_no_train_on_an_empty_work_dir_fails_in_one_line(parallel, tmp_path):
    config_path = parallel[0]
    work_dir = tmp_path / "empty"
    result = run("compare", f"--config={config_path}", f"--work_dir={work_dir}", "--no_train",
                 timeout=60)
    message = one_line_error((result.returncode, message_lines(result.stderr)))
    assert "--no_train" in message and "'tiny'" in message
    assert str(work_dir / "tiny") in message
    assert not work_dir.exists()  # nothing written, not even the table's folder


@pytest.mark.large
@tensorflow_only
def test_no_train_lists_unfinished_runs_as_missing(parallel, tmp_path):
    config_path, work_dir, _, _, summary = parallel
    # The baseline copied back finished; the DML run was copied mid-training.
    copy = tmp_path / "copied"
    shutil.copytree(work_dir / "tiny" / PAIR, copy / "tiny" / PAIR)
    results_path = copy / "tiny" / PAIR / "dml_seed0" / "results.json"
    results = json.loads(results_path.read_text())
    results["complete"] = False
    results_path.write_text(json.dumps(results))

    result = run("compare", f"--config={config_path}", f"--work_dir={copy}", "--no_train",
                 timeout=60)
    assert result.returncode == 0, describe(result)
    dml_dir = str(copy / "tiny" / PAIR / "dml_seed0")
    assert f"not finished in {dml_dir} (missing" in result.stdout
    assert "FAILED" not in result.stdout and "training in" not in result.stdout
    partial = json.loads((copy / "tiny" / "table.json").read_text())
    assert partial["missing_runs"] == [dml_dir] and partial["failed_runs"] == []
    assert [row["method"] for row in partial["rows"]] == ["baseline"]
    assert partial["rows"][0]["test_error"] == summary["rows"][0]["test_error"]
    assert "1 of the 2 runs had not finished" in (copy / "tiny" / "table.md").read_text()

    # The flags a finished run recorded are still checked against the config.
    result = run("compare", f"--config={config_path}", f"--work_dir={copy}", "--no_train",
                 "--epochs=2", timeout=60)
    message = one_line_error((result.returncode, message_lines(result.stderr)))
    assert "other settings (epochs)" in message


def fake_results(train_flags: dict) -> dict:
    """A finished run's results.json, its errors a function of method and seed."""
    error = {"baseline": 20.0, "dml": 15.0, "dcm": 10.0}[train_flags["method"]]
    error += train_flags["seed"] / 3
    return {"complete": True, "flags": dict(train_flags), "method": train_flags["method"],
            "networks": {net: {"test_error": {"logits": error + k}}
                         for k, net in enumerate(("net1", "net2"))},
            "epoch_train_seconds_median": 1.0 + error / 7, "wall_time_s": 3.0, "history": []}


def test_results_do_not_depend_on_jobs_or_finishing_order(tmp_path, monkeypatch, capsys):
    from experiments import compare, comparison_runs
    from experiments.rundir import files

    config = {"name": "fake", "rows": [["wrn_10_1", "wrn_10_1"]],
              "methods": ["baseline", "dml", "dcm"], "seeds": [0, 1], "train_flags": {}}
    order = [(m, s) for m in config["methods"] for s in config["seeds"]]
    reused, failing = ("dml", 0), ("dcm", 1)
    lock = threading.Lock()

    def fake_run_one(directory, train_flags, concurrent=1):
        with lock:
            calls.append((train_flags["method"], train_flags["seed"], concurrent))
        # Later runs finish first.
        time.sleep(0.1 * (len(order) - order.index((train_flags["method"],
                                                     train_flags["seed"]))))
        if (train_flags["method"], train_flags["seed"]) == failing:
            return None
        return fake_results(train_flags)

    monkeypatch.setattr(comparison_runs, "run_one", fake_run_one)
    summaries, outputs = {}, {}
    for jobs in (1, 3):
        work_dir = tmp_path / f"jobs{jobs}"
        directory = comparison_runs.run_folder_path(str(work_dir), "fake", ["wrn_10_1", "wrn_10_1"],
                                                    *reused)
        Path(directory).mkdir(parents=True)
        files.write_json(f"{directory}/{files.RESULTS_FILE}", fake_results(
            {"method": reused[0], "nets": ["wrn_10_1", "wrn_10_1"], "seed": reused[1]}))
        calls = []
        failures = compare.compare(config, str(work_dir), jobs=jobs)
        outputs[jobs] = capsys.readouterr().out
        assert failures == 1
        # The reused run took no job slot and started nothing; the others were all started.
        assert sorted(c[:2] for c in calls) == sorted(set(order) - {reused})
        # 3 jobs and 5 runs to train: 3 at a time.
        assert {c[2] for c in calls} == {jobs}
        text = (work_dir / "fake" / "table.json").read_text().replace(str(work_dir), "W")
        summaries[jobs] = json.loads(text)
        assert summaries[jobs]["jobs"] == jobs
        assert summaries[jobs]["failed_runs"] == ["W/fake/wrn_10_1-wrn_10_1/dcm_seed1"]
    assert without_timings(summaries[1]) == without_timings(summaries[3])
    assert list(summaries[3]["runs"]) == [
        f"W/fake/wrn_10_1-wrn_10_1/{m}_seed{s}" for m, s in order if (m, s) != failing]
    # With 3 at a time, the last of the first three started (run 4: run 3 is reused) finished
    # first; one at a time, they finish in order.
    finished = re.findall(r"^\[(\d)/6\] .*: done in", outputs[3], re.M)
    assert finished[0] == "4" and sorted(finished) == ["1", "2", "4", "5"]
    assert re.findall(r"^\[(\d)/6\] .*: done in", outputs[1], re.M) == ["1", "2", "4", "5"]
    # Every progress line is whole (printed under one lock), none glued to another.
    for line in outputs[3].splitlines():
        assert line.count("[") <= 1 or not line.startswith("["), line
    assert "With --jobs=3, up to 3 runs trained at the same time" in \
        (tmp_path / "jobs3" / "fake" / "table.md").read_text()
    assert "--jobs" not in (tmp_path / "jobs1" / "fake" / "table.md").read_text()


def test_runs_side_by_side_split_the_cores_of_tensorflow_op_pool(tmp_path, monkeypatch):
    """With --jobs > 1 each run's TensorFlow op pool gets its share of the cores (unless set)."""
    from experiments import comparison_runs

    monkeypatch.setattr(comparison_runs.os, "sched_getaffinity", lambda pid: set(range(8)),
                        raising=False)
    assert comparison_runs.cpu_share(1) is None
    assert comparison_runs.cpu_share(2) == 4 and comparison_runs.cpu_share(3) == 2
    assert comparison_runs.cpu_share(16) == 1
    seen = []

    class FakePopen:
        def __init__(self, argv, stdout, stderr, env):
            seen.append(env.get("TF_NUM_INTRAOP_THREADS"))

        def wait(self):
            return 1  # a failed run: run_one returns None without reading results

    monkeypatch.setattr(comparison_runs.subprocess, "Popen", FakePopen)
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    for concurrent in (1, 2):
        directory = tmp_path / f"c{concurrent}"
        directory.mkdir()
        assert comparison_runs.run_one(str(directory), {"seed": 0}, concurrent=concurrent) is None
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")  # the user's own choice is kept
    (tmp_path / "user").mkdir()
    comparison_runs.run_one(str(tmp_path / "user"), {"seed": 0}, concurrent=2)
    assert seen == [None, "4", "3"]


def test_runs_of_other_seeds_left_by_an_earlier_invocation_are_tabulated(tmp_path, monkeypatch,
                                                                        capsys):
    # `--seeds=0` then `--seeds=1` left a table of seed 1 alone.
    from experiments import compare, comparison_runs
    from experiments.rundir import files

    config = {"name": "fake", "rows": [["wrn_10_1", "wrn_10_1"]], "methods": ["baseline", "dcm"],
              "seeds": [1], "train_flags": {"epochs": 3}}
    monkeypatch.setattr(comparison_runs, "run_one", lambda directory, train_flags, concurrent=1:
                        fake_results(train_flags))
    for method, seed, epochs in (("baseline", 0, 3), ("dcm", 0, 3), ("dcm", 2, 4)):
        directory = comparison_runs.run_folder_path(str(tmp_path), "fake", ["wrn_10_1", "wrn_10_1"],
                                                    method, seed)
        Path(directory).mkdir(parents=True)
        files.write_json(f"{directory}/{files.RESULTS_FILE}", fake_results(
            {"method": method, "nets": ["wrn_10_1", "wrn_10_1"], "seed": seed, "epochs": epochs}))
    assert compare.compare(config, str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "Also tabulating 2 finished run(s) of this comparison" in out and "(seeds 0)" in out
    summary = json.loads((tmp_path / "fake" / "table.json").read_text())
    assert [row["seeds"] for row in summary["rows"]] == [[0, 1], [0, 1]]  # not seed 2's 4 epochs
    table = (tmp_path / "fake" / "table.md").read_text()
    assert "mean ± sample std over seeds 0, 1;" in table
    assert "In these runs DCM" in out and "Where DCM helps" not in out


def test_runs_of_other_seeds_with_a_flag_the_config_leaves_unset_are_not_tabulated(
        tmp_path, monkeypatch, capsys):
    # The config sets no --max_train_examples; a run of seed 0 made with 1000 differs from this
    # invocation's runs all the same (real runs record every run flag, defaults included).
    from experiments import compare, comparison_runs
    from experiments.rundir import files

    config = {"name": "fake", "rows": [["wrn_10_1", "wrn_10_1"]], "methods": ["dcm"],
              "seeds": [1], "train_flags": {"epochs": 3}}
    monkeypatch.setattr(comparison_runs, "run_one", lambda directory, train_flags, concurrent=1:
                        fake_results({**train_flags, "max_train_examples": None}))
    for seed, subset in ((0, 1000), (2, None)):
        directory = comparison_runs.run_folder_path(str(tmp_path), "fake", ["wrn_10_1", "wrn_10_1"],
                                                    "dcm", seed)
        Path(directory).mkdir(parents=True)
        files.write_json(f"{directory}/{files.RESULTS_FILE}", fake_results(
            {"method": "dcm", "nets": ["wrn_10_1", "wrn_10_1"], "seed": seed, "epochs": 3,
             "max_train_examples": subset}))
    broken = comparison_runs.run_folder_path(str(tmp_path), "fake", ["wrn_10_1", "wrn_10_1"], "dcm",
                                             3)
    Path(broken).mkdir(parents=True)
    files.write_json(f"{broken}/{files.RESULTS_FILE}", {"complete": True, "flags": [1]})
    assert compare.compare(config, str(tmp_path)) == 0
    summary = json.loads((tmp_path / "fake" / "table.json").read_text())
    assert [row["seeds"] for row in summary["rows"]] == [[1, 2]]


def test_a_failed_run_shows_the_end_of_its_log_and_leaves_no_empty_table(tmp_path, monkeypatch,
                                                                         capsys):
    from experiments import compare, comparison_runs

    config = {"name": "fake", "rows": [["wrn_10_1"]], "methods": ["baseline"], "seeds": [0],
              "train_flags": {}}

    def failing(directory, train_flags, concurrent=1):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "train.log").write_text(
            "$ python -m experiments.train --epochs=1\nearlier attempt\n"
            "$ python -m experiments.train --epochs=x\n"
            "FATAL Flags parsing error: flag --epochs=x: invalid literal for int()\n"
            "Pass --helpshort or --helpfull to see help on flags.\n")
        return None

    monkeypatch.setattr(comparison_runs, "run_one", failing)
    assert compare.compare(config, str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "FAILED (FATAL Flags parsing error: flag --epochs=x: invalid literal" in out
    assert "    Pass --helpshort or --helpfull to see help on flags." in out
    assert "earlier attempt" not in out
    assert "no table was written" in out and not (tmp_path / "fake" / "table.md").exists()


@pytest.mark.large
@tensorflow_only
def test_sigterm_stops_the_training_runs_as_ctrl_c_does(tmp_path, small_folder):
    # SIGTERM used to end compare alone, its training child left running under PID 1.
    import os
    import signal

    from cli_helpers import Watched

    config = dict(tiny_config(small_folder), methods=["baseline"])
    config["train_flags"] = dict(config["train_flags"], epochs=200)
    path = tmp_path / "long.json"
    path.write_text(json.dumps(config))
    process = Watched("compare", f"--config={path}", f"--work_dir={tmp_path / 'work'}")
    process.wait_for("training in", timeout=120)
    lock = tmp_path / "work" / "tiny" / PAIR / "baseline_seed0" / ".dcm_lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip()):  # the run's PID, once it has begun
        assert time.monotonic() < deadline and process.proc.poll() is None, process.describe()
        time.sleep(0.2)
    child = int(lock.read_text())
    process.proc.send_signal(signal.SIGTERM)
    assert process.finish(timeout=60) == 128 + signal.SIGTERM
    assert "Stopped by signal 15" in process.stderr

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(child):
        os.kill(child, signal.SIGKILL)
        pytest.fail(f"the training run {child} outlived the comparison")

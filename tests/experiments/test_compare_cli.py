"""`python -m experiments.compare` on a tiny custom config: 2 methods x 2 seeds, 1 epoch each."""

import json
import shlex

import pytest

from cli_helpers import describe, run

# The scripts run with TensorFlow-only parts (tf.distribute, op determinism, tf.data); once
# per `make test` is enough, so a session under another Keras backend skips them.
pytestmark = [
    pytest.mark.large,  # runs the scripts in subprocesses: `make test-fast` skips it
    pytest.mark.requires_tensorflow("experiment scripts are tested on TensorFlow"),
]

METHODS = ("baseline", "dml")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, small_folder):
    root = tmp_path_factory.mktemp("compare")
    config = {
        "name": "tiny",
        "rows": [["wrn_10_1", "wrn_10_1"]],
        "methods": list(METHODS),
        "seeds": list(SEEDS),
        "train_flags": {"dataset": f"image_folder:{small_folder}", "image_size": 8,
                        "epochs": 1, "batch_size": 8, "lr": 0.05, "lr_boundaries": []},
    }
    config_path = root / "tiny.json"
    config_path.write_text(json.dumps(config))
    work_dir = root / "work"
    result = run("compare", f"--config={config_path}", f"--work_dir={work_dir}", timeout=400)
    assert result.returncode == 0, describe(result)
    return config_path, work_dir, result


def test_every_run_has_its_own_directory(comparison):
    _, work_dir, result = comparison
    for method in METHODS:
        for seed in SEEDS:
            run_dir = work_dir / "tiny" / "wrn_10_1-wrn_10_1" / f"{method}_seed{seed}"
            results = json.loads((run_dir / "results.json").read_text())
            assert results["complete"] and results["flags"]["seed"] == seed
            assert results["method"] == method
            assert (run_dir / "train.log").exists() and (run_dir / "net2.keras").exists()
            # The logged command is quoted as a shell would need it (the folder's ':' etc.).
            command = (run_dir / "train.log").read_text().splitlines()[0]
            argv = shlex.split(command[len("$ "):])
            assert argv[1:3] == ["-m", "experiments.train"]
            assert f"--model_dir={run_dir}" in argv and f"--seed={seed}" in argv
    assert result.stdout.count("training in") == len(METHODS) * len(SEEDS)


def test_table_has_mean_and_std_per_network_and_time_multiple(comparison):
    _, work_dir, _ = comparison
    out = work_dir / "tiny"
    table = (out / "table.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| wrn_10_1")]
    assert [line.split("|")[2].strip() for line in lines] == list(METHODS)
    for line in lines:
        assert line.count("±") == 2  # net1 and net2
    summary = json.loads((out / "table.json").read_text())
    rows = {row["method"]: row for row in summary["rows"]}
    assert set(rows) == set(METHODS)
    for row in rows.values():
        assert row["seeds"] == list(SEEDS)
        for net in ("net1", "net2"):
            error = row["test_error"][net]
            assert error["n"] == 2 and 0 <= error["mean"] <= 100 and error["std"] >= 0
    assert rows["baseline"]["time_vs_baseline"] == pytest.approx(1.0)
    assert rows["dml"]["time_vs_baseline"] > 0
    assert summary["failed_runs"] == []
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_finished_runs_are_reused_not_retrained(comparison):
    config_path, work_dir, _ = comparison
    table = (work_dir / "tiny" / "table.json").read_text()
    result = run("compare", f"--config={config_path}", f"--work_dir={work_dir}")
    assert result.returncode == 0, describe(result)
    assert result.stdout.count("(skipped)") == len(METHODS) * len(SEEDS)
    assert "training in" not in result.stdout
    assert json.loads((work_dir / "tiny" / "table.json").read_text())["rows"] == \
        json.loads(table)["rows"]


def test_finished_runs_with_other_settings_are_kept(comparison):
    config_path, work_dir, _ = comparison
    result = run("compare", f"--config={config_path}", f"--work_dir={work_dir}", "--epochs=2")
    assert result.returncode != 0
    assert "other settings (epochs)" in result.stderr and "Traceback" not in result.stderr
    results = json.loads((work_dir / "tiny" / "wrn_10_1-wrn_10_1" / "baseline_seed0" /
                          "results.json").read_text())
    assert results["flags"]["epochs"] == 1


def test_table_reports_train_accuracy_and_margin_against_seed_spread(comparison):
    _, work_dir, result = comparison
    out = work_dir / "tiny"
    summary = json.loads((out / "table.json").read_text())
    for row in summary["rows"]:
        for net in ("net1", "net2"):
            acc = row["train_accuracy"][net]
            assert acc["n"] == len(SEEDS) and 0 <= acc["mean"] <= 100
    for run_results in summary["runs"].values():
        assert set(run_results["train_accuracy"]) == {"net1", "net2"}
    [versus] = summary["vs_baseline"]
    assert versus["method"] == "dml" and versus["time_vs_baseline"] > 0
    for net in ("net1", "net2"):
        v = versus["networks"][net]
        assert v["exceeds_spread"] == (abs(v["margin"]) > v["spread"])
    table = (out / "table.md").read_text()
    assert "train acc (%)" in table and "- dml vs baseline (wrn_10_1 / wrn_10_1): " in table
    assert "training time x" in table and "dml vs baseline" in result.stdout


def test_verdict_says_within_spread_better_or_worse():
    from experiments import comparison_stats

    def row(method, net1, net2, std):
        return {"nets": ["a", "b"], "method": method, "time_vs_baseline": 2.0,
                "test_error": {"net1": {"mean": net1, "std": std, "n": 3},
                               "net2": {"mean": net2, "std": std, "n": 3}}}

    config = {"rows": [["a", "b"]]}
    rows = [row("baseline", 10.0, 10.0, 0.3), row("dcm", 9.0, 10.2, 0.5)]
    [versus] = comparison_stats.versus_baseline(config, rows)
    assert versus["networks"]["net1"] == {"margin": 1.0, "spread": 0.5, "exceeds_spread": True}
    assert versus["networks"]["net2"]["exceeds_spread"] is False
    [line] = comparison_stats.verdict_lines([versus])
    assert "net1 error -1.00 points (better than baseline" in line
    assert "net2 error +0.20 points (within the seed spread" in line and "x2.00" in line
    rows[1] = row("dcm", 11.0, 11.0, 0.1)
    assert "WORSE than baseline" in comparison_stats.verdict_lines(
        comparison_stats.versus_baseline(config, rows))[0]


@pytest.mark.parametrize("preset,config", [("demo", "fmnist_n128_e60"),
                                           ("demo_fit", "fmnist_n128_e120"),
                                           ("fmnist_long", "fmnist_n1024_e200")])
def test_study_presets_are_the_studied_settings(preset, config):
    """The presets docs/accuracy.md vouches for run exactly the flags its tables came from."""
    import os

    from experiments import comparison_config

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(repo, "docs", "results", f"{config}.json")) as f:
        studied = json.load(f)["config"]
    mine = comparison_config.PRESETS[preset]
    assert mine["train_flags"] == studied["train_flags"]
    assert mine["seeds"] == studied["seeds"]
    assert set(mine["methods"]) <= set(studied["methods"]) and "baseline" in mine["methods"]
    assert mine["rows"] == studied["rows"]


def test_single_seed_has_no_spread_and_no_verdict():
    """One seed gives no spread: the table says so and no better/worse/within verdict is drawn."""
    from experiments import comparison_stats

    assert comparison_stats.mean_std([12.5]) == {"mean": 12.5, "std": None, "n": 1}

    def row(method, error, std, n):
        return {"nets": ["a", "b"], "method": method, "time_vs_baseline": 1.5, "seeds": [0],
                "epoch_train_seconds": 1.0, "train_accuracy": {},
                "test_error": {"net1": {"mean": error, "std": std, "n": n}}}

    config = {"rows": [["a", "b"]], "seeds": [0], "train_flags": {"epochs": 1}}
    rows = [row("baseline", 10.0, None, 1), row("dcm", 9.0, None, 1)]
    [versus] = comparison_stats.versus_baseline(config, rows)
    assert versus["networks"]["net1"] == {"margin": 1.0, "spread": None, "exceeds_spread": None}
    [line] = comparison_stats.verdict_lines([versus])
    assert "net1 error -1.00 points (one seed: no spread" in line
    assert "better" not in line and "within" not in line
    table = comparison_stats.markdown_table(config, rows)
    assert "10.00 (1 seed)" in table and "±" not in table.split("\n\n")[0]
    # Against a multi-seed baseline, a single-seed method still has no spread to judge by.
    rows[0] = row("baseline", 10.0, 0.4, 3)
    versus = comparison_stats.versus_baseline(config, rows)
    assert versus[0]["networks"]["net1"]["exceeds_spread"] is None


def test_plot_draws_single_seed_rows(tmp_path):
    pytest.importorskip("matplotlib")
    from experiments import plots

    rows = [{"nets": ["a", "b"], "method": m, "seeds": [0],
             "test_error": {"net1": {"mean": e, "std": None, "n": 1},
                            "net2": {"mean": e + 1, "std": None, "n": 1}}}
            for m, e in (("baseline", 10.0), ("dcm", 9.0))]
    config = {"name": "one_seed", "rows": [["a", "b"]], "methods": ["baseline", "dcm"],
              "seeds": [0]}
    plots.plot_comparison(config, rows, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 1000

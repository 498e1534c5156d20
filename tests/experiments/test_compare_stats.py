"""compare's statistics against values worked out by hand: every published table comes from them."""

import math

import pytest

from experiments import comparison_stats, plots


def test_mean_std_is_the_sample_std():
    # 10, 12, 14: mean 12, squared deviations 4 + 0 + 4 = 8; sample variance 8 / 2 = 4 -> std 2
    # (the population std would be sqrt(8 / 3) = 1.633).
    stats = comparison_stats.mean_std([10.0, 12.0, 14.0])
    assert stats == {"mean": 12.0, "std": 2.0, "n": 3}


def test_mean_std_of_one_value_has_no_spread():
    assert comparison_stats.mean_std([7.5]) == {"mean": 7.5, "std": None, "n": 1}


def _run(seed, err1, err2, acc1, acc2, epoch_s):
    return {"flags": {"seed": seed}, "wall_time_s": 10.0 * (seed + 1),
            "epoch_train_seconds_median": epoch_s,
            "networks": {"net1": {"test_error": {"logits": err1}},
                         "net2": {"test_error": {"logits": err2}}},
            "history": [{"net1_logits_acc": 0.5, "net2_logits_acc": 0.5},
                        {"net1_logits_acc": acc1, "net2_logits_acc": acc2}]}


def test_summary_margin_and_spread_from_known_runs():
    config = {"rows": [["a", "b"]], "methods": ["baseline", "dcm"], "seeds": [0, 1, 2]}
    results = {
        (("a", "b"), "baseline", 0): _run(0, 30.0, 40.0, 0.90, 0.80, 2.0),
        (("a", "b"), "baseline", 1): _run(1, 32.0, 41.0, 0.92, 0.82, 2.0),
        (("a", "b"), "baseline", 2): _run(2, 34.0, 42.0, 0.94, 0.84, 2.0),
        (("a", "b"), "dcm", 0): _run(0, 29.0, 35.0, 0.80, 0.70, 5.0),
        (("a", "b"), "dcm", 1): _run(1, 29.5, 36.0, 0.80, 0.70, 5.0),
        (("a", "b"), "dcm", 2): _run(2, 30.0, 37.0, 0.80, 0.70, 5.0),
    }
    rows = comparison_stats.summarize(config, results)
    base, dcm = rows
    assert base["test_error"]["net1"]["mean"] == pytest.approx(32.0)
    assert base["test_error"]["net1"]["std"] == pytest.approx(2.0)
    assert base["test_error"]["net2"]["std"] == pytest.approx(1.0)
    assert dcm["test_error"]["net1"]["std"] == pytest.approx(0.5)
    # Training accuracy: the last epoch's value, in %, averaged over seeds.
    assert base["train_accuracy"]["net1"]["mean"] == pytest.approx(92.0)
    assert base["train_accuracy"]["net1"]["std"] == pytest.approx(2.0)
    assert dcm["time_vs_baseline"] == pytest.approx(2.5)
    assert base["wall_time_s"] == pytest.approx(20.0)

    versus = comparison_stats.versus_baseline(config, rows)
    assert len(versus) == 1
    net1, net2 = versus[0]["networks"]["net1"], versus[0]["networks"]["net2"]
    # net1: margin 32 - 29.5 = 2.5 against the larger std, max(2.0, 0.5) = 2.0: beyond it.
    assert net1["margin"] == pytest.approx(2.5)
    assert net1["spread"] == pytest.approx(2.0)
    assert net1["exceeds_spread"] is True
    # net2: margin 41 - 36 = 5.0 against max(1.0, 1.0): beyond it.
    assert net2["margin"] == pytest.approx(5.0) and net2["spread"] == pytest.approx(1.0)
    lines = comparison_stats.verdict_lines(versus)
    assert "net1 error -2.50 points (better than baseline, spread 2.00)" in lines[0]
    assert "training time x2.50 of baseline" in lines[0]


def test_a_margin_inside_the_spread_is_not_a_verdict():
    config = {"rows": [["a", "a"]], "methods": ["baseline", "dml"], "seeds": [0, 1]}
    results = {
        (("a", "a"), "baseline", 0): _run(0, 30.0, 30.0, 0.9, 0.9, 1.0),
        (("a", "a"), "baseline", 1): _run(1, 34.0, 34.0, 0.9, 0.9, 1.0),
        (("a", "a"), "dml", 0): _run(0, 31.0, 33.0, 0.9, 0.9, 1.0),
        (("a", "a"), "dml", 1): _run(1, 31.0, 33.0, 0.9, 0.9, 1.0),
    }
    versus = comparison_stats.versus_baseline(config, comparison_stats.summarize(config, results))
    net1 = versus[0]["networks"]["net1"]
    # margin 32 - 31 = 1.0; baseline std over (30, 34) = sqrt(8) = 2.83: within.
    assert net1["spread"] == pytest.approx(math.sqrt(8.0))
    assert net1["exceeds_spread"] is False
    assert "within the seed spread" in comparison_stats.verdict_lines(versus)[0]


def _versus(margin, spread):
    return [{"nets": ["a", "a"], "method": "dcm", "time_vs_baseline": 2.0, "networks": {
        "net1": {"margin": margin, "spread": spread,
                 "exceeds_spread": None if spread is None else abs(margin) > spread}}}]


@pytest.mark.parametrize("margin,spread,says", [
    (1.0, 0.2, "lower than the baseline's by more than the seed spread for 1 of 1 networks"),
    (0.1, 0.2, "does not exceed the seed spread for any network"),
    (-1.0, 0.2, "does not exceed the seed spread for any network"),
    (1.0, None, "cannot be judged against the baseline: with one seed")])
def test_the_closing_line_follows_the_users_own_table(margin, spread, says):
    # It used to end every comparison with "Where DCM helps, on natural images too".
    first, second = comparison_stats.closing_lines(_versus(margin, spread))
    assert says in first and "natural images" not in first
    assert second.endswith("docs/accuracy.md") and "measured study" in second
    assert comparison_stats.closing_lines([])[0] == \
        "This table has no DCM and baseline rows to compare."


def test_the_plot_starts_at_zero_and_counts_seeds_in_the_singular(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = {"name": "c", "rows": [["a", "b"]], "methods": ["baseline", "dcm"], "seeds": [0]}
    results = {(("a", "b"), "baseline", 0): _run(0, 88.0, 89.0, 0.1, 0.1, 1.0),
               (("a", "b"), "dcm", 0): _run(0, 86.0, 87.5, 0.1, 0.1, 1.0)}
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plots.plot_comparison(config, comparison_stats.summarize(config, results),
                          str(tmp_path / "c.png"))
    fig = figures[0]
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    assert low == 0.0 and high > 89.0  # the bars were cut at 70 before
    assert fig._suptitle.get_text() == "c: one seed (no spread)"
    plt.close(fig)

"""docs/make_accuracy_tables.py: the docs' accuracy tables are a regeneration, its statistics are right.

The script reads only JSON (no Keras); these tests load it from its path like the docs' users run it.
"""

import importlib.util
import json
import math
import pathlib
import re
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("make_accuracy_tables",
                                               REPO / "docs" / "make_accuracy_tables.py")
tables = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = tables  # dataclasses look their module up while it executes
_SPEC.loader.exec_module(tables)


# --- The docs equal a regeneration -----------------------------------------------------------

@pytest.mark.parametrize("doc", tables.DOCS, ids=lambda p: pathlib.Path(p).name)
def test_docs_equal_a_regeneration(doc):
    text = pathlib.Path(doc).read_text()
    assert tables.BLOCK.search(text), f"{doc} has no <!-- table:NAME --> block"
    assert tables.render(text) == text, (
        f"{doc} differs from a regeneration: run python docs/make_accuracy_tables.py")


def test_every_table_is_placed_once():
    names = [m.group(2) for doc in tables.DOCS
             for m in tables.BLOCK.finditer(pathlib.Path(doc).read_text())]
    assert sorted(names) == sorted(tables.TABLES), "a generated table is missing or placed twice"


def test_check_flag_fails_on_a_stale_doc(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "page.md"
    doc.write_text("before\n<!-- table:step_cost -->\n| typed by hand |\n<!-- /table -->\nafter\n")
    monkeypatch.setattr(tables, "DOCS", [str(doc)])
    assert tables.main(["--check"]) == 1
    assert "page.md" in capsys.readouterr().err
    assert "typed by hand" in doc.read_text()  # --check writes nothing
    assert tables.main([]) == 0
    assert "typed by hand" not in doc.read_text() and doc.read_text().endswith("after\n")
    assert tables.main(["--check"]) == 0


def test_unknown_table_name_names_the_valid_ones():
    with pytest.raises(KeyError, match="'nosuch'.*answer"):
        tables.render("<!-- table:nosuch -->\n<!-- /table -->")


def test_readme_does_it_help_numbers_come_from_the_tables():
    readme = (REPO / "README.md").read_text()
    paragraph = readme.split("**Does it help?**", 1)[1].split("\n\n", 1)[0]
    signed = r"[−+]\d+\.\d\d"
    pairs = re.findall(rf"({signed}) / ({signed})", paragraph)
    multiples = re.findall(r"(\d\.\d\d)(?:–(\d\.\d\d))? ×", paragraph)
    assert pairs and multiples, "the README's answer cites no measured number"
    assert len(re.findall(signed, paragraph)) == 2 * len(pairs), "cite margins as net1 / net2"
    answer, cost = tables.answer_table(tables.ANSWER), tables.cost_table()
    matched = tables.TABLES["compute_matched"]()

    def cited(a: str, b: str) -> bool:
        a, b = (re.escape(x.replace("−", "-")) for x in (a, b))
        # net1 / net2 of one row of the answer table, each with its spread in parentheses, or of
        # the compute-matched table, in two columns
        return bool(re.search(rf"\| {a} \([^)]*\) / {b} \(", answer)
                    or re.search(rf"\| {a} \([^)]*\) \| {b} \(", matched))

    missing = [f"{a} / {b}" for a, b in pairs if not cited(a, b)]
    missing += [m for pair in multiples for m in pair if m and f"| {m} |" not in cost]
    assert not missing, f"README numbers not in any generated table: {missing}"


# --- Statistics ------------------------------------------------------------------------------

def test_mean_and_sample_std():
    s = tables.stat([1.0, 2.0, 3.0, 4.0])
    assert s.mean == pytest.approx(2.5)
    assert s.std == pytest.approx(math.sqrt(5 / 3))  # n - 1, not the population's sqrt(5 / 4)
    assert s.n == 4 and s.text() == "2.50 ± 1.29"


def test_one_seed_has_no_spread_and_is_never_beyond():
    one = tables.stat([30.0])
    assert one.std is None and one.text() == "30.00 (1 seed)"
    many = tables.stat([10.0, 10.1, 9.9])
    for m in (tables.margin(one, many), tables.margin(many, one),
              tables.margin(one, tables.stat([50.0]))):
        assert m.spread is None and not m.beyond and m.text().endswith("(no spread)")
    with pytest.raises(ValueError, match="got none"):
        tables.stat([])


def test_margin_against_the_larger_std():
    a, b = tables.stat([10.0, 10.2, 9.8]), tables.stat([12.0, 12.5, 11.5])
    m = tables.margin(a, b)
    assert m.diff == pytest.approx(-2.0) and m.spread == pytest.approx(0.5)
    assert m.beyond and m.text() == "-2.00 (beyond 0.50)"
    close = tables.margin(tables.stat([12.2, 12.6, 11.8]), b)
    assert close.diff == pytest.approx(0.2) and not close.beyond
    assert close.text() == "+0.20 (within 0.50)"


def _table(runs, name="fake_n100_e2", methods=("baseline", "dcm")):
    """A compare output with the given {(method, seed): (net1 error, net2 error)}."""
    def run(e1, e2):
        return {"net1": {"test_error": {"logits": e1}}, "net2": {"test_error": {"logits": e2}},
                "train_accuracy": {"net1": 90.0, "net2": 92.0}}
    # The rows carry std 0 for one seed, as older compare versions wrote them.
    rows = [{"method": m, "nets": ["wrn_10_1"] * 2, "seeds": [0],
             "test_error": {"net1": {"mean": 0, "std": 0.0}, "net2": {"mean": 0, "std": 0.0}}}
            for m in methods]
    return {"config": {"name": name, "rows": [["wrn_10_1", "wrn_10_1"]], "methods": list(methods),
                       "train_flags": {"dataset": "fashion_mnist", "epochs": 2, "batch_size": 10,
                                       "max_train_examples": 100}},
            "rows": rows, "failed_runs": [], "missing_runs": [],
            "runs": {f"/w/{name}/wrn_10_1-wrn_10_1/{m}_seed{s}": run(*e)
                     for (m, s), e in runs.items()}}


def test_pair_and_network_statistics_come_from_the_runs():
    table = _table({("baseline", 0): (20.0, 22.0), ("baseline", 1): (21.0, 23.0),
                    ("dcm", 0): (18.0, 19.0), ("dcm", 1): (19.0, 21.0)})
    m = tables.per_method(table)
    assert m["baseline"]["pair"].mean == pytest.approx(21.5)  # (21 + 22) / 2
    assert m["baseline"]["pair"].std == pytest.approx(math.sqrt(0.5))
    assert m["dcm"]["net2"].mean == pytest.approx(20.0)
    assert m["dcm"]["acc"].mean == pytest.approx(91.0)


def test_per_seed_margins_pair_each_run_with_its_seeds_baseline(tmp_path):
    table = _table({("baseline", 0): (20.0, 22.0), ("baseline", 1): (21.0, 23.0),
                    ("dcm", 0): (18.0, 19.0), ("dcm", 1): (19.0, 24.0)})
    (tmp_path / "fake_n100_e2.json").write_text(json.dumps(table))
    text = tables.per_seed_table(["fake_n100_e2"], results=str(tmp_path))
    assert "| dcm | seed 0: -2.00 / -3.00; seed 1: -2.00 / +1.00 |" in text


def test_a_single_seed_table_reads_no_spread(tmp_path):
    (tmp_path / "configs").mkdir()
    table = _table({("baseline", 0): (20.0, 22.0), ("dcm", 0): (10.0, 12.0)})
    (tmp_path / "fake_n100_e2.json").write_text(json.dumps(table))
    text = tables.answer_table(["fake_n100_e2"], results=str(tmp_path))
    assert "-10.00 (no spread) / -10.00 (no spread)" in text
    assert "beyond" not in text
    text = tables.network_table(["fake_n100_e2"], results=str(tmp_path))
    assert "20.00 (1 seed)" in text and "± 0.00" not in text


def test_a_config_without_results_is_reported_not_run(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fake_n2000_e100.json").write_text("{}")
    groups = [("S1", ["fake_n2000_e100"]), ("S2", ["fake_n2000_e*_matched"])]
    status = tables.status_table(groups, results=str(tmp_path))
    assert "| S1 | [fake_n2000_e100](results/configs/fake_n2000_e100.json) | **not run yet**" in status
    assert "| S2 | `fake_n2000_e*_matched` | config not committed yet" in status
    # No numbers are made up for it: the answer table has no row for it.
    answer = tables.answer_table(["fake_n2000_e100"], results=str(tmp_path))
    assert len(answer.splitlines()) == 2
    record = tables.record_table(results=str(tmp_path))
    assert "| fake_n2000_e100 | yes |  | not run yet |" in record
    # Runs committed as they finish (results/runs/...) are counted against the config's plan;
    # an unfinished run's folder is not.
    (tmp_path / "configs" / "fake_n2000_e100.json").write_text(json.dumps(
        {"rows": [["a", "b"]], "methods": ["baseline", "dcm"], "seeds": [0, 1]}))
    for run, complete in (("baseline_seed0", True), ("dcm_seed0", True),
                          ("baseline_seed1", False)):
        folder = tmp_path / "runs" / "fake_n2000_e100" / "a-b" / run
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"complete": complete}))
    status = tables.status_table(groups, results=str(tmp_path))
    assert ("| S1 | [fake_n2000_e100](results/configs/fake_n2000_e100.json) | **under way**: 2 of 4 "
            "runs finished ([runs](results/runs/fake_n2000_e100/)), no results file yet |") in status
    record = tables.record_table(results=str(tmp_path))
    assert ("| fake_n2000_e100 | yes |  | under way: 2 of 4 runs finished "
            "([runs](runs/fake_n2000_e100/))") in record
    assert len(tables.answer_table(["fake_n2000_e100"], results=str(tmp_path)).splitlines()) == 2
    # A config that is damaged or says no plan: the finished runs are still counted, of nothing.
    for text in ("{not json", "{}"):
        (tmp_path / "configs" / "fake_n2000_e100.json").write_text(text)
        assert "| **under way**: 2 runs finished ([runs]" in tables.status_table(
            groups, results=str(tmp_path))
    (tmp_path / "configs" / "fake_n2000_e100.json").write_text(json.dumps(
        {"rows": [["a", "b"]], "methods": ["baseline", "dcm"], "seeds": [0, 1]}))
    # Once its results land, the same row reports them.
    (tmp_path / "fake_n2000_e100.json").write_text(json.dumps(
        _table({("baseline", 0): (1.0, 2.0)}, name="fake_n2000_e100", methods=("baseline",))))
    status = tables.status_table(groups, results=str(tmp_path))
    # The config planned baseline and DCM; a results file of the baseline alone says so, and
    # counts the DCM runs committed since (dcm_seed0 above) ...
    assert ("finished: [results](results/fake_n2000_e100.json) | 1 runs | 0 failed, 0 missing; "
            "dcm: 1 of 2 runs finished since ([runs](results/runs/fake_n2000_e100/)), not in the "
            "results file |") in status
    assert ("| 1 runs, 0 failed, 0 missing; dcm: 1 of 2 runs finished since "
            "([runs](runs/fake_n2000_e100/)), not in the results file |"
            in tables.record_table(results=str(tmp_path)))
    # ... or says it was not run when none of them finished.
    dcm_run = tmp_path / "runs" / "fake_n2000_e100" / "a-b" / "dcm_seed0" / "results.json"
    dcm_run.write_text(json.dumps({"complete": False}))
    status = tables.status_table(groups, results=str(tmp_path))
    assert ("finished: [results](results/fake_n2000_e100.json) | 1 runs | 0 failed, 0 missing; "
            "not run: dcm (in the config) |") in status
    assert ("| 1 runs, 0 failed, 0 missing; not run: dcm (in the config) |"
            in tables.record_table(results=str(tmp_path)))
    (tmp_path / "fake_n2000_e100.json").write_text(json.dumps(
        _table({("baseline", 0): (1.0, 2.0), ("dcm", 0): (1.0, 2.0)}, name="fake_n2000_e100")))
    assert "| 2 runs | 0 failed, 0 missing |" in tables.status_table(groups, results=str(tmp_path))


def test_a_later_tabulation_is_read_and_the_first_stays_marked(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fake_n100_e2.json").write_text(json.dumps(
        {"rows": [["a", "b"]], "methods": ["baseline", "dcm", "dml"], "seeds": [0]}))
    monkeypatch.setattr(tables, "RETABULATED", {"fake_n100_e2": "fake_n100_e2_with_dml"})
    first = _table({("baseline", 0): (20.0, 22.0), ("dcm", 0): (18.0, 19.0)})
    (tmp_path / "fake_n100_e2.json").write_text(json.dumps(first))
    groups = [("S", ["fake_n100_e2"])]
    # Before the later file lands the first one is read, and says what it leaves out.
    assert tables.results_file("fake_n100_e2", str(tmp_path)) == "fake_n100_e2"
    assert "| -2.00 (no spread) / -3.00 (no spread) |  |" in tables.answer_table(
        ["fake_n100_e2"], results=str(tmp_path))
    assert "not run: dml (in the config)" in tables.status_table(groups, results=str(tmp_path))
    later = _table({("baseline", 0): (20.0, 22.0), ("dcm", 0): (18.0, 19.0),
                    ("dml", 0): (19.0, 23.0)}, methods=("baseline", "dcm", "dml"))
    (tmp_path / "fake_n100_e2_with_dml.json").write_text(json.dumps(later))
    answer = tables.answer_table(["fake_n100_e2"], results=str(tmp_path))
    assert ("| -2.00 (no spread) / -3.00 (no spread) | -1.00 (no spread) / +1.00 (no spread) |"
            in answer)
    assert "[fake_n100_e2](results/fake_n100_e2_with_dml.json)" in answer
    status = tables.status_table(groups, results=str(tmp_path))
    assert ("finished: [results](results/fake_n100_e2_with_dml.json) | 3 runs | 0 failed, "
            "0 missing |") in status
    assert "| dml |" in tables.network_table(["fake_n100_e2"], results=str(tmp_path))
    record = tables.record_table(results=str(tmp_path)).splitlines()
    assert ("| fake_n100_e2 | yes | [json](fake_n100_e2.json) | 2 runs, 0 failed, 0 missing; "
            "not run: dml (in the config); superseded by [fake_n100_e2_with_dml]"
            "(fake_n100_e2_with_dml.json), which the tables read |  |") in record
    assert ("| fake_n100_e2_with_dml | yes (fake_n100_e2) | [json](fake_n100_e2_with_dml.json) | "
            "3 runs, 0 failed, 0 missing |  |") in record
    # The first file is read as it was written, never rewritten.
    assert json.loads((tmp_path / "fake_n100_e2.json").read_text()) == first


def test_recomputed_statistics_match_compare_rows():
    """Every committed multi-seed row: our mean and sample std equal compare.py's own."""
    checked = 0
    for path in sorted((REPO / "docs" / "results").glob("*.json")):
        table = json.loads(path.read_text())
        ours = tables.per_method(table)
        for row in table["rows"]:
            for net in ("net1", "net2"):
                theirs, mine = row["test_error"][net], ours[row["method"]][net]
                assert mine.mean == pytest.approx(theirs["mean"], abs=1e-6), (path.name, row)
                if mine.n > 1:
                    assert mine.std == pytest.approx(theirs["std"], abs=1e-6), (path.name, row)
                    checked += 1
                else:
                    assert mine.std is None  # where compare wrote 0.0
    assert checked > 100


def test_compute_matched_waits_for_both_files_then_compares(tmp_path):
    (tmp_path / "configs").mkdir()
    for name in ("fake_n100_e10", "fake_n100_e22_matched"):
        (tmp_path / "configs" / f"{name}.json").write_text("{}")
    text = tables.matched_table("fake_n100_e10", ["fake_n100_e*_matched"], results=str(tmp_path))
    assert "waiting for results: fake_n100_e10, fake_n100_e22_matched" in text
    (tmp_path / "fake_n100_e10.json").write_text(json.dumps(_table(
        {("dcm", 0): (10.0, 11.0), ("dcm", 1): (10.2, 11.2), ("baseline", 0): (13.0, 12.0),
         ("baseline", 1): (13.0, 12.0)}, "fake_n100_e10", ("baseline", "dcm"))))
    text = tables.matched_table("fake_n100_e10", ["fake_n100_e*_matched"], results=str(tmp_path))
    assert "waiting for results: fake_n100_e22_matched" in text and "10.10" not in text
    (tmp_path / "fake_n100_e22_matched.json").write_text(json.dumps(_table(
        {("baseline", 0): (12.0, 11.0), ("baseline", 1): (12.4, 11.4)}, "fake_n100_e22_matched",
        ("baseline",))))
    text = tables.matched_table("fake_n100_e10", ["fake_n100_e*_matched"], results=str(tmp_path))
    lines = text.splitlines()
    # DCM first, then the other methods of its own config, then the longer-trained ones, each
    # with its training accuracy: a longer schedule that fits more shows there.
    assert [line.split(" | ")[1] for line in lines[2:]] == ["dcm", "baseline", "baseline"]
    assert lines[2].startswith("| 100 × 2 (20 steps) | dcm | 10.10 ± 0.14 | 11.10 ± 0.14 |  |  |  |")
    assert lines[3].endswith(
        "| baseline | 13.00 ± 0.00 | 12.00 ± 0.00 | -2.90 (beyond 0.14) | -0.90 (beyond 0.14) "
        "| seed 0: -3.00 / -1.00; seed 1: -2.80 / -0.80 | 90.0 / 92.0 | 2 |")
    # Each seed's DCM run against the same seed's longer run (11.2 - 11.4 = -0.20 for seed 1).
    assert lines[4].endswith(
        "| baseline | 12.20 ± 0.28 | 11.20 ± 0.28 | -2.10 (beyond 0.28) | -0.10 (within 0.28) "
        "| seed 0: -2.00 / +0.00; seed 1: -2.20 / -0.20 | 90.0 / 92.0 | 2 |")


# --- The plots -------------------------------------------------------------------------------

def test_plots_are_drawn_from_the_committed_results(tmp_path):
    """Every plot the guides show is drawn again from the results files, none is left out."""
    spec = importlib.util.spec_from_file_location("make_accuracy_plots",
                                                  REPO / "docs" / "make_accuracy_plots.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    written = plots.main(out_dir=str(tmp_path))
    shown = set(re.findall(r"\(\.\./(accuracy_[\w]+\.png)\)",
                           (REPO / "docs" / "results" / "README.md").read_text()))
    assert {pathlib.Path(p).name for p in written} == shown
    for path in written:
        assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # One seed has no spread: drawn without an error bar, never a zero-width "spread".
    one_seed = tables.per_method(_table({("baseline", 0): (20.0, 22.0), ("dcm", 0): (18.0, 19.0)}))
    assert plots.per_method(_table({("baseline", 0): (20.0, 22.0), ("dcm", 0): (18.0, 19.0)})
                            )["dcm"]["pair"] == (18.5, 0.0, 1)
    assert one_seed["dcm"]["pair"].std is None

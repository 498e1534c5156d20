"""benchmarks/levers.py: every lever maps to a worker setting, and the table reads its rows."""

from benchmarks import levers


def test_every_lever_sets_only_known_worker_settings():
    known = {"inter_op_threads", "intra_op_threads", "xla", "env", "bn"}
    assert set(levers.LEVERS["default"][1]) == set()
    for name, (what, overrides) in levers.LEVERS.items():
        assert what and set(overrides) <= known, name


def test_markdown_lists_ratios_and_explains_each_lever():
    rows = [{"precision": "float32", "lever": lever, "images_per_s": rate, "images_per_s_min": rate,
             "images_per_s_max": rate, "ratio_vs_default": rate / 50.0, "images_per_cpu_s": 25.0,
             "rss_mb": 2000.0} for lever, rate in (("default", 50.0), ("inter_op_1", 60.0))]
    text = levers.markdown({"cpu_kind": "AMD EPYC", "usable_cpus": 2}, "2026-12-02", rows, "wrn_16_2 pair")
    assert "| float32 | inter_op_1 | 60.0 | 60-60 | 1.20 |" in text
    assert "- `inter_op_1`: one inter-op thread" in text and "AMD EPYC" in text

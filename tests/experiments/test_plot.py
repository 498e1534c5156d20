"""test_error.png: every head distinguishable, the legend clear of the curves."""

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments import plots  # noqa: E402


def test_each_head_has_its_own_style_and_the_legend_is_outside(tmp_path, monkeypatch):
    heads = ["aux1", "aux2", "logits"]
    history = [{"epoch": e, **{f"val_net{k}_{h}_acc": 0.5 + 0.01 * e + 0.1 * i
                               for k in (1, 2) for i, h in enumerate(heads)}} for e in range(5)]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    path = tmp_path / "test_error.png"
    plots.plot_test_error(history, {"net1": ("wrn_10_1", heads), "net2": ("wrn_10_1", heads)},
                          str(path), "dcm")
    assert path.is_file()
    (fig,) = figures
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 6
    looks = [(line.get_color(), str(line.get_linestyle()), line.get_marker()) for line in lines]
    assert len(set(looks)) == 6, looks
    # Within a network, heads differ by line style and marker, not by colour alone.
    for a, b in itertools.combinations(lines[:3], 2):
        assert (a.get_linestyle(), a.get_marker()) != (b.get_linestyle(), b.get_marker())
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert not legend.overlaps(ax.get_window_extent())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "net1 aux1", "net1 aux2", "net1 (wrn_10_1)", "net2 aux1", "net2 aux2", "net2 (wrn_10_1)"]
    plt.close(fig)


def test_one_evaluation_is_a_visible_marker_on_an_axis_from_zero(tmp_path, monkeypatch):
    # One evaluation used to be a 3-pixel dot on an automatic 7.6-8.4 axis.
    history = [{"epoch": 0, "val_net1_logits_acc": 0.92}]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plots.plot_test_error(history, {"net1": ("wrn_10_1", ["logits"])},
                          str(tmp_path / "test_error.png"), "baseline")
    (ax,) = figures[0].axes
    (line,) = ax.get_lines()
    assert line.get_marker() == "o" and line.get_markersize() >= 6
    low, high = ax.get_ylim()
    assert low == 0.0 and 8.0 < high <= 105.0
    assert ax.get_xlim() == (0.0, 2.0) and "one evaluation" in ax.get_title()
    plt.close(figures[0])

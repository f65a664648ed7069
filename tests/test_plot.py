import pytest

from utils import plot, train


def _history(epochs=3):
    history = train.History(meta={"name": "run"})
    for i in range(epochs):
        history.record(train_loss=1 / (i + 1), train_acc=0.5 + i / 10, test_acc=0.5 + i / 12,
                       seconds=1.0, examples_per_sec=100.0)
    return history


def test_history_and_chart_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_RESULTS_DIR", str(tmp_path))
    figures = [plot.plot_history(_history()), plot.plot_history(_history(), _history(2), labels=["a", "b"]),
               plot.bar_chart({"x": 1, "y": 10}, ylabel="n", log=True),
               plot.bar_chart({"x": {"p": 1, "q": 2}, "y": {"p": 3, "q": 4}}, ylabel="n", horizontal=True),
               plot.scatter({"a": (1, 2), "b": (3, 4)}, xlabel="x", ylabel="y", logx=True),
               plot.line_plot({"a": ([1, 2], [3, 4])}, xlabel="x", ylabel="y")]
    assert len(figures[0].axes) == 2 and len(figures[0].axes[1].lines) == 2
    path = plot.save_figure(figures[2], "bars")
    assert path == tmp_path / "figures" / "bars.png" and path.stat().st_size > 1000


def _fake_jupyter(monkeypatch, draw_seconds=0.2):
    """A fake clock, and a display whose every draw takes ``draw_seconds`` of it."""
    import IPython.display

    clock, shown = [0.0], []

    class Handle:  # what Jupyter's display(..., display_id=True) returns
        def update(self, figure):
            shown.append(clock[0])

    def display(figure, display_id):
        shown.append(clock[0])
        return Handle()

    def draw(axes, history, points=()):
        clock[0] += draw_seconds

    monkeypatch.setattr(plot.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(IPython.display, "display", display)
    monkeypatch.setattr(plot, "_draw_history", draw)
    return clock, shown


@pytest.mark.parametrize("seconds", [2.0, 5.0, 30.0, 600.0])
def test_live_plot_keeps_to_its_budget_including_the_final_draw(monkeypatch, seconds):
    clock, shown = _fake_jupyter(monkeypatch)
    live = plot.LivePlot(_history(), budget=0.04)
    while clock[0] < seconds:  # training: an update asked for every 0.1 s
        clock[0] += 0.1
        live.update([(0.5, 1.0, 0.5)])
    assert live.update([(1.0, 0.9, 0.6)], force=True)  # the end is always drawn
    assert live.spent == pytest.approx(0.2 * len(shown))
    if seconds >= 0.2 / 0.04:  # long enough for one draw to fit the budget
        assert live.spent / clock[0] <= 0.04 + 1e-9
    if seconds >= 30:
        assert len(shown) >= seconds * 0.04 / 0.2 / 2  # and still redrawn regularly


def test_live_plot_draws_nothing_until_asked_and_displays_once(monkeypatch):
    clock, shown = _fake_jupyter(monkeypatch)
    live = plot.LivePlot(_history())
    assert live.handle is None and shown == []  # no figure before the first draw
    clock[0] += 1.0
    assert not live.update([(0.1, 1.0, 0.5)])  # 1 s in: a draw would exceed 4%
    assert live.update([(0.2, 1.0, 0.5)], force=True) and live.update([(0.3, 1.0, 0.5)], force=True)
    assert len(shown) == 2 and live.cost == pytest.approx(0.2)


def test_filters_draws_one_image_per_filter():
    import torch

    figure = plot.filters(torch.randn(96, 1, 11, 11), columns=16)
    assert len(figure.axes) == 96 and sum(len(ax.images) for ax in figure.axes) == 96
    colour = plot.filters(torch.randn(10, 3, 5, 5), columns=4)  # 3 rows, 2 empty places
    images = [image for ax in colour.axes for image in ax.images]
    assert len(colour.axes) == 12 and len(images) == 10
    assert images[0].get_array().shape == (5, 5, 3)
    assert all(0 <= image.get_array().min() and image.get_array().max() <= 1 for image in images)


def test_mask_grid_draws_one_panel_per_mask():
    import torch

    masks = {"a": torch.eye(3, dtype=torch.bool), "b": torch.ones(2, 5), "c": [[0, 2], [1, 0]]}
    figure = plot.mask_grid(masks, title="masks")
    images = [image for ax in figure.axes for image in ax.images]
    assert len(figure.axes) == 3 and len(images) == 3
    assert [image.get_array().shape for image in images] == [(3, 3), (2, 5), (2, 2)]
    assert [ax.get_title() for ax in figure.axes] == ["a", "b", "c"]
    assert images[2].get_clim() == (0, 2)  # vmax follows the largest value, at least 1
    with pytest.raises(ValueError, match="2-D"):
        plot.mask_grid({"bad": torch.ones(2, 2, 2)})


def test_plot_budget_comes_from_the_environment(monkeypatch):
    import pytest
    monkeypatch.delenv("CNN_PLOT_BUDGET", raising=False)
    assert plot.plot_budget() == 0.04
    monkeypatch.setenv("CNN_PLOT_BUDGET", "1")
    assert plot.plot_budget() == 1.0
    monkeypatch.setenv("CNN_PLOT_BUDGET", "lots")
    with pytest.raises(ValueError, match="must be a fraction in"):
        plot.plot_budget()


def test_history_plots_name_the_data_fit_evaluated_on():
    one = plot.plot_history(_history(), evaluated_on="validation")
    assert [line.get_label() for line in one.axes[1].lines] == ["train acc", "validation acc"]
    two = plot.plot_history(_history(), _history(2), labels=["a", "b"], evaluated_on="validation")
    assert two.axes[1].get_ylabel() == "validation accuracy"
    assert [line.get_label() for line in two.axes[1].lines] == ["a (validation)", "b (validation)"]
    assert plot.plot_history(_history()).axes[1].lines[1].get_label() == "test acc"


def test_a_bar_charts_legend_covers_no_bar():
    figure = plot.bar_chart({"model": {"train": 0.9, "test": 0.9}, "other": {"train": 0.8, "test": 0.85}},
                            ylabel="accuracy")
    renderer = plot._renderer(figure)  # lays the figure out as saving it would
    legend = figure.axes[0].get_legend().get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for patch in figure.axes[0].patches]
    assert len(bars) == 4 and not any(legend.overlaps(bar) for bar in bars)


def _label_boxes(figure):
    renderer = plot._renderer(figure)  # lays the figure out as saving it would
    ax = figure.axes[0]
    return ax.get_window_extent(renderer), [text.get_window_extent(renderer) for text in ax.texts]


def test_scatter_labels_cover_neither_each_other_nor_markers_and_stay_inside():
    # Points as crowded as chapter 07's Inception family: pairs almost on top of each other.
    points = {"v1, 1 crop": (1.6, 10.1), "v1, 144 crops": (1.6, 7.9), "BN (v2), 1 crop": (2.0, 7.8),
              "v3, 1 crop, 299 px": (5.7, 5.6), "IR-v1, 1 crop": (6.2, 5.5),
              "v4, 1 crop": (12.3, 5.0), "IR-v2, 1 crop": (13.1, 4.9)}
    figure = plot.scatter(points, xlabel="GMACs", ylabel="top-5 error")
    frame, boxes = _label_boxes(figure)
    assert len(boxes) == len(points)
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    assert all(frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
               for box in boxes)
    ax = figure.axes[0]
    for collection in ax.collections:
        cx, cy = ax.transData.transform(collection.get_offsets()[0])
        assert not any(box.x0 < cx < box.x1 and box.y0 < cy < box.y1 for box in boxes)

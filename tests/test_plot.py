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


def test_live_plot_redraws_at_most_every_interval(monkeypatch):
    import IPython.display

    class Handle:  # what Jupyter's display(..., display_id=True) returns
        def update(self, figure):
            pass

    monkeypatch.setattr(IPython.display, "display", lambda figure, display_id: Handle())
    draws = []
    monkeypatch.setattr(plot, "_draw_history", lambda axes, history, points=(): draws.append(1))
    live = plot.LivePlot(_history(), min_interval=3600)
    draws.clear()
    for _ in range(50):
        live.update([(0.5, 1.0, 0.5)])
    assert draws == []  # all within the interval: skipped
    live.update([(1.0, 0.9, 0.6)], force=True)  # the end of an epoch is always drawn
    assert draws == [1]

"""Plots shared by the chapters: training curves (live and after the fact), bars, scatters."""
from __future__ import annotations

import os
import time
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: figures are shown only where we display them
from matplotlib.ticker import MaxNLocator

from . import config


def _show_figures_inline() -> None:
    """In a Jupyter kernel, register the PNG formatter so returned Figures are drawn.

    The chapters build figures without pyplot (no global state, nothing shown twice);
    IPython only knows how to render them once the inline backend is active.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and "IPKernelApp" in getattr(shell, "config", {}):
        shell.run_line_magic("matplotlib", "inline")


_show_figures_inline()


def _new_figure(ncols: int = 1, size=(4.2, 3.0)):
    figure = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    axes = figure.subplots(1, ncols)
    return figure, axes


def _draw_history(axes, history, points=(), evaluated_on: str = "test"):
    loss_ax, acc_ax = axes
    loss_ax.clear()
    acc_ax.clear()
    epochs = list(range(1, history.epochs + 1))
    if points:
        xs, losses, accs = zip(*points)
        loss_ax.plot(xs, losses, color="C0", alpha=0.5, label="train loss (running)")
        acc_ax.plot(xs, accs, color="C1", alpha=0.5, label="train acc (running)")
    if epochs:
        loss_ax.plot(epochs, history.train_loss, "o-", color="C0", label="train loss")
        acc_ax.plot(epochs, history.train_acc, "o-", color="C1", label="train acc")
        acc_ax.plot(epochs, history.test_acc, "s--", color="C2", label=f"{evaluated_on} acc")
    loss_ax.set(xlabel="epoch", ylabel="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.lines:
            ax.legend(fontsize=8)


def plot_history(*histories, title: str | None = None, labels=None, evaluated_on: str = "test"):
    """Loss (left) and accuracy (right) per epoch; several histories share the axes.
    ``evaluated_on`` names the data ``fit`` evaluated on (its ``test_iter``), e.g. "validation"."""
    figure, axes = _new_figure(2)
    if len(histories) == 1:
        _draw_history(axes, histories[0], evaluated_on=evaluated_on)
    else:
        labels = labels or [h.meta.get("name", f"run {i}") for i, h in enumerate(histories)]
        for i, (history, label) in enumerate(zip(histories, labels)):
            epochs = range(1, history.epochs + 1)
            axes[0].plot(epochs, history.train_loss, "o-", color=f"C{i}", label=label)
            axes[1].plot(epochs, history.test_acc, "s--", color=f"C{i}", label=f"{label} ({evaluated_on})")
        axes[0].set(xlabel="epoch", ylabel="train loss")
        axes[1].set(xlabel="epoch", ylabel=f"{evaluated_on} accuracy")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            last = max(h.epochs for h in histories)
            ax.set_xlim(0.5, last + 0.5)  # whole epochs, even for a one-epoch run
            if last <= 12:
                ax.set_xticks(range(1, last + 1))
            ax.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return figure


def plot_budget() -> float:
    """``$CNN_PLOT_BUDGET``: the share of training time the live plot may spend drawing."""
    raw = os.environ.get("CNN_PLOT_BUDGET", "").strip()
    if not raw:
        return 0.04
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ValueError(f"CNN_PLOT_BUDGET={raw!r} must be a fraction in (0, 1], e.g. 0.04 (or unset it)")
    return value


class LivePlot:
    """Training curves redrawn in place in a Jupyter output while ``fit`` runs.

    A redraw (drawing the curves, then Jupyter encoding the figure as a PNG) takes about
    0.15 s on a laptop CPU, a large share of a short epoch. So the plot keeps to a time
    budget: an ordinary update draws only while the time spent drawing, plus one draw kept
    in reserve for the end, stays within ``budget`` (4%) of the time since training began.
    ``force=True`` (the end of training, or an interruption) always draws; the first
    figure appears once the budget allows one (after about 7 s) or at the end.
    ``$CNN_PLOT_BUDGET`` (a fraction, default 0.04) sets the default budget: 1 redraws at
    almost every update, which makes even a run of a few seconds animate.
    """

    def __init__(self, history, budget: float | None = None, first_cost: float = 0.15):
        self.history = history
        self.budget = budget if budget is not None else plot_budget()
        self.started = time.perf_counter()
        self.spent = 0.0          # seconds spent drawing so far
        self.cost = first_cost    # expected seconds per draw: measured after the first one
        self.figure = self.axes = self.handle = None

    def update(self, points, force: bool = False) -> bool:
        """Redraw with the points of the current epoch if the budget allows (or ``force``);
        returns whether it drew."""
        start = time.perf_counter()
        if not force and self.spent + 2 * self.cost > self.budget * (start - self.started):
            return False
        if self.figure is None:
            self.figure, self.axes = _new_figure(2)
        _draw_history(self.axes, self.history, points)
        if self.handle is None:
            from IPython.display import display

            self.handle = display(self.figure, display_id=True)
        else:
            self.handle.update(self.figure)
        self.cost = time.perf_counter() - start
        self.spent += self.cost
        return True


def bar_chart(values: dict, *, ylabel: str, title: str | None = None, log: bool = False,
              horizontal: bool = False):
    """One bar per name; ``values`` maps name to number (several series: name -> dict)."""
    names = list(values)
    first = next(iter(values.values()))
    series = list(first) if isinstance(first, dict) else [None]
    legend_width = 0.0 if series == [None] else 0.3 + 0.065 * max(len(str(key)) for key in series)
    figure, ax = _new_figure(1, size=(max(4.5, 0.55 * len(values) + 2) + legend_width, 3.2))
    width = 0.8 / len(series)
    for j, key in enumerate(series):
        heights = [values[n][key] if key is not None else values[n] for n in names]
        offsets = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
        draw = ax.barh if horizontal else ax.bar
        draw(offsets, heights, width, label=key, color=f"C{j}")
    if horizontal:
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel(ylabel)
        if log:
            ax.set_xscale("log")
    else:
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
    if series != [None]:  # beside the axes, where it cannot cover a bar
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.grid(alpha=0.3, axis="x" if horizontal else "y")
    if title:
        ax.set_title(title)
    return figure


def _renderer(figure):
    """A renderer for ``figure``, after laying it out as saving it would."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(figure.canvas, "get_renderer"):
        FigureCanvasAgg(figure)
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    return renderer


# Where a label may go, in points from its marker: nearest first, then further out.
_LABEL_OFFSETS = [(dx * d, dy * d) for d in (4, 12, 22, 34)
                  for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))]


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def label_points(ax, points, *, fontsize: float = 7) -> list:
    """Write each ``(x, y, text)`` of ``points`` beside its marker so that no label covers
    another label or a marker and each stays inside the axes where there is room: every place
    from :data:`_LABEL_OFFSETS` is tried, nearest first, and the least crowded one is kept. A
    label set away from its marker gets a thin leader line. Draw the markers and set the scales
    and limits first: the layout is fixed here. Returns the annotations."""
    from matplotlib.transforms import Bbox

    figure = ax.figure
    renderer = _renderer(figure)
    frame = ax.get_window_extent(renderer)
    scale = figure.dpi / 72  # points to display units
    radius = 3.5 * scale
    centres = [ax.transData.transform((x, y)) for x, y, _ in points]
    taken = [Bbox.from_extents(cx - radius, cy - radius, cx + radius, cy + radius) for cx, cy in centres]
    annotations = []
    for x, y, text in points:
        best = None
        for dx, dy in _LABEL_OFFSETS:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            trial = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                                fontsize=fontsize, ha=ha, va=va)
            box = trial.get_window_extent(renderer)
            trial.remove()
            outside = box.width * box.height - _overlap(box, frame)
            cost = sum(_overlap(box, other) for other in taken) + 4 * outside
            if best is None or cost < best[0]:
                best = (cost, dx, dy, ha, va, box)
            if cost == 0:
                break
        _, dx, dy, ha, va, box = best
        leader = dict(arrowstyle="-", lw=0.5, color="0.5", shrinkA=0, shrinkB=3) if max(abs(dx), abs(dy)) > 4 else None
        annotation = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                                 fontsize=fontsize, ha=ha, va=va, arrowprops=leader)
        annotation.set_in_layout(False)  # placed for this layout: it must not change it
        annotations.append(annotation)
        taken.append(box)
    return annotations


def scatter(points: dict, *, xlabel: str, ylabel: str, title: str | None = None,
            logx: bool = False, logy: bool = False):
    """Labelled points: ``points`` maps name to ``(x, y)``; labels are placed so that none
    covers another (:func:`label_points`)."""
    figure, ax = _new_figure(1, size=(5.0, 3.6))
    for i, (name, (x, y)) in enumerate(points.items()):
        ax.scatter([x], [y], color=f"C{i % 10}", s=30)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.margins(0.12)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    label_points(ax, [(x, y, name) for name, (x, y) in points.items()], fontsize=8)
    return figure


def line_plot(series: dict, *, xlabel: str, ylabel: str, title: str | None = None,
              logx: bool = False, logy: bool = False, marker: str = "o-"):
    """Several curves: ``series`` maps label to ``(xs, ys)``."""
    figure, ax = _new_figure(1, size=(5.0, 3.4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker, label=label, markersize=4)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return figure


def filters(weight, columns: int = 16, *, title: str | None = None):
    """Each filter of a convolution weight ``(out, in, k, k)`` as a small image, normalised to
    [0, 1] on its own; 3 input channels are drawn in colour, any other number as their mean."""
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:
        w = w.mean(dim=1, keepdim=True)
    low, high = w.amin(dim=(1, 2, 3), keepdim=True), w.amax(dim=(1, 2, 3), keepdim=True)
    w = ((w - low) / (high - low).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()
    rows = -(-len(w) // columns)
    figure = Figure(figsize=(0.45 * columns, 0.45 * rows + (0.3 if title else 0)), layout="constrained")
    for i, ax in enumerate(figure.subplots(rows, columns, squeeze=False).flat):
        ax.set_axis_off()
        if i < len(w):
            ax.imshow(w[i] if w.shape[-1] == 3 else w[i, :, :, 0], cmap="gray", vmin=0, vmax=1)
    if title:
        figure.suptitle(title)
    return figure


def save_figure(figure, name: str) -> Path:
    """Save ``figure`` as ``results/figures/<name>.png`` and return the path."""
    path = config.results_dir() / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


# Architecture diagrams live in utils.diagram; the chapters reach them through utils.plot.
from .diagram import architecture, compare_architectures  # noqa: E402,F401


def mask_grid(masks: dict, *, title: str | None = None, cmap: str = "Greys", cell_lines: bool = True,
              vmax: float | None = None, panel_size: float = 2.4):
    """2-D grids side by side, one panel per entry of ``masks`` (panel title -> (H, W) array or
    tensor): which input pixels a kernel reads, which units a dropout mask keeps. Each cell is
    one pixel or unit; with ``cell_lines`` thin lines separate the cells. Dark = large."""
    import numpy as np

    grids = {name: np.asarray(mask, dtype=float) for name, mask in masks.items()}
    for name, grid in grids.items():
        if grid.ndim != 2:
            raise ValueError(f"mask_grid: panel {name!r} must be 2-D, got shape {grid.shape}")
    aspect = max(grid.shape[0] / grid.shape[1] for grid in grids.values())  # panels as tall as needed
    title_lines = max(str(name).count("\n") + 1 for name in grids)
    figure = Figure(figsize=(panel_size * len(grids), panel_size * aspect + 0.2 * title_lines + 0.15
                             + (0.3 if title else 0)), layout="constrained")
    axes = figure.subplots(1, len(masks), squeeze=False)[0]
    for ax, (name, grid) in zip(axes, grids.items()):
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=vmax if vmax is not None else max(1.0, grid.max()))
        ax.set_xticks([]), ax.set_yticks([])
        if cell_lines:
            ax.set_xticks(np.arange(-0.5, grid.shape[1], 1), minor=True)
            ax.set_yticks(np.arange(-0.5, grid.shape[0], 1), minor=True)
            ax.grid(which="minor", color="0.75", linewidth=0.4)
            ax.tick_params(which="both", length=0)
        ax.set_title(name, fontsize=9)
    if title:
        figure.suptitle(title)
    return figure

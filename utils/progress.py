"""How training shows its progress: live curves in Jupyter, a tqdm bar elsewhere."""
from __future__ import annotations

import sys


def in_notebook() -> bool:
    """True inside a Jupyter kernel (live plots), False in a terminal (tqdm bar)."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class ProgressView:
    """Live curves in Jupyter, a tqdm bar and one line per epoch elsewhere."""

    def __init__(self, history, epochs: int, batches: int, progress):
        self.history, self.epochs, self.batches = history, epochs, batches
        self.notebook = in_notebook() if progress == "auto" else progress == "notebook"
        self.enabled = progress is not False and progress != "off"
        self.points = []  # (fractional epoch, loss, train acc) within epochs
        self.bar = None
        self.live = None
        if not self.enabled:
            return
        if self.notebook:
            from .plot import LivePlot

            self.live = LivePlot(history)
        else:
            from tqdm import tqdm

            self.bar = tqdm(total=batches, leave=False, file=sys.stderr, mininterval=0.5,
                            desc=f"epoch {history.epochs + 1}/{epochs}")

    def batch(self, x, loss, acc):
        self.points.append((x, loss, acc))
        if self.live is not None:
            self.live.update(self.points)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", refresh=False)

    def step(self):
        if self.bar is not None:
            self.bar.update()

    def epoch_end(self):
        if not self.enabled:
            return
        if self.live is not None:
            self.live.update(self.points)  # within its time budget; the last epoch is forced
        if self.bar is not None:
            self.bar.write(self.history.summary())
            self.bar.reset()
            self.bar.set_description(f"epoch {min(self.history.epochs + 1, self.epochs)}/{self.epochs}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def final(self, show_plot: bool):
        if not self.enabled:
            return
        if self.live is not None:
            self.live.update(self.points, force=True)
        elif show_plot and self.history.epochs:
            print("The curves so far: history.plot()")

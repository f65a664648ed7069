"""The book's training loop against ours, on the same model, data, device and settings.

    python -m benchmarks.d2l_vs_utils                    # both configurations, 5 repeats
    python -m benchmarks.d2l_vs_utils --quick            # small subsets: checks that it all works
    python -m benchmarks.d2l_vs_utils --config data-bound --repeats 5
    python -m benchmarks.d2l_vs_utils --overhead-only    # only where utils.train.fit's time goes

For each configuration the same network is trained three times per repeat, in an order
that rotates from one repeat to the next, each time in a fresh Python process:

- **d2l**: the book's code as printed, ``d2l.load_data_fashion_mnist`` (torchvision
  dataset, PIL transforms, a ``DataLoader`` with the book's 4 worker processes) and
  ``d2l.train_ch6`` (SGD, Xavier init, its animator and accumulators);
- **utils**: ``utils.data.fashion_mnist`` (the data held as one tensor on the device) and
  ``utils.train.fit`` as the chapters call it (tqdm progress bar, metrics, a checkpoint
  written after the epoch);
- **bare**: the reference floor, the same tensors and layout as ``fit`` but nothing besides
  forward, loss, backward, SGD step and the evaluation.

Repeat ``k`` uses seed ``k`` for every loop (initial weights and shuffling; the subsets
stay the same), so the spread of the test accuracies over the repeats shows the noise that
"the same accuracy" is judged against.

The wall time is end to end: from just before the data are loaded to the end of the last
evaluation (the model is built before the clock starts; the Python start-up and library
imports are not timed, for either loop: ``torch.optim`` imports ``torch._dynamo``, 1.5 s
here, on its first use, which importing d2l does already through torchvision, so each
worker imports it before starting the clock).
Reported per loop: medians over the repeats of the wall time, examples/s (training
examples / wall time), test accuracy, and the achieved training rate in GFLOP/s
(``utils.profile.count_train_flops`` per example x examples / wall time) with its share of
this machine's measured matrix-multiply rate (``utils.profile.matmul_gflops``).

d2l is optional: ``pip install --no-deps d2l==1.0.3`` plus what it imports (``pandas
requests scipy matplotlib-inline``; d2l 1.0.3 pins old
releases of numpy, torch and matplotlib, hence ``--no-deps``). Without it the benchmark says
so and can still measure the helpers' own overhead (``--overhead-only``).

The book's loader downloads through torchvision into ``../data`` relative to the working
directory. To run offline, the benchmark decompresses the Fashion-MNIST files that
``utils.data`` finds into ``benchmarks/out/data/FashionMNIST/raw/`` (torchvision's layout;
torchvision then skips the download) and runs the d2l side from ``benchmarks/out/work/``.
``d2l.load_data_fashion_mnist`` has no subset option: when a configuration trains on a
subset, the book's ``DataLoader`` is rebuilt the same way (same batch size, shuffling and
workers) over a ``torch.utils.data.Subset`` holding exactly the examples that
``utils.data.fashion_mnist(train_subset=...)`` keeps.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from utils import checkpoint as checkpoints
from utils import config, data, profile, train
from utils.progress import ProgressView
from utils.runtime import eval_mode

OUT = config.REPO_ROOT / "benchmarks" / "out"
D2L_DATA = OUT / "data"              # d2l reads "../data" ...
D2L_WORKDIR = OUT / "work"           # ... relative to this working directory
RESULT_MARK = "BENCHMARK-RESULT "
LOOPS = ("d2l", "utils", "bare")
SUBSET_SEED = 0  # the training/test subsets (compute-bound, --quick) are the same in every run
LABELS = {"d2l": "book (d2l.train_ch6)", "utils": "utils.train.fit",
          "bare": "bare loop (reference floor)"}
D2L_MISSING = """\
The book's package d2l is not installed, so the book's loop cannot be timed.
Install it without its (old, pinned) dependencies, plus what it imports:
    pip install --no-deps d2l==1.0.3
    pip install pandas requests scipy matplotlib-inline
or measure only the helpers' overhead: python -m benchmarks.d2l_vs_utils --overhead-only"""


class D2LMissing(ImportError):
    """The optional ``d2l`` package is not installed."""


# ----------------------------------------------------------------------------- models

def bn_lenet() -> nn.Sequential:
    """D2L's concise BN-LeNet (section 8.5): LeNet with batch norm after every conv/linear layer."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.BatchNorm2d(6), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.BatchNorm2d(16), nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), nn.BatchNorm1d(120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.BatchNorm1d(84), nn.Sigmoid(),
        nn.Linear(84, 10))


SMALL_VGG_STAGES = ((1, 16), (1, 32), (2, 64), (2, 128), (2, 128))  # VGG-11 at 1/4 width


def small_vgg(side: int = 64) -> nn.Sequential:
    """VGG-11 at a quarter of its width (as D2L trains it), with 512-wide classifier layers,
    for ``side`` x ``side`` inputs: five stages halve the side five times."""
    layers, channels = [], 1
    for convs, width in SMALL_VGG_STAGES:
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    final = side // 2 ** len(SMALL_VGG_STAGES)
    return nn.Sequential(
        *layers, nn.Flatten(),
        nn.Linear(channels * final * final, 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, 10))


@dataclass(frozen=True)
class Setting:
    """One benchmark configuration: identical for both loops."""

    name: str
    model: str              # "bn_lenet" or "small_vgg"
    side: int               # image side the model sees (28 = no resize)
    batch_size: int
    lr: float
    epochs: int
    train_subset: int | None
    test_subset: int | None
    what: str

    @property
    def resize(self) -> int | None:
        return None if self.side == 28 else self.side

    def build(self) -> nn.Module:
        return bn_lenet() if self.model == "bn_lenet" else small_vgg(self.side)


SETTINGS = {
    "data-bound": Setting("data-bound", "bn_lenet", 28, 256, 1.0, 1, None, None,
                          "BN-LeNet, 28 px, the full 60,000/10,000 images, batch 256, lr 1.0, 1 epoch"),
    "compute-bound": Setting("compute-bound", "small_vgg", 64, 128, 0.05, 1, 6_000, 2_000,
                             "VGG-11 at 1/4 width, 64 px, 6,000 training / 2,000 test images "
                             "(the same subset for both), batch 128, lr 0.05, 1 epoch"),
}


def setting(name: str, quick: bool = False) -> Setting:
    """The named setting; ``quick`` shrinks it to a subset that runs in seconds."""
    chosen = SETTINGS[name]
    if quick:
        # at least 5 batches: train_ch6 updates its plot every num_batches // 5 batches
        chosen = replace(chosen, train_subset=2_560 if chosen.model == "bn_lenet" else 640,
                         test_subset=500, what=chosen.what + " [--quick: subsets]")
    return chosen


# ----------------------------------------------------------------------------- the same subset for both

def subset_indices(total: int, size: int | None, seed: int) -> torch.Tensor | None:
    """The indices ``utils.data.fashion_mnist`` keeps for ``train_subset``/``test_subset``
    (its training subset uses ``seed``, its test subset ``seed + 1``)."""
    if size is None or size >= total:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[:size].sort().values


def restrict_loader(loader, indices, shuffle: bool):
    """The book's ``DataLoader`` rebuilt over a subset of its dataset, everything else equal."""
    if indices is None:
        return loader
    return torch.utils.data.DataLoader(torch.utils.data.Subset(loader.dataset, indices.tolist()),
                                       loader.batch_size, shuffle=shuffle,
                                       num_workers=loader.num_workers)


# ----------------------------------------------------------------------------- d2l side

def import_d2l():
    """``d2l.torch``, or :class:`D2LMissing` with the install instructions."""
    try:
        from d2l import torch as d2l
    except ImportError as exc:
        raise D2LMissing(f"{D2L_MISSING}\n(import error: {exc})") from None
    return d2l


def prepare_d2l_data() -> Path:
    """Put Fashion-MNIST where the book's loader looks, in torchvision's layout, offline.

    torchvision checks for the *decompressed* files in ``<root>/FashionMNIST/raw`` and
    downloads only when they are missing, so we decompress the files ``utils.data``
    uses (checksums of recompressed ``.gz`` copies, such as Debian's, would not match).
    """
    raw = D2L_DATA / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    source = data.find_data_dir(download=False)
    for name in data.FILES.values():
        target = raw / name.removesuffix(".gz")
        if not target.exists() or target.stat().st_size == 0:
            with gzip.open(source / name, "rb") as packed, open(target, "wb") as plain:
                shutil.copyfileobj(packed, plain)
    D2L_WORKDIR.mkdir(parents=True, exist_ok=True)
    return raw


def run_d2l(chosen: Setting, seed: int = 0) -> dict:
    """One end-to-end run of the book's loop; returns the measurements. ``seed`` sets the
    initial weights and the shuffling (through torch's global generator, as the book's
    ``DataLoader`` uses it); the subsets are the same for every seed."""
    d2l = import_d2l()
    prepare_d2l_data()
    os.chdir(D2L_WORKDIR)
    torch.manual_seed(seed)
    net = chosen.build()
    printed = io.StringIO()
    start = time.perf_counter()
    train_iter, test_iter = d2l.load_data_fashion_mnist(chosen.batch_size, resize=chosen.resize)
    train_iter = restrict_loader(
        train_iter, subset_indices(len(train_iter.dataset), chosen.train_subset, SUBSET_SEED), shuffle=True)
    test_iter = restrict_loader(
        test_iter, subset_indices(len(test_iter.dataset), chosen.test_subset, SUBSET_SEED + 1), shuffle=False)
    with contextlib.redirect_stdout(printed):  # the animator prints a figure's repr per update
        d2l.train_ch6(net, train_iter, test_iter, chosen.epochs, chosen.lr, torch.device("cpu"))
    wall = time.perf_counter() - start
    text = printed.getvalue()
    found = re.search(r"loss ([\d.]+), train acc ([\d.]+), test acc ([\d.]+)", text)
    speed = re.search(r"([\d.]+) examples/sec", text)
    if found is None:
        raise RuntimeError(f"could not read train_ch6's report from its output:\n{text[-500:]}")
    return {"loop": "d2l", "wall": wall, "train_examples": len(train_iter.dataset) * chosen.epochs,
            "train_loss": float(found[1]), "train_acc": float(found[2]), "test_acc": float(found[3]),
            "train_only_examples_per_sec": float(speed[1]) if speed else None}


# ----------------------------------------------------------------------------- utils side

def our_data(chosen: Setting, seed: int):
    """``utils.data``'s loaders over the same subsets as the book's, shuffled by ``seed``."""
    train_iter, test_iter = data.fashion_mnist(chosen.batch_size, resize=chosen.resize,
                                               train_subset=chosen.train_subset,
                                               test_subset=chosen.test_subset, device="cpu",
                                               seed=SUBSET_SEED)
    train_iter.generator.manual_seed(seed)
    return train_iter, test_iter


def in_fits_layout(net: nn.Module) -> bool:
    """Put ``net`` in the memory layout ``fit`` chooses on the CPU; returns whether that is
    channels-last (the inputs must then be converted too)."""
    channels_last = train.prefers_channels_last(net, torch.device("cpu"))
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return channels_last


def run_utils(chosen: Setting, seed: int = 0) -> dict:
    """One end-to-end run of ``utils.data`` + ``utils.train.fit`` as the chapters use them."""
    checkpoint = OUT / "checkpoints" / f"{chosen.name}.pt"
    checkpoint.unlink(missing_ok=True)
    torch.manual_seed(seed)
    net = chosen.build()
    start = time.perf_counter()
    train_iter, test_iter = our_data(chosen, seed)
    history = train.fit(net, train_iter, test_iter, epochs=chosen.epochs, lr=chosen.lr, device="cpu",
                        checkpoint=checkpoint, name=f"benchmark-{chosen.name}")
    wall = time.perf_counter() - start
    checkpoint.unlink(missing_ok=True)
    last = history.final()
    return {"loop": "utils", "wall": wall, "train_examples": train_iter.num_examples * chosen.epochs,
            "train_loss": last["train_loss"], "train_acc": last["train_acc"], "test_acc": last["test_acc"],
            "train_only_examples_per_sec": last["examples_per_sec"]}


def run_bare(chosen: Setting, seed: int = 0) -> dict:
    """One end-to-end run of the bare reference loop: the same tensors from ``utils.data``,
    the same initialisation and memory layout as ``fit``, then per epoch nothing but
    forward, loss, backward, SGD step and an evaluation (no metrics, progress bar or
    checkpoint). It is the floor that ``fit`` is measured against."""
    torch.manual_seed(seed)
    net = chosen.build()
    start = time.perf_counter()
    train_iter, test_iter = our_data(chosen, seed)
    train.init_xavier(net)
    channels_last = in_fits_layout(net)
    for _ in range(chosen.epochs):
        bare_epoch(net, train_iter, chosen.lr, channels_last)
        test_acc = train.evaluate(net, test_iter, "cpu", channels_last=channels_last)
    wall = time.perf_counter() - start
    return {"loop": "bare", "wall": wall, "train_examples": train_iter.num_examples * chosen.epochs,
            "test_acc": test_acc, "train_only_examples_per_sec": None}


# ----------------------------------------------------------------------------- where fit's time goes

def _timed(function):
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def bare_epoch(net, train_iter, lr: float, channels_last: bool = False) -> None:
    """The minimal training epoch over the same loader: forward, loss, backward, SGD step
    (in the memory layout ``fit`` chooses, so that the difference is ``fit``'s overhead)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for X, y in train_iter:
        if channels_last:
            X = X.contiguous(memory_format=torch.channels_last)
        loss = loss_fn(net(X), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def overhead(chosen: Setting, repeats: int = 3, seed: int = 0) -> dict:
    """Medians (seconds) of the parts of one epoch of ``fit`` and of a bare loop around it.

    - ``data``: iterating the training ``DeviceLoader`` alone (conversion, resize);
    - ``bare_train``: a bare training epoch over it; ``evaluate``: ``train.evaluate``;
    - ``fit_terminal``: ``fit`` as the chapters call it in a terminal (tqdm bar, checkpoint);
    - ``fit_notebook``: the same with the live plot, Jupyter's PNG encoding emulated;
      ``live_plot``: the time spent inside the live plot during that run;
    - ``bookkeeping``: what ``fit`` does per batch besides training, timed alone;
    - ``checkpoint``: one ``checkpoint.save`` alone.
    """
    train_iter, test_iter = our_data(chosen, seed)
    torch.manual_seed(seed)
    net = chosen.build()
    channels_last = in_fits_layout(net)
    checkpoint = OUT / "checkpoints" / f"overhead-{chosen.name}.pt"
    parts: dict[str, list[float]] = {k: [] for k in ("data", "bare_train", "evaluate", "fit_terminal",
                                                       "fit_notebook", "live_plot", "bookkeeping",
                                                       "checkpoint")}

    def run_fit(progress):
        checkpoint.unlink(missing_ok=True)
        return train.fit(net, train_iter, test_iter, epochs=chosen.epochs, lr=chosen.lr, device="cpu",
                         checkpoint=checkpoint, name="overhead", progress=progress)

    for _ in range(repeats):
        parts["data"].append(_timed(lambda: [None for _ in train_iter])[0])
        parts["bare_train"].append(_timed(lambda: bare_epoch(net, train_iter, chosen.lr, channels_last))[0])
        parts["evaluate"].append(_timed(lambda: train.evaluate(
            net, test_iter, "cpu", channels_last=channels_last))[0])
        seconds, history = _timed(lambda: run_fit("auto"))
        parts["fit_terminal"].append(seconds)
        with jupyter_rendering() as drawing:
            parts["fit_notebook"].append(_timed(lambda: run_fit("notebook"))[0])
        parts["live_plot"].append(sum(drawing))
        optimizer = torch.optim.SGD(net.parameters(), lr=chosen.lr)
        parts["checkpoint"].append(_timed(lambda: checkpoints.save(
            checkpoint, net=net, optimizer=optimizer, scheduler=None, scaler=None,
            history=history.to_dict(), train_iter=train_iter, settings={}))[0])
        checkpoint.unlink(missing_ok=True)
        parts["bookkeeping"].append(bookkeeping(net, train_iter))
    return {key: statistics.median(values) for key, values in parts.items()}


@contextlib.contextmanager
def jupyter_rendering():
    """Outside Jupyter, make ``fit``'s live plot cost what it costs inside: every display
    or update encodes the figure as a PNG (the inline backend's work). Yields the list of
    seconds spent in each of the live plot's updates."""
    import IPython.display

    from utils.plot import LivePlot

    class Handle:
        def update(self, figure):
            figure.savefig(io.BytesIO(), format="png")

    def display(figure, display_id=False):
        figure.savefig(io.BytesIO(), format="png")
        return Handle()

    spent, update = [], LivePlot.update

    def timed_update(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return update(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    shown = IPython.display.display
    IPython.display.display, LivePlot.update = display, timed_update
    try:
        yield spent
    finally:
        IPython.display.display, LivePlot.update = shown, update


class _ReplayStep:
    """Stands in for ``train.TrainStep``: returns stored ``(loss, logits)`` pairs instead of
    training, so that ``train.train_epoch`` runs everything else it does per batch."""

    def __init__(self, net, outputs):
        self.model, self.outputs, self.device, self.calls = net, outputs, torch.device("cpu"), 0

    def __call__(self, X, y):
        self.calls += 1
        return self.outputs[(self.calls - 1) % len(self.outputs)][:2]


def bookkeeping(net, train_iter, stored: int = 8) -> float:
    """Seconds that everything ``fit`` does per batch besides the training step itself
    costs over one epoch: ``train.train_epoch`` itself (moving batches, the memory layout,
    the running metrics, reading them at the report points) and the tqdm bar, run over one
    epoch of batches with a step that replays the outputs of ``stored`` real batches."""
    with eval_mode(net), torch.no_grad():
        outputs = [(nn.functional.cross_entropy(logits := net(X), y), logits, y)
                   for _, (X, y) in zip(range(stored), train_iter)]
    batches = [(X, y) for X, y in train_iter]  # the loader's own time is measured as "data"
    view = ProgressView(train.History(), 1, len(batches), progress="auto")
    step = _ReplayStep(net, outputs)
    start = time.perf_counter()
    train.train_epoch(step, batches, channels_last=in_fits_layout(net),
                      on_report=lambda i, m: view.batch((i + 1) / len(batches), m.mean_loss(), m.accuracy()),
                      on_batch=lambda i: view.step())
    seconds = time.perf_counter() - start
    view.close()
    return seconds


def overhead_report(chosen: Setting, parts: dict) -> list[str]:
    epoch = parts["bare_train"] + parts["evaluate"]
    terminal = parts["bookkeeping"] + parts["checkpoint"]
    notebook = terminal + parts["live_plot"]
    rows = [
        ("data pipeline alone (DeviceLoader: uint8 -> float, resize)", parts["data"]),
        ("bare training epoch (forward, loss, backward, SGD step)", parts["bare_train"]),
        ("evaluation (train.evaluate on the test set)", parts["evaluate"]),
        ("fit's per-batch bookkeeping, timed alone (running metrics, tqdm bar)", parts["bookkeeping"]),
        ("one checkpoint.save alone", parts["checkpoint"]),
        ("live plot in Jupyter (time inside it during a fit epoch, PNG encoding emulated)",
         parts["live_plot"]),
        ("fit in a terminal (tqdm, checkpoint), whole epoch", parts["fit_terminal"]),
        ("fit in Jupyter (live plot, checkpoint), whole epoch", parts["fit_notebook"]),
    ]
    layout = ("channels-last" if train.prefers_channels_last(chosen.build(), torch.device("cpu"))
              else "default (NCHW)")
    lines = [f"Where fit's time goes ({chosen.name}: {chosen.what}; memory layout {layout}, "
             "as fit chooses it; medians, seconds)", ""]
    lines += ["| part | seconds | share of a bare epoch |", "|---|--:|--:|"]
    lines += [f"| {label} | {seconds:.3f} | {seconds / epoch:.1%} |" for label, seconds in rows]
    lines += ["", f"What fit adds to a bare epoch with evaluation ({epoch:.3f} s), timed directly: "
              f"{terminal:.3f} s = {terminal / epoch:.1%} in a terminal (bookkeeping and checkpoint), "
              f"{notebook:.3f} s = {notebook / epoch:.1%} in Jupyter (adding the live plot). "
              f"Whole fit epochs took {parts['fit_terminal'] / epoch:.1%} (terminal) and "
              f"{parts['fit_notebook'] / epoch:.1%} (Jupyter) of the bare epoch; on a shared 2-core "
              "machine such differences of two long timings are mostly noise."]
    return lines


# ----------------------------------------------------------------------------- the comparison

def run_worker(loop: str, name: str, quick: bool, seed: int = 0) -> int:
    chosen = setting(name, quick)
    import torch._dynamo  # noqa: F401  (an import, not training: see the module's docstring)

    try:
        result = {"d2l": run_d2l, "utils": run_utils, "bare": run_bare}[loop](chosen, seed)
    except D2LMissing as exc:
        print(exc, file=sys.stderr)
        return 3
    print(RESULT_MARK + json.dumps(result))
    return 0


def run_once(loop: str, name: str, quick: bool, seed: int = 0) -> dict:
    """One run in a fresh process (so neither loop inherits caches or threads of the other)."""
    command = [sys.executable, "-m", "benchmarks.d2l_vs_utils", "--worker", loop, "--config", name,
               "--seed", str(seed)]
    command += ["--quick"] if quick else []
    done = subprocess.run(command, cwd=config.REPO_ROOT, capture_output=True, text=True)
    if done.returncode == 3:
        raise D2LMissing(done.stderr.strip())
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_MARK):])


def summarise(chosen: Setting, runs: list[dict], train_flops: int, peak: float) -> dict:
    """Medians per loop and the ratio of the wall times."""
    summary = {}
    by_loop = {loop: [r for r in runs if r["loop"] == loop] for loop in LOOPS}
    for loop, mine in by_loop.items():
        if not mine:
            continue
        wall = statistics.median(r["wall"] for r in mine)
        examples = mine[0]["train_examples"]
        gflops = train_flops * examples / wall / 1e9
        summary[loop] = {"wall": wall, "walls": [r["wall"] for r in mine],
                         "examples_per_sec": examples / wall,
                         "test_acc": statistics.median(r["test_acc"] for r in mine),
                         "test_accs": [r["test_acc"] for r in mine],
                         "train_only_examples_per_sec": statistics.median(
                             r["train_only_examples_per_sec"] or 0 for r in mine),
                         "gflops": gflops, "share_of_peak": gflops / peak}
    summary["peak"] = peak
    for loop in ("utils", "bare"):
        if "d2l" in summary and loop in summary:
            summary[loop]["speedup"] = summary["d2l"]["wall"] / summary[loop]["wall"]
            # each repeat runs both loops back to back: their ratio is less exposed to slow drifts
            summary[loop]["speedup_per_repeat"] = [
                book["wall"] / ours["wall"] for book, ours in zip(by_loop["d2l"], by_loop[loop])]
    if "utils" in summary and "speedup" in summary["utils"]:
        summary["speedup"] = summary["utils"]["speedup"]
    if "utils" in summary and "bare" in summary:
        summary["fit_over_bare"] = summary["utils"]["wall"] / summary["bare"]["wall"]
    return summary


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def markdown(results: dict, overheads: dict, args, started: str) -> str:
    command = "python -m benchmarks.d2l_vs_utils " + " ".join(args.argv)
    lines = ["# Performance: the book's training loop vs utils.train.fit (and a bare loop)", "",
             f"- machine: {machine()}, device cpu",
             f"- date: {started} (UTC); load average when written: "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (1, 5, 15 min; above 2 means "
             "other processes shared the 2 cores and the times are inflated)",
             f"- command: `{command.strip()}`",
             "- float32 matrix-multiply rate (utils.profile.matmul_gflops, mean of one measurement before "
             "and one after each configuration's runs; the share column divides by it): "
             + (", ".join(f"{name} {summary['peak']:.1f} GFLOP/s" for name, (_, summary) in results.items())
                or "not measured"),
             f"- medians of {args.repeats} repeats in rotating order, each run in a fresh process; wall time "
             "is end to end (data loading, training, evaluation)", ""]
    lines += ["| configuration | loop | wall s (median) | examples/s | test acc | training GFLOP/s "
              "| share of matmul rate | speed-up |", "|---|---|--:|--:|--:|--:|--:|--:|"]
    for name, (chosen, summary) in results.items():
        for loop in LOOPS:
            if loop not in summary:
                continue
            s = summary[loop]
            speedup = f"{s['speedup']:.2f}x" if "speedup" in s else ""
            speedup = f"**{speedup}**" if loop == "utils" and speedup else speedup
            label = LABELS[loop]
            lines.append(f"| {name} | {label} | {s['wall']:.1f} | {s['examples_per_sec']:,.0f} | "
                         f"{s['test_acc']:.3f} | {s['gflops']:.1f} | {s['share_of_peak']:.1%} | {speedup} |")
    lines.append("")
    for name, (chosen, summary) in results.items():
        lines.append(f"- **{name}**: {chosen.what}.")
        for loop in LOOPS:
            if loop in summary:
                s = summary[loop]
                line = (f"  {loop}: wall times {', '.join(f'{w:.1f}' for w in s['walls'])} s; "
                        f"test acc {', '.join(f'{a:.3f}' for a in s['test_accs'])}")
                if s["train_only_examples_per_sec"]:
                    line += (f"; training-only rate as the loop itself reports it "
                             f"{s['train_only_examples_per_sec']:,.0f} examples/s")
                if "speedup_per_repeat" in s:
                    line += (f"; speed-up over the book within each repeat "
                             f"{', '.join(f'{x:.2f}' for x in s['speedup_per_repeat'])}x (median "
                             f"{statistics.median(s['speedup_per_repeat']):.2f}x)")
                lines.append(line + ".")
        if "fit_over_bare" in summary:
            lines.append(f"  fit took {summary['fit_over_bare']:.1%} of the bare loop's median wall time.")
    for chosen, parts in overheads.values():
        lines += [""] + overhead_report(chosen, parts)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=[*SETTINGS, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small subsets (seconds): a check, not a measurement")
    parser.add_argument("--overhead-only", action="store_true", help="only measure where fit's time goes")
    parser.add_argument("--no-overhead", action="store_true", help="skip measuring fit's overhead")
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown report (default results/performance.md; results/performance-quick.md with --quick)")
    parser.add_argument("--worker", choices=LOOPS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.worker:
        return run_worker(args.worker, args.config, args.quick, args.seed)

    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    # written after each configuration, so an interrupted run still leaves its medians
    output = args.output or config.results_dir() / ("performance-quick.md" if args.quick else "performance.md")
    names = list(SETTINGS) if args.config == "all" else [args.config]
    print(f"machine: {machine()}", flush=True)
    results = {}
    if not args.overhead_only:
        try:
            import_d2l()
        except D2LMissing as exc:
            print(exc, file=sys.stderr)
            return 3
        for name in names:
            chosen = setting(name, args.quick)
            train_flops = profile.train_flops_per_example(chosen.build(), (1, chosen.side, chosen.side))
            print(f"\n{name}: {chosen.what}\n  {train_flops / 1e6:.2f} MFLOPs per training example "
                  "(forward + backward)", flush=True)
            peak_before = profile.matmul_gflops()
            runs = []
            for repeat in range(args.repeats):
                order = LOOPS[repeat % 3:] + LOOPS[:repeat % 3]  # each loop first, second and last
                for loop in order:
                    # one seed per repeat (weights, shuffling) for every loop: the spread of
                    # the accuracies over the repeats shows what "within noise" means
                    result = run_once(loop, name, args.quick, seed=repeat)
                    runs.append(result)
                    print(f"  repeat {repeat + 1} {loop:5s}: {result['wall']:6.1f} s, test acc "
                          f"{result['test_acc']:.3f}", flush=True)
            peak = statistics.mean((peak_before, profile.matmul_gflops()))
            summary = summarise(chosen, runs, train_flops, peak)
            results[name] = (chosen, summary)
            if "speedup" in summary:
                print(f"  medians: d2l {summary['d2l']['wall']:.1f} s, utils {summary['utils']['wall']:.1f} s, "
                      f"bare {summary['bare']['wall']:.1f} s -> utils is {summary['speedup']:.2f}x faster "
                      f"end to end (the bare loop {summary['bare']['speedup']:.2f}x)", flush=True)
            write(output, markdown(results, {}, args, started))
    overheads = {}
    for name in [] if args.no_overhead else names:
        chosen = setting(name, args.quick)
        print(f"\nmeasuring fit's overhead on {chosen.name} ({args.repeats} repeats) ...", flush=True)
        overheads[name] = (chosen, overhead(chosen, repeats=args.repeats))
        print("\n".join(overhead_report(*overheads[name])), flush=True)
        write(output, markdown(results, overheads, args, started))
    text = markdown(results, overheads, args, started)
    write(output, text)
    print(f"\n{text}\nwrote {output}")
    return 0


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())

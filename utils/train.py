"""Training: ``fit``, the loop it runs (``train_epoch``, ``evaluate``) and the ``History``
it returns.

``fit`` trains a classifier with minibatch SGD (or another optimizer), evaluates test
accuracy after every epoch, draws live curves in Jupyter (a tqdm bar elsewhere), writes a
checkpoint after every epoch and resumes from it exactly (``utils.checkpoint``), and stops
with an explanation when the loss stops being a number. The device choices (precision,
memory layout, autotuning) are ``utils.runtime``'s.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import checkpoint as checkpoints
from . import config, distributed, profile, runtime
from .checkpoint import CheckpointError, atomic_write  # noqa: F401  (part of this module's surface)
from .progress import ProgressView
from .runtime import amp_dtype, eval_mode, prefers_channels_last  # noqa: F401

HISTORY_FORMAT = 1
UPDATES_PER_EPOCH = 4  # points per epoch where fit reads the metrics (and waits for the device)
DIVERGED_STREAK = 3  # this many non-finite batch losses in a row mean the run has diverged


class TrainingDiverged(FloatingPointError):
    """The training loss stayed NaN or infinite, or the weights stopped being finite."""


# ----------------------------------------------------------------------------- history

@dataclass
class History:
    """Per-epoch results of a training run; saved to and loaded from JSON.

    ``seconds`` is the wall time of the whole epoch (training and evaluation);
    ``examples_per_sec`` counts training examples over the training part only;
    ``nonfinite_batches`` counts the batches whose loss was NaN or infinite (left out of
    the epoch's loss and accuracy; under fp16 the gradient scaler skipped their step).
    """

    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    examples_per_sec: list = field(default_factory=list)
    nonfinite_batches: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    interrupted: bool = False

    KEYS = ("train_loss", "train_acc", "test_acc", "seconds", "examples_per_sec")

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def record(self, *, nonfinite_batches: int = 0, **values) -> None:
        for key in self.KEYS:
            getattr(self, key).append(float(values[key]))
        self.nonfinite_batches.append(int(nonfinite_batches))

    def final(self) -> dict:
        """The last epoch's numbers (empty before the first epoch ends)."""
        return {key: getattr(self, key)[-1] for key in self.KEYS} if self.epochs else {}

    def summary(self) -> str:
        """One line: loss, accuracies, speed, device."""
        if not self.epochs:
            return "no epoch completed"
        last = self.final()
        return (f"epoch {self.epochs}: loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, "
                f"test acc {last['test_acc']:.3f}, {last['examples_per_sec']:,.0f} examples/s "
                f"on {self.meta.get('device', '?')}")

    def to_dict(self) -> dict:
        return {"format": HISTORY_FORMAT, **{key: getattr(self, key) for key in self.KEYS},
                "nonfinite_batches": self.nonfinite_batches, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        columns = {key: list(data[key]) for key in cls.KEYS}
        skipped = list(data.get("nonfinite_batches") or [0] * len(columns["train_loss"]))
        return cls(**columns, nonfinite_batches=skipped, meta=dict(data.get("meta", {})))

    def save(self, path) -> Path:
        """Write the history as JSON (atomically) and return the path. In a distributed run
        only rank 0 writes (every rank holds the same history)."""
        if not distributed.is_main():
            return Path(path)
        text = json.dumps(self.to_dict(), indent=1).encode()
        atomic_write(path, lambda handle: handle.write(text))
        return Path(path)

    @classmethod
    def load(cls, path) -> "History":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a saved History ({exc}); delete it and retrain") from None

    def plot(self, title: str | None = None):
        """Loss and accuracy curves of the epochs so far (a matplotlib figure)."""
        from .plot import plot_history

        return plot_history(self, title=title)


def history_path(name: str) -> Path:
    """Where a chapter saves the history of model ``name`` for chapter 10."""
    return config.results_dir() / "histories" / f"{name}-{config.profile()}.json"


def checkpoint_path(name: str) -> Path:
    """Where a chapter keeps the checkpoint of model ``name`` under the current profile."""
    return config.results_dir() / "checkpoints" / f"{name}-{config.profile()}.pt"


# ----------------------------------------------------------------------------- helpers

def init_xavier(net: nn.Module) -> None:
    """Xavier-uniform weights for every linear and convolutional layer (as the book does)."""
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)


def accuracy_count(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions, as a tensor (no device synchronisation)."""
    return (logits.argmax(dim=1) == labels).sum()


def main_output(output):
    """Models with auxiliary classifiers return ``(main, aux, ...)`` while training."""
    return output[0] if isinstance(output, (tuple, list)) else output


def limited(batches, max_steps: int | None):
    """The first ``max_steps`` items of ``batches`` (all of them when None)."""
    for i, batch in enumerate(batches):
        if max_steps is not None and i >= max_steps:
            return
        yield batch


# ----------------------------------------------------------------------------- one epoch

class RunningMetrics:
    """Training loss and accuracy summed over an epoch on the device: adding a batch does
    not wait for the device; reading the means does. Batches whose loss is not finite are
    counted apart (``nonfinite``) and left out of the means; ``longest_streak`` is the
    longest run of them in a row, carried over from ``previous_streak``."""

    def __init__(self, device, previous_streak: int = 0):
        zero = lambda dtype=torch.float32: torch.zeros((), dtype=dtype, device=device)  # noqa: E731
        self.loss_sum, self.correct, self.counted = zero(), zero(torch.long), zero(torch.long)
        self.nonfinite_count, self.streak = zero(torch.long), zero(torch.long) + previous_streak
        self.longest = self.streak.clone()
        self.seen = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        loss = loss.detach().float()
        finite = torch.isfinite(loss)
        n = len(labels)
        self.loss_sum += torch.where(finite, loss * n, 0.0)
        self.correct += torch.where(finite, accuracy_count(logits.detach(), labels), 0)
        self.counted += finite.long() * n
        self.nonfinite_count += (~finite).long()
        self.streak = torch.where(finite, 0, self.streak + 1)
        self.longest = torch.maximum(self.longest, self.streak)
        self.seen += n

    def mean_loss(self) -> float:
        counted = self.counted.item()
        return self.loss_sum.item() / counted if counted else math.nan

    def accuracy(self) -> float:
        counted = self.counted.item()
        return self.correct.item() / counted if counted else math.nan

    def nonfinite(self) -> int:
        return int(self.nonfinite_count.item())

    def diverged(self) -> bool:
        """The loss was not finite for ``DIVERGED_STREAK`` batches in a row."""
        return self.longest.item() >= DIVERGED_STREAK


def report_points(batches: int, updates_per_epoch: int = UPDATES_PER_EPOCH) -> set[int]:
    """The batch indices after which ``fit`` reads the running metrics (and so waits for the
    device): ``updates_per_epoch`` evenly spaced points, the last batch among them."""
    updates = max(1, min(updates_per_epoch, batches))
    return {round(batches * (k + 1) / updates) - 1 for k in range(updates)}


def combined_loss(loss_fn, output, y, aux_weight: float):
    """``(loss, main output)``: the main head's loss plus ``aux_weight`` times each auxiliary
    head's (GoogLeNet and Inception-v3 return ``(main, aux, ...)`` while training)."""
    if isinstance(output, (tuple, list)):
        main = output[0]
        return loss_fn(main, y) + aux_weight * sum(loss_fn(o, y) for o in output[1:]), main
    return loss_fn(output, y), output


@dataclass
class TrainStep:
    """One optimisation step: forward in the chosen precision, the loss (with auxiliary
    heads), backward (scaled under fp16), optional gradient clipping, the optimizer step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    device: torch.device
    dtype: torch.dtype | None = None
    scaler: object = None
    aux_weight: float = 0.3
    grad_clip: float | None = None

    def __call__(self, X, y):
        with runtime.autocast(self.device, self.dtype):
            loss, main = combined_loss(self.loss_fn, self.model(X), y, self.aux_weight)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
        else:
            loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when a gradient is not finite
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss.detach(), main.detach()


def train_epoch(step: TrainStep, train_iter, *, channels_last: bool = False, max_steps=None,
                previous_streak: int = 0, on_report=None, on_batch=None) -> RunningMetrics:
    """Train for one pass over ``train_iter`` (at most ``max_steps`` batches) and return the
    running metrics. ``on_report(batch_index, metrics)`` is called at ``report_points``,
    ``on_batch(batch_index)`` after every batch (it must not wait for the device)."""
    step.model.train()
    batches = len(train_iter) if max_steps is None else min(len(train_iter), max_steps)
    report_at = report_points(batches)
    metrics = RunningMetrics(step.device, previous_streak)
    for i, (X, y) in enumerate(limited(train_iter, max_steps)):
        X, y = X.to(step.device, non_blocking=True), y.to(step.device, non_blocking=True)
        loss, logits = step(runtime.to_layout(X, channels_last), y)
        metrics.add(loss, logits, y)
        if on_report is not None and i in report_at:  # the only points that wait for the device
            on_report(i, metrics)
        if on_batch is not None:
            on_batch(i)
    return metrics


def evaluate(net: nn.Module, data_iter, device=None, *, dtype: torch.dtype | None = None,
             channels_last: bool = False, max_steps: int | None = None) -> float:
    """Accuracy of ``net`` on ``data_iter`` (at most ``max_steps`` batches), in eval mode, in
    the precision and memory layout given (``fit`` passes the ones it trains with)."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with eval_mode(net), torch.no_grad(), runtime.autocast(device, dtype):
        for X, y in limited(data_iter, max_steps):
            X, y = runtime.to_layout(X.to(device), channels_last), y.to(device)
            correct += accuracy_count(main_output(net(X)), y)
            total += len(y)
    if isinstance(data_iter, distributed.ShardedLoader):  # each rank saw its shard: add them up
        counts = distributed.all_reduce_(torch.stack([correct, torch.tensor(total, device=device)]))
        correct, total = counts[0], int(counts[1].item())
    return correct.item() / max(total, 1)


def weights_finite(net: nn.Module) -> bool:
    """Whether every parameter is finite (one wait for the device)."""
    checks = [torch.isfinite(p).all() for p in net.parameters()]
    return not checks or bool(torch.stack(checks).all())


# ----------------------------------------------------------------------------- set-up

def check_positive(name, value, kind=float):
    """``value`` must be a positive number (``kind=int``: a positive whole ``int``)."""
    if kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0
    else:
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and math.isfinite(value) and value > 0)
    if not ok:
        what = "a positive integer (an int such as 10)" if kind is int else "a positive number"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def make_optimizer(optimizer, params, lr, momentum=0.0, weight_decay=0.0):
    """'sgd', 'adam', 'adamw', or a function ``(params, lr) -> Optimizer``."""
    if callable(optimizer):
        return optimizer(params, lr)
    choices = {
        "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay),
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
    }
    if optimizer not in choices:
        raise ValueError(f"optimizer must be one of {sorted(choices)} or a function "
                         f"(params, lr) -> torch.optim.Optimizer, got {optimizer!r}")
    return choices[optimizer]()


_IMPLEMENTATION_ONLY = {"params", "foreach", "fused", "capturable", "differentiable"}
_SCHEDULER_PROGRESS = {"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step",
                       "_is_initial", "lr_lambdas"}


def _plain(value):
    """A setting as a value that survives a checkpoint and compares by value."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (bool, int, float, str, type(None))) else repr(value)


def run_settings(opt, sched, loss_fn, train_iter, *, epochs, aux_weight, grad_clip, dtype) -> dict:
    """Every setting that changes what a run computes, flat and named, so that resuming
    under another one is refused with the difference spelled out. ``epochs`` counts only
    with a scheduler (a schedule such as cosine is built for the number of epochs; without
    one, training on for more epochs continues the same run)."""
    settings = {"optimizer": type(opt).__name__}
    groups = opt.state_dict()["param_groups"]
    for i, group in enumerate(groups):
        prefix = "" if len(groups) == 1 else f"group {i} "
        settings.update({prefix + k: _plain(v) for k, v in group.items() if k not in _IMPLEMENTATION_ONLY})
    if sched is not None:
        settings["scheduler"] = type(sched).__name__
        settings.update({f"scheduler {k}": _plain(v) for k, v in sched.state_dict().items()
                         if k not in _SCHEDULER_PROGRESS})
        settings["epochs"] = epochs
    settings["loss"] = type(loss_fn).__name__
    settings["label_smoothing"] = getattr(loss_fn, "label_smoothing", None)
    settings.update(aux_weight=aux_weight, grad_clip=grad_clip, amp=runtime.precision_name(dtype))
    settings.update(data_settings(train_iter))
    if distributed.active():  # the effective batch is world_size times the loader's
        settings["world_size"] = distributed.world_size()
    return settings


def data_settings(train_iter) -> dict:
    """What a loader feeds: batch size, image shape, which examples, augmentation, normalisation."""
    labels = getattr(train_iter, "labels", None)
    augment = getattr(train_iter, "augment", None)
    return {
        "batch_size": getattr(train_iter, "batch_size", None),
        "image_shape": _plain(list(getattr(train_iter, "image_shape", []) or [])),
        "train_examples": getattr(train_iter, "num_examples", None),
        "train_labels": (hashlib.sha1(labels.cpu().numpy().tobytes()).hexdigest()[:16]
                         if isinstance(labels, torch.Tensor) else None),
        "augment": None if augment is None else _describe(augment),
        "normalize": _plain(getattr(train_iter, "normalize", None)),
    }


def _describe(thing) -> str:
    """A callable's class and plain settings, e.g. ``RandomCropFlip(flip=True, padding=4)``."""
    fields = {k: v for k, v in sorted(getattr(thing, "__dict__", {}).items())
              if isinstance(v, (bool, int, float, str)) and not k.startswith("_")}
    name = getattr(thing, "__qualname__", type(thing).__qualname__)
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


def describe_run(net, train_iter, *, name, device, epochs, lr, dtype, channels_last) -> dict:
    """The ``History.meta`` of a run: what it trains, where and how."""
    image_shape = list(getattr(train_iter, "image_shape", []) or [])
    examples = getattr(train_iter, "num_examples", None)
    per_example = profile.train_flops_per_example(net, image_shape) if image_shape else None
    return {"name": name or type(net).__name__, "device": str(device), "profile": config.profile(),
            "lr": float(lr), "epochs": epochs, "batch_size": getattr(train_iter, "batch_size", None),
            "image_shape": image_shape, "train_examples": examples,
            # what the run costs as planned (a dry run's cut epochs do not change it)
            "train_flops_per_example": per_example,
            "train_flops": per_example * examples * epochs if per_example and examples else None,
            "amp": runtime.precision_name(dtype), "channels_last": bool(channels_last),
            "max_steps": config.max_steps(),
            **({"world_size": distributed.world_size()} if distributed.active() else {})}


# ----------------------------------------------------------------------------- cost ledger

def cost_ledger_path() -> Path:
    """Every ``fit`` call appends one line here: what it trained and what that cost."""
    return config.results_dir() / "costs.jsonl"


def log_cost(history: History, first_epoch: int) -> None:
    """Append this call's training cost to the ledger (rank 0 only): the epochs it trained
    times the planned FLOPs of one epoch (a dry run's cut epochs count at their planned size,
    so a dry run prices the real run). ``utils.reference`` sums the lines of each chapter."""
    meta = history.meta
    trained = history.epochs - first_epoch
    if not distributed.is_main() or not trained:
        return
    per_epoch = (meta.get("train_flops_per_example") or 0) * (meta.get("train_examples") or 0)
    line = {"name": meta.get("name"), "profile": meta.get("profile"), "epochs": trained,
            "train_flops": per_epoch * trained or None,
            "seconds": round(sum(history.seconds[first_epoch:]), 2), "dry_run": bool(meta.get("max_steps"))}
    path = cost_ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:  # one short line per call: appends do not interleave
        handle.write(json.dumps(line) + "\n")


# ----------------------------------------------------------------------------- fit

def fit(net: nn.Module, train_iter, test_iter, *, epochs: int, lr: float, device=None,
        optimizer="sgd", momentum: float = 0.0, weight_decay: float = 0.0,
        label_smoothing: float = 0.0, aux_weight: float = 0.3, scheduler=None,
        grad_clip: float | None = None, init: str | None = "xavier", checkpoint=None,
        resume: bool = True, name: str | None = None, amp="auto", channels_last="auto",
        compile: bool = False, progress="auto") -> History:
    """Train ``net`` and return its ``History``.

    - ``optimizer``: 'sgd' (default, as the book), 'adam', 'adamw', or a function
      ``(params, lr) -> Optimizer``; ``scheduler``: a function ``optimizer -> LRScheduler``,
      stepped once per epoch.
    - ``init='xavier'`` re-initialises linear and conv weights first, as the book's
      ``train_ch6`` does; pass ``init=None`` to keep the weights (e.g. a pretrained net).
    - Models that return ``(main, aux1, ...)`` in training mode get
      ``loss(main) + aux_weight * sum(loss(aux))``.
    - ``checkpoint``: a path. After every epoch the state is written there atomically; if
      the file exists when ``fit`` starts it resumes from it exactly, or refuses, naming
      each setting that differs (``resume=False`` moves it aside to ``*.bak`` instead).
    - Precision and layout (``utils.runtime``): on a CUDA GPU mixed precision (``amp``:
      bf16 where native, else fp16 with a gradient scaler), channels-last memory and cuDNN
      autotuning (restored afterwards); ``compile=True`` adds ``torch.compile``. On a CPU,
      full precision, and channels-last for networks whose first convolution is at least
      16 channels wide. Evaluation uses the same precision and layout.
    - Diverged (``TrainingDiverged``): the loss is NaN or infinite for ``DIVERGED_STREAK``
      batches in a row, or the weights are no longer finite at an epoch's end. A single
      non-finite batch is counted (``History.nonfinite_batches``) and left out of the means.
    - ``$CNN_MAX_STEPS`` cuts every epoch and evaluation to that many batches (a dry run).
    - Ctrl-C (or Jupyter's stop button) ends training cleanly: the history so far is
      returned with ``interrupted=True`` and the checkpoint is kept; run again to resume.
    - Inside ``torchrun`` (``utils.distributed``): each rank trains on its shard of every
      epoch (``batch_size`` per rank), the model is wrapped in DistributedDataParallel,
      the reported sums are all-reduced, and only rank 0 prints, checkpoints and saves.
    """
    check_positive("epochs", epochs, int)
    check_positive("lr", lr)
    if init not in ("xavier", None):
        raise ValueError(f"init must be 'xavier' or None, got {init!r}")
    if distributed.setup():  # launched by torchrun; outside it nothing below changes
        device = torch.device(device) if device is not None else distributed.device()
        train_iter, test_iter = distributed.shard(train_iter), distributed.shard(test_iter)
        progress = progress if distributed.is_main() else False
    device = torch.device(device) if device is not None else config.device()
    dtype = amp_dtype(device, amp)
    channels_last = runtime.resolve_channels_last(net, device, channels_last)
    if init == "xavier":
        init_xavier(net)
    net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    opt = make_optimizer(optimizer, net.parameters(), lr, momentum, weight_decay)
    sched = scheduler(opt) if scheduler is not None else None
    model = distributed.data_parallel(net, device)
    step = TrainStep(torch.compile(model) if compile else model, opt,
                     nn.CrossEntropyLoss(label_smoothing=label_smoothing), device, dtype,
                     runtime.grad_scaler(device, dtype), aux_weight, grad_clip)
    settings = run_settings(opt, sched, step.loss_fn, train_iter, epochs=epochs, aux_weight=aux_weight,
                            grad_clip=grad_clip, dtype=dtype)
    history = History(meta=describe_run(net, train_iter, name=name, device=device, epochs=epochs,
                                        lr=lr, dtype=dtype, channels_last=channels_last))
    if checkpoint is not None:
        history = _start_or_resume(Path(checkpoint), resume, step, sched, history, train_iter, settings)
    if distributed.is_main():
        _announce_dry_run(train_iter, test_iter)
    view = ProgressView(history, epochs, min(len(train_iter), config.max_steps() or len(train_iter)), progress)
    loop = _EpochLoop(step, sched, history, view, train_iter, test_iter, channels_last, checkpoint, settings)
    first_epoch = history.epochs
    try:
        with runtime.cudnn_autotuning(device.type == "cuda"):
            for epoch in range(history.epochs, epochs):
                loop.run_epoch(epoch)
    except KeyboardInterrupt:
        return _interrupted(history, view, checkpoint)
    except RuntimeError as exc:
        if distributed.active() and distributed.is_collective_failure(exc):
            raise distributed.lost_rank_error(exc) from exc
        raise
    finally:
        view.close()
        log_cost(history, first_epoch)
    view.final(show_plot=False)
    return history


@dataclass
class _EpochLoop:
    """What ``fit`` does in one epoch: train, evaluate, step the schedule, record, checkpoint."""

    step: TrainStep
    sched: object
    history: History
    view: ProgressView
    train_iter: object
    test_iter: object
    channels_last: bool
    checkpoint: Path | None
    settings: dict
    streak: int = 0

    def run_epoch(self, epoch: int) -> None:
        start = time.perf_counter()
        batches = self.view.batches

        def report(i, metrics):
            if distributed.active():  # every rank must agree to stop, or the others would wait
                distributed.all_reduce_(metrics.longest, distributed.dist.ReduceOp.MAX)
            if metrics.diverged():
                raise TrainingDiverged(_diverged_message(epoch, i, self))
            self.view.batch(epoch + (i + 1) / batches, metrics.mean_loss(), metrics.accuracy())

        metrics = train_epoch(self.step, self.train_iter, channels_last=self.channels_last,
                              max_steps=config.max_steps(), previous_streak=self.streak, on_report=report,
                              on_batch=lambda i: self.view.step())
        if distributed.active():
            distributed.all_reduce_metrics(metrics)
        self.streak = int(metrics.streak.item())
        if not weights_finite(self.step.model):
            raise TrainingDiverged(_diverged_message(epoch, None, self))
        train_seconds = time.perf_counter() - start
        test_acc = evaluate(self.step.model, self.test_iter, self.step.device, dtype=self.step.dtype,
                            channels_last=self.channels_last, max_steps=config.max_steps())
        if self.sched is not None:
            self.sched.step()
        self.history.record(train_loss=metrics.mean_loss(), train_acc=metrics.accuracy(), test_acc=test_acc,
                            seconds=time.perf_counter() - start, examples_per_sec=metrics.seen / train_seconds,
                            nonfinite_batches=metrics.nonfinite())
        if self.checkpoint is not None and distributed.is_main():
            checkpoints.save(self.checkpoint, net=_original(self.step.model), optimizer=self.step.optimizer,
                             scheduler=self.sched, scaler=self.step.scaler, history=self.history.to_dict(),
                             train_iter=self.train_iter, settings=self.settings)
        self.view.epoch_end()


def _original(model: nn.Module) -> nn.Module:
    """The module itself, not ``torch.compile``'s or DDP's wrapper (its state dict has no prefix)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _start_or_resume(path: Path, resume: bool, step: TrainStep, sched, history: History,
                     train_iter, settings: dict) -> History:
    """Start a fresh run at ``path`` or continue the one saved there; returns the history.
    In a distributed run rank 0 tidies up first; then every rank reads the same file."""
    exists = path.exists()
    if distributed.is_main():
        checkpoints.remove_stale_temporaries(path)
        if exists and not resume:
            backup = path.with_name(path.name + ".bak")
            os.replace(path, backup)
            print(f"resume=False: the old checkpoint was moved to {backup}")
    distributed.barrier()
    if not exists or not resume:
        return history
    state = checkpoints.load(path, _original(step.model), settings)
    _original(step.model).load_state_dict(state["model"])
    step.optimizer.load_state_dict(state["optimizer"])
    if sched is not None:
        sched.load_state_dict(state["scheduler"])
    if step.scaler is not None and state["scaler"] is not None:
        step.scaler.load_state_dict(state["scaler"])
    checkpoints.restore_random_states(state["rng"], train_iter)
    # The epochs so far come from the checkpoint; the description is this run's.
    resumed = History.from_dict({**state["history"], "meta": history.meta})
    done = " (already complete)" if resumed.epochs >= history.meta["epochs"] else ""
    if distributed.is_main():
        print(f"Resumed from {path} after epoch {resumed.epochs}{done}")
    return resumed


def _announce_dry_run(train_iter, test_iter) -> None:
    cap = config.max_steps()
    if cap is not None and (len(train_iter) > cap or len(test_iter) > cap):
        print(f"CNN_MAX_STEPS={cap}: each epoch trains on {min(cap, len(train_iter))} of "
              f"{len(train_iter)} batches and evaluates {min(cap, len(test_iter))} of "
              f"{len(test_iter)} (a dry run: the numbers mean nothing)")


def _interrupted(history: History, view: ProgressView, checkpoint) -> History:
    history.interrupted = True
    view.close()
    where = (f"The checkpoint {checkpoint} holds epoch {history.epochs}; run the cell again "
             "to resume from it." if checkpoint is not None else
             "Pass checkpoint=... to fit to be able to resume after an interruption.")
    print(f"\nInterrupted during epoch {history.epochs + 1}: returning the {history.epochs} "
          f"completed epoch(s). {where}")
    view.final(show_plot=True)
    return history


def _diverged_message(epoch: int, batch: int | None, loop: _EpochLoop) -> str:
    lr = loop.history.meta["lr"]
    what = (f"The training loss was NaN or infinite for {DIVERGED_STREAK} batches in a row in epoch "
            f"{epoch + 1} (by batch {batch + 1})" if batch is not None else
            f"The weights stopped being finite numbers in epoch {epoch + 1}")
    path = loop.checkpoint
    kept = (f" The checkpoint of the last good epoch ({loop.history.epochs}) is kept at {path}; "
            "delete it before retraining with another learning rate."
            if path is not None and Path(path).exists() else "")
    return (f"{what}. The likely cause is a learning rate too large for this model: lr={lr:g}. "
            f"Try lr={lr / 10:g}, or add batch normalization.{kept}")

"""Training: ``fit`` and the ``History`` it returns.

``fit`` trains a classifier with minibatch SGD (or another optimizer), evaluates test
accuracy after every epoch, draws live curves in Jupyter (a tqdm bar elsewhere),
writes a checkpoint atomically after every epoch and resumes from it, and stops with
an explanation when the loss stops being a number.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import config

CHECKPOINT_FORMAT = 1


class TrainingDiverged(FloatingPointError):
    """The training loss became NaN or infinite."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, or belongs to another model or setting."""


# ----------------------------------------------------------------------------- files

def atomic_write(path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it over
    ``path``: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- history

@dataclass
class History:
    """Per-epoch results of a training run; saved to and loaded from JSON.

    ``seconds`` is the wall time of the whole epoch (training and evaluation);
    ``examples_per_sec`` counts training examples over the training part only.
    """

    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    examples_per_sec: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    interrupted: bool = False

    KEYS = ("train_loss", "train_acc", "test_acc", "seconds", "examples_per_sec")

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def record(self, **values) -> None:
        for key in self.KEYS:
            getattr(self, key).append(float(values[key]))

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
        return {"format": CHECKPOINT_FORMAT, **{key: getattr(self, key) for key in self.KEYS},
                "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict) -> "History":
        return cls(**{key: list(data[key]) for key in cls.KEYS}, meta=dict(data.get("meta", {})))

    def save(self, path) -> Path:
        """Write the history as JSON (atomically) and return the path."""
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


class RunningMetrics:
    """Training loss and accuracy summed over an epoch on the device: adding a batch does
    not wait for the device; reading the means does."""

    def __init__(self, device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float() * len(labels)
        self.correct += accuracy_count(logits.detach(), labels)
        self.seen += len(labels)

    def mean_loss(self) -> float:
        return self.loss_sum.item() / self.seen

    def accuracy(self) -> float:
        return self.correct.item() / self.seen


def report_points(batches: int, updates_per_epoch: int) -> set[int]:
    """The batch indices after which ``fit`` reads the running metrics (and so waits for the
    device): ``updates_per_epoch`` evenly spaced points, the last batch among them."""
    updates = max(1, min(updates_per_epoch, batches))
    return {round(batches * (k + 1) / updates) - 1 for k in range(updates)}


def evaluate_accuracy(net: nn.Module, data_iter, device=None, *, channels_last: bool = False) -> float:
    """Accuracy of ``net`` on every example of ``data_iter``, in eval mode."""
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            if channels_last:
                X = X.contiguous(memory_format=torch.channels_last)
            correct += accuracy_count(_main_output(net(X)), y)
            total += len(y)
    net.train(was_training)
    return correct.item() / max(total, 1)


def _main_output(output):
    """Models with auxiliary classifiers return ``(main, aux, ...)`` while training."""
    return output[0] if isinstance(output, (tuple, list)) else output


def model_signature(net: nn.Module) -> str:
    """Class name and parameter shapes, hashed: tells whether a checkpoint fits a model."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in net.state_dict().items())
    return f"{type(net).__name__}:" + hashlib.sha1(shapes.encode()).hexdigest()[:16]


def _check_positive(name, value, kind=float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or (kind is float and not math.isfinite(value)):
        what = "a positive integer" if kind is int else "a positive number"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def _make_optimizer(optimizer, params, lr, momentum, weight_decay):
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


def amp_dtype(device: torch.device, amp) -> torch.dtype | None:
    """The autocast dtype for ``amp`` = 'auto' | 'bf16' | 'fp16' | None on ``device``.

    'auto' means bf16 on GPUs that run it natively (Ampere and later), fp16 (with a
    gradient scaler) on older GPUs, and full precision on CPUs and Apple GPUs.
    """
    if amp in (None, False, "off"):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp != "auto":
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or None, got {amp!r}")
    if device.type != "cuda":
        return None
    # Some GPUs report bf16 only through slow emulation: ask for native support.
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


CHANNELS_LAST_MIN_WIDTH = 16  # float32 lanes of one AVX-512 register


def prefers_channels_last(net: nn.Module, device: torch.device) -> bool:
    """What ``channels_last='auto'`` means: whether channels-last memory (NHWC) is expected
    to train ``net`` faster on ``device``.

    - CUDA GPUs: yes for every convolutional network (cuDNN's fast kernels, tensor cores
      above all, work in NHWC).
    - CPUs: yes when the first convolution has at least 16 output channels. oneDNN's
      NHWC kernels vectorise across channels, and the first layers, working on the
      largest feature maps, take most of the time. Measured on a 2-core AVX-512 CPU, one
      training step was 1.07-1.35x faster for AlexNet, NiN, GoogLeNet, ResNet-18,
      Inception-BN and a quarter-width VGG-11 (first layers 16-96 channels wide), but
      0.82x (slower) for batch-norm LeNet, whose 6-channel layers leave most of a vector
      register empty.
    - Apple GPUs and networks without convolutions: no.
    """
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and convs[0].out_channels >= CHANNELS_LAST_MIN_WIDTH


def in_notebook() -> bool:
    """True inside a Jupyter kernel (live plots), False in a terminal (tqdm bar)."""
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(path, *, net, optimizer, scheduler, scaler, history, train_iter, settings) -> None:
    """Everything needed to continue training exactly where it stopped, written atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "signature": model_signature(net),
        "settings": settings,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history.to_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "loader": train_iter.state_dict() if hasattr(train_iter, "state_dict") else None},
    }
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path, net, settings) -> dict:
    """Read a checkpoint and check it belongs to ``net`` and ``settings``; never deletes it."""
    keep = (f"The file was left as it is. To start over, delete or rename {path}, "
            "or pass another checkpoint path.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"Checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                              f"it is probably truncated or not a checkpoint. {keep}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by utils.train.fit. {keep}")
    if state["signature"] != model_signature(net):
        raise CheckpointError(
            f"Checkpoint {path} was written by another model ({state['signature'].split(':')[0]}, "
            f"or the same class with other layer shapes) and does not fit this "
            f"{type(net).__name__}. {keep}")
    changed = {k: (state["settings"].get(k), v) for k, v in settings.items()
               if state["settings"].get(k) != v}
    if changed:
        detail = ", ".join(f"{k} was {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise CheckpointError(f"Checkpoint {path} was trained with other settings ({detail}); "
                              f"resuming would mix two runs. {keep}")
    return state


# ----------------------------------------------------------------------------- fit

def fit(net: nn.Module, train_iter, test_iter, *, epochs: int, lr: float, device=None,
        optimizer="sgd", momentum: float = 0.0, weight_decay: float = 0.0, loss=None,
        label_smoothing: float = 0.0, aux_weight: float = 0.3, scheduler=None,
        grad_clip: float | None = None, init: str | None = "xavier", checkpoint=None,
        resume: bool = True, name: str | None = None, amp="auto", channels_last="auto",
        compile: bool = False, progress="auto", updates_per_epoch: int = 4) -> History:
    """Train ``net`` and return its ``History``.

    - ``optimizer``: 'sgd' (default, as the book), 'adam', 'adamw', or a function
      ``(params, lr) -> Optimizer``; ``scheduler``: a function ``optimizer -> LRScheduler``,
      stepped once per epoch.
    - ``init='xavier'`` re-initialises linear and conv weights first, as the book's
      ``train_ch6`` does; pass ``init=None`` to keep the weights (e.g. a pretrained net).
    - Models that return ``(main, aux1, ...)`` in training mode get
      ``loss(main) + aux_weight * sum(loss(aux))``.
    - ``checkpoint``: a path. After every epoch the state is written there atomically;
      if the file exists when ``fit`` starts it resumes from it (``resume=False`` moves
      it aside to ``*.bak`` and starts over).
    - On a GPU: mixed precision (``amp``), channels-last memory and cuDNN autotuning are
      on by default; ``compile=True`` adds ``torch.compile``. On a CPU, channels-last is
      on for networks whose first convolution is at least 16 channels wide (see
      ``prefers_channels_last``); ``channels_last=True/False`` overrides the choice.
    - ``net.train()`` is called at the start of every epoch; a frozen part that must stay
      in eval mode (e.g. a backbone's batch norm) has to override ``train()``.
    - Ctrl-C (or Jupyter's stop button) ends training cleanly: the history so far is
      returned with ``interrupted=True`` and the checkpoint is kept; run again to resume.
    """
    _check_positive("epochs", epochs, int)
    _check_positive("lr", lr)
    device = torch.device(device) if device is not None else config.device()
    cuda = device.type == "cuda"
    if channels_last == "auto":
        channels_last = prefers_channels_last(net, device)
    if cuda:
        torch.backends.cudnn.benchmark = True
    dtype = amp_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda") if (dtype == torch.float16 and cuda) else None

    if init == "xavier":
        init_xavier(net)
    elif init is not None:
        raise ValueError(f"init must be 'xavier' or None, got {init!r}")
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    opt = _make_optimizer(optimizer, net.parameters(), lr, momentum, weight_decay)
    sched = scheduler(opt) if scheduler is not None else None
    loss_fn = loss if loss is not None else nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    settings = {"lr": float(lr), "optimizer": optimizer if isinstance(optimizer, str) else "custom",
                "batch_size": getattr(train_iter, "batch_size", None)}
    history = History(meta={"name": name or type(net).__name__, "device": str(device),
                            "profile": config.profile(), "lr": float(lr), "epochs": epochs,
                            "batch_size": settings["batch_size"],
                            "image_shape": list(getattr(train_iter, "image_shape", []) or []),
                            "train_examples": getattr(train_iter, "num_examples", None),
                            "amp": str(dtype).replace("torch.", "") if dtype else None,
                            "channels_last": bool(channels_last)})

    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        # A process killed while writing leaves only its temporary file: remove it.
        for stale in checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        if checkpoint.exists() and not resume:
            backup = checkpoint.with_name(checkpoint.name + ".bak")
            os.replace(checkpoint, backup)
            print(f"resume=False: the old checkpoint was moved to {backup}")
        elif checkpoint.exists():
            state = load_checkpoint(checkpoint, net, settings)
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None and state["scheduler"] is not None:
                sched.load_state_dict(state["scheduler"])
            if scaler is not None and state["scaler"] is not None:
                scaler.load_state_dict(state["scaler"])
            # The epochs so far come from the checkpoint; the description is this run's.
            history = History.from_dict({**state["history"], "meta": history.meta})
            torch.set_rng_state(state["rng"]["torch"])
            if cuda and state["rng"]["cuda"] is not None:
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            if state["rng"]["loader"] is not None and hasattr(train_iter, "load_state_dict"):
                train_iter.load_state_dict(state["rng"]["loader"])
            print(f"Resumed from {checkpoint} after epoch {history.epochs}"
                  + (" (already complete)" if history.epochs >= epochs else ""))

    model = torch.compile(net) if compile else net
    view = _ProgressView(history, epochs, len(train_iter), progress)
    report_at = report_points(len(train_iter), updates_per_epoch)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext

    try:
        for epoch in range(history.epochs, epochs):
            model.train()
            start = time.perf_counter()
            metrics = RunningMetrics(device)
            for i, (X, y) in enumerate(train_iter):
                X, y = X.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if channels_last:
                    X = X.contiguous(memory_format=torch.channels_last)
                with autocast():
                    output = model(X)
                    if isinstance(output, (tuple, list)):
                        main = output[0]
                        batch_loss = loss_fn(main, y) + aux_weight * sum(loss_fn(o, y) for o in output[1:])
                    else:
                        main = output
                        batch_loss = loss_fn(main, y)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(batch_loss).backward()
                    scaler.unscale_(opt)
                else:
                    batch_loss.backward()
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                metrics.add(batch_loss, main, y)
                if i in report_at:  # the only points where the device is synchronised
                    mean_loss = metrics.mean_loss()
                    if not math.isfinite(mean_loss):
                        raise TrainingDiverged(_diverged_message(epoch, i, lr, checkpoint, history))
                    view.batch(epoch + (i + 1) / len(train_iter), mean_loss, metrics.accuracy())
                view.step()
            train_seconds = time.perf_counter() - start
            test_acc = evaluate_accuracy(model, test_iter, device, channels_last=channels_last)
            if sched is not None:
                sched.step()
            history.record(train_loss=metrics.mean_loss(), train_acc=metrics.accuracy(),
                           test_acc=test_acc, seconds=time.perf_counter() - start,
                           examples_per_sec=metrics.seen / train_seconds)
            if checkpoint is not None:
                save_checkpoint(checkpoint, net=net, optimizer=opt, scheduler=sched, scaler=scaler,
                                history=history, train_iter=train_iter, settings=settings)
            view.epoch_end()
    except KeyboardInterrupt:
        history.interrupted = True
        view.close()
        where = (f"The checkpoint {checkpoint} holds epoch {history.epochs}; run the cell again "
                 "to resume from it." if checkpoint is not None else
                 "Pass checkpoint=... to fit to be able to resume after an interruption.")
        print(f"\nInterrupted during epoch {history.epochs + 1}: returning the {history.epochs} "
              f"completed epoch(s). {where}")
        view.final(show_plot=True)
        return history
    except BaseException:
        view.close()
        raise
    view.close()
    view.final(show_plot=False)
    return history


def _diverged_message(epoch, batch, lr, checkpoint, history) -> str:
    kept = (f" The checkpoint of the last good epoch ({history.epochs}) is kept at {checkpoint}; "
            "delete it before retraining with another learning rate." if checkpoint is not None
            and Path(checkpoint).exists() else "")
    return (f"The training loss became NaN or infinite in epoch {epoch + 1} (by batch {batch + 1}). "
            f"The likely cause is a learning rate too large for this model: lr={lr:g}. "
            f"Try lr={lr / 10:g}, or add batch normalization.{kept}")


class _ProgressView:
    """Live curves in Jupyter, a tqdm bar and one line per epoch elsewhere."""

    def __init__(self, history: History, epochs: int, batches: int, progress):
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

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from utils import data, train
from utils.config import REPO_ROOT


def tiny_net(classes=10):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Flatten(), nn.Linear(4 * 7 * 7, classes))


class CountingNet(nn.Module):
    """``tiny_net`` that counts its forward calls and lets a test act on the n-th one."""

    def __init__(self, on_call):
        super().__init__()
        self.body = tiny_net()
        self.calls = 0
        self.on_call = on_call

    def forward(self, x):
        self.calls += 1
        return self.on_call(self, self.body(x))


@pytest.fixture
def loaders(fake_data):
    return data.fashion_mnist(16, device="cpu")


def test_fit_learns_and_reports(loaders):
    torch.manual_seed(0)
    history = train.fit(tiny_net(), *loaders, epochs=25, lr=0.5, progress=False, device="cpu")
    assert history.epochs == 25 and not history.interrupted
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.test_acc[-1] > 0.3  # the fake classes are brightness levels: learnable
    assert all(s > 0 for s in history.seconds) and all(e > 0 for e in history.examples_per_sec)
    assert history.meta["train_examples"] == 64 and history.meta["image_shape"] == [1, 28, 28]
    assert "test acc" in history.summary()


def test_history_json_round_trip(tmp_path, loaders):
    history = train.fit(tiny_net(), *loaders, epochs=2, lr=0.1, progress=False, name="tiny", device="cpu")
    path = history.save(tmp_path / "sub" / "tiny.json")
    loaded = train.History.load(path)
    assert loaded.to_dict() == history.to_dict()
    assert json.loads(path.read_text())["meta"]["name"] == "tiny"
    assert not list(path.parent.glob("*.tmp"))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a saved History"):
        train.History.load(path)


def test_checkpoint_resume_gives_the_uninterrupted_result(tmp_path, loaders):
    torch.manual_seed(1)
    straight = tiny_net()
    start = {k: v.clone() for k, v in straight.state_dict().items()}
    train.fit(straight, *loaders, epochs=3, lr=0.2, init=None, progress=False, device="cpu")

    train_iter, test_iter = data.fashion_mnist(16, device="cpu")
    first = tiny_net()
    first.load_state_dict(start)
    torch.manual_seed(99)  # resuming restores every random state from the checkpoint
    path = tmp_path / "run.pt"
    train.fit(first, train_iter, test_iter, epochs=1, lr=0.2, init=None, checkpoint=path, progress=False, device="cpu")
    resumed = tiny_net()
    torch.manual_seed(123)
    train_iter, test_iter = data.fashion_mnist(16, device="cpu")
    history = train.fit(resumed, train_iter, test_iter, epochs=3, lr=0.2, init=None,
                        checkpoint=path, progress=False, device="cpu")
    assert history.epochs == 3
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_rerun_of_a_finished_run_returns_at_once(tmp_path, loaders, capsys):
    path = tmp_path / "done.pt"
    history = train.fit(tiny_net(), *loaders, epochs=2, lr=0.1, checkpoint=path, progress=False, device="cpu")
    again = train.fit(tiny_net(), *loaders, epochs=2, lr=0.1, checkpoint=path, progress=False, device="cpu")
    assert again.to_dict()["train_loss"] == history.to_dict()["train_loss"]
    assert "already complete" in capsys.readouterr().out


def test_resume_false_keeps_the_old_checkpoint_as_backup(tmp_path, loaders):
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False, device="cpu")
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, resume=False, progress=False, device="cpu")
    assert path.exists() and path.with_name("run.pt.bak").exists()


def test_truncated_checkpoint_is_reported_and_kept(tmp_path, loaders):
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False, device="cpu")
    path.write_bytes(path.read_bytes()[:100])
    damaged = path.read_bytes()
    with pytest.raises(train.CheckpointError) as error:
        train.fit(tiny_net(), *loaders, epochs=2, lr=0.1, checkpoint=path, progress=False, device="cpu")
    assert str(path) in str(error.value) and "truncated" in str(error.value)
    assert "left as it is" in str(error.value)
    assert path.read_bytes() == damaged


def test_checkpoint_of_another_model_is_refused_and_kept(tmp_path, loaders):
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False, device="cpu")
    before = path.read_bytes()
    other = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(train.CheckpointError, match="another model"):
        train.fit(other, *loaders, epochs=2, lr=0.1, checkpoint=path, progress=False, device="cpu")
    with pytest.raises(train.CheckpointError, match="lr was 0.1, now 0.3"):  # noqa: PT012
        train.fit(tiny_net(), *loaders, epochs=2, lr=0.3, checkpoint=path, progress=False, device="cpu")
    assert path.read_bytes() == before


def test_not_a_checkpoint(tmp_path, loaders):
    path = tmp_path / "other.pt"
    torch.save({"weights": 1}, path)
    with pytest.raises(train.CheckpointError, match="not a checkpoint written by"):
        train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False, device="cpu")


def test_nan_loss_stops_with_the_learning_rate_named(tmp_path, loaders):
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False, device="cpu")
    with pytest.raises(train.TrainingDiverged) as error:
        train.fit(tiny_net(), *loaders, epochs=3, lr=1e20, checkpoint=tmp_path / "big.pt",
                  progress=False, device="cpu")
    message = str(error.value)
    assert "lr=1e+20" in message and "learning rate" in message and "lr=1e+19" in message
    assert not (tmp_path / "big.pt").exists()  # nothing from the diverged run was saved


def test_diverging_run_keeps_the_last_good_checkpoint(tmp_path, loaders):
    explodes_later = CountingNet(lambda net, out: out * float("nan") if net.calls > 5 else out)
    path = tmp_path / "run.pt"
    with pytest.raises(train.TrainingDiverged, match="last good epoch \\(1\\)"):
        train.fit(explodes_later, *loaders, epochs=3, lr=0.1, checkpoint=path, progress=False, device="cpu")
    assert path.exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0, lr=0.1), "epochs must be a positive integer"),
    (dict(epochs=2.5, lr=0.1), "epochs must be a positive integer"),
    (dict(epochs=2.0, lr=0.1), "epochs must be a positive integer"),
    (dict(epochs=True, lr=0.1), "epochs must be a positive integer"),
    (dict(epochs=1, lr=0.1, channels_last="yes"), "channels_last must be"),
    (dict(epochs=1, lr=0.1, init="he"), "init must be"),
    (dict(epochs=1, lr=0), "lr must be a positive number"),
    (dict(epochs=1, lr=-0.1), "lr must be a positive number"),
    (dict(epochs=1, lr=float("nan")), "lr must be a positive number"),
    (dict(epochs=1, lr=0.1, optimizer="sgdd"), "optimizer must be one of"),
    (dict(epochs=1, lr=0.1, amp="fp8"), "amp must be"),
])
def test_bad_arguments_are_explained(loaders, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train.fit(tiny_net(), *loaders, progress=False, **kwargs, device="cpu")


def test_keyboard_interrupt_returns_history_and_keeps_checkpoint(tmp_path, loaders, capsys):
    def stop_in_epoch_two(net, out):
        if net.training and net.calls == 7:  # epoch 2 (4 training batches + eval per epoch)
            raise KeyboardInterrupt
        return out

    path = tmp_path / "run.pt"
    net = CountingNet(stop_in_epoch_two)
    history = train.fit(net, *loaders, epochs=3, lr=0.1, checkpoint=path, progress=False, device="cpu")
    assert history.interrupted and history.epochs == 1
    out = capsys.readouterr().out
    assert "Interrupted during epoch 2" in out and "run the cell again" in out
    assert path.exists()
    net.calls = -100  # the rerun is not interrupted, and resumes after epoch 1
    again = train.fit(net, *loaders, epochs=3, lr=0.1, checkpoint=path, progress=False, device="cpu")
    assert again.epochs == 3 and again.train_loss[0] == history.train_loss[0]


def test_aux_outputs_are_weighted(loaders):
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = tiny_net()

        def forward(self, x):
            out = self.body(x)
            return (out, out * 0) if self.training else out

    history = train.fit(WithAux(), *loaders, epochs=1, lr=0.1, progress=False, device="cpu")
    # the aux head predicts uniform: its loss is log(10), weighted 0.3 on top of the main loss
    assert history.train_loss[0] > 0.3 * math.log(10)


def test_bf16_autocast_and_channels_last_run_on_cpu(loaders):
    history = train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, amp="bf16", channels_last=True,
                        progress=False, device="cpu")
    assert history.meta["amp"] == "bfloat16" and math.isfinite(history.train_loss[0])


def test_amp_auto_choice(monkeypatch):
    assert train.amp_dtype(torch.device("cpu"), "auto") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert train.amp_dtype(torch.device("cuda"), "auto") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert train.amp_dtype(torch.device("cuda"), "auto") == torch.float16
    assert train.amp_dtype(torch.device("cuda"), None) is None


def test_progress_bar_outside_jupyter(loaders, capsys):
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, device="cpu")
    captured = capsys.readouterr()
    assert "epoch 1: loss" in captured.err + captured.out


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from torch import nn
    sys.path.insert(0, {root!r})
    from utils import data, models, train
    torch.set_num_threads(1)

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                                      nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 7 * 7, 10))
        def forward(self, x):
            time.sleep({delay})
            return self.body(x)

    torch.manual_seed(0)
    net = Slow()
    # Augmentation with its own generator (random crops and flips), as in chapter 09.
    train_iter, test_iter = data.fashion_mnist(8, device="cpu",
                                               augment=models.RandomCropFlip(padding=2, seed=3))
    checkpoint = sys.argv[1] if sys.argv[1] != "-" else None
    cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    history = train.fit(net, train_iter, test_iter, epochs=4, lr=0.2, momentum=0.9, weight_decay=5e-4,
                        label_smoothing=0.1, scheduler=cosine, checkpoint=checkpoint, progress=False,
                        device="cpu")
    torch.save(net.state_dict(), sys.argv[2])
    print("EPOCHS", history.epochs)
""")


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, fake_data):
    """Momentum, weight decay, a cosine schedule, augmentation and label smoothing: killed
    mid-epoch and resumed, the run ends with exactly the weights of an uninterrupted one."""
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(root=str(REPO_ROOT), delay=0.03))
    subprocess.run([sys.executable, str(script), "-", str(tmp_path / "straight.pt")],
                   check=True, capture_output=True, timeout=120)
    checkpoint = tmp_path / "ckpt" / "run.pt"
    process = subprocess.Popen([sys.executable, str(script), str(checkpoint), str(tmp_path / "x.pt")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert checkpoint.exists(), "the first epoch never finished"
    time.sleep(0.1)  # well inside epoch 2 (8 batches of 0.03 s each)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    state = torch.load(checkpoint, weights_only=True)  # nothing but tensors and plain values
    saved = train.History.from_dict(state["history"])
    assert 1 <= saved.epochs < 4 and len(saved.test_acc) == saved.epochs
    stale = checkpoint.parent / f".{checkpoint.name}.killed.tmp"
    stale.write_bytes(b"half a checkpoint")  # what a kill during the write leaves behind
    result = subprocess.run([sys.executable, str(script), str(checkpoint), str(tmp_path / "resumed.pt")],
                            check=True, capture_output=True, text=True, timeout=120)
    assert "EPOCHS 4" in result.stdout and "Resumed from" in result.stdout
    assert not stale.exists() and not list(checkpoint.parent.glob("*.tmp"))
    straight = torch.load(tmp_path / "straight.pt")
    resumed = torch.load(tmp_path / "resumed.pt")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_resume_restores_the_augmentations_random_state(tmp_path, fake_data):
    """Without the augmentation's generator in the checkpoint, a resumed run would replay
    epoch 1's crops and flips: the weights would differ from an uninterrupted run."""
    from utils import models

    def run(epochs, path, start):
        net = tiny_net()
        net.load_state_dict(start)
        loaders = data.fashion_mnist(16, device="cpu", augment=models.RandomCropFlip(padding=3, seed=1))
        train.fit(net, *loaders, epochs=epochs, lr=0.2, init=None, checkpoint=path, progress=False,
                  device="cpu")
        return net

    torch.manual_seed(0)
    start = tiny_net().state_dict()
    straight = run(2, None, start)
    run(1, tmp_path / "a.pt", start)
    resumed = run(2, tmp_path / "a.pt", start)
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_every_random_state_is_saved_and_restored():
    import random

    import numpy as np

    from utils import checkpoint as checkpoints

    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    states = checkpoints.random_states()
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(10), random.random(), np.random.rand(4)
    checkpoints.restore_random_states(states)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0]) and expected[1:] == again[1:]


def test_grad_scaler_state_round_trips_through_a_checkpoint(tmp_path):
    from utils import checkpoint as checkpoints

    net = tiny_net()
    # the same class fit builds for CUDA, here on the CPU (where it is enabled too)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for inf in (True, True, False, False, False):  # two skipped steps, then three good ones
        loss = net(torch.zeros(1, 1, 28, 28)).sum() * (float("inf") if inf else 1.0)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == 256.0 and scaler._get_growth_tracker() == 3
    path = tmp_path / "scaled.pt"
    checkpoints.save(path, net=net, optimizer=opt, scheduler=None, scaler=scaler,
                     history=train.History().to_dict(), train_iter=None, settings={})
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(checkpoints.load(path, net)["scaler"])
    assert restored.get_scale() == 256.0 and restored.get_growth_interval() == 7
    assert restored._get_growth_tracker() == 3


CHANGES = [  # a setting that changes the result, and the name the refusal gives it
    (dict(momentum=0.9), "momentum was 0.0, now 0.9"),
    (dict(weight_decay=1e-4), "weight_decay was 0.0, now 0.0001"),
    (dict(label_smoothing=0.1), "label_smoothing was 0.0, now 0.1"),
    (dict(amp="bf16"), "amp was None, now 'bfloat16'"),
    (dict(aux_weight=1.0), "aux_weight was 0.3, now 1.0"),
    (dict(grad_clip=1.0), "grad_clip was None, now 1.0"),
    (dict(optimizer="adam"), "optimizer was 'SGD', now 'Adam'"),
    (dict(scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1)), "scheduler was None"),
    (dict(loader=dict(batch_size=8)), "batch_size was 16, now 8"),
    (dict(loader=dict(batch_size=16, resize=32)), "image_shape was [1, 28, 28], now [1, 32, 32]"),
    (dict(loader=dict(batch_size=16, augment=lambda x: x.flip(-1))), "augment was None"),
    (dict(loader=dict(batch_size=16, normalize=(0.5, 0.5))), "normalize was None, now [0.5, 0.5]"),
    (dict(loader=dict(batch_size=16, train_subset=32)), "train_examples was 64, now 32"),
]


@pytest.mark.parametrize("change, named", CHANGES)
def test_resume_under_another_setting_is_refused_and_kept(tmp_path, fake_data, change, named):
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *data.fashion_mnist(16, device="cpu"), epochs=1, lr=0.1, checkpoint=path,
              progress=False, device="cpu")
    before = path.read_bytes()
    change = dict(change)
    loaders = data.fashion_mnist(**change.pop("loader", dict(batch_size=16)), device="cpu")
    with pytest.raises(train.CheckpointError) as error:
        train.fit(tiny_net(), *loaders, epochs=2, lr=0.1, checkpoint=path, progress=False,
                  device="cpu", **change)
    assert named in str(error.value) and "left as it is" in str(error.value)
    assert path.read_bytes() == before


def test_schedule_length_is_compared_when_a_scheduler_is_used(tmp_path, loaders):
    cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)  # noqa: E731
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *loaders, epochs=4, lr=0.1, scheduler=cosine, checkpoint=path,
              progress=False, device="cpu")
    longer = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)  # noqa: E731
    with pytest.raises(train.CheckpointError, match="epochs was 4, now 8.*scheduler T_max was 4, now 8"):
        train.fit(tiny_net(), *loaders, epochs=8, lr=0.1, scheduler=longer, checkpoint=path,
                  progress=False, device="cpu")


def test_more_epochs_without_a_scheduler_continue_the_run(tmp_path, loaders):
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False, device="cpu")
    history = train.fit(tiny_net(), *loaders, epochs=2, lr=0.1, checkpoint=path, progress=False,
                        device="cpu")
    assert history.epochs == 2


def test_load_weights_reads_a_fit_checkpoint(tmp_path, loaders):
    from utils import checkpoint as checkpoints

    torch.manual_seed(0)
    trained = tiny_net()
    path = tmp_path / "run.pt"
    train.fit(trained, *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False, device="cpu")
    copy = tiny_net()
    history = checkpoints.load_weights(path, copy)
    assert len(history["train_loss"]) == 1
    for key, value in trained.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value)
    with pytest.raises(train.CheckpointError, match="another model"):
        checkpoints.load_weights(path, nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))


def test_a_checkpoint_that_needs_unpickling_code_is_refused(tmp_path, loaders):
    path = tmp_path / "evil.pt"
    torch.save({"format": 2, "signature": "x", "model": {}, "extra": object()}, path)
    with pytest.raises(train.CheckpointError, match="cannot be read"):
        train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False, device="cpu")


# ----------------------------------------------------------------------------- non-finite batches

def nan_on_calls(calls):
    """A ``CountingNet`` whose outputs are NaN on the given training forward calls."""
    return CountingNet(lambda net, out: out * float("nan") if net.training and net.calls in calls else out)


@pytest.mark.parametrize("amp", [None, "bf16"])
def test_one_nonfinite_batch_is_counted_not_a_divergence(loaders, amp):
    """fp16's gradient scaler skips a step whose gradients are not finite; ``fit`` counts the
    batch instead of calling the run diverged (here the NaN output has no gradient path
    into the weights, so the weights stay finite in every precision)."""
    net = CountingNet(lambda net, out: torch.where(
        torch.tensor(net.training and net.calls == 2), torch.full_like(out, float("nan")).detach(), out))
    history = train.fit(net, *loaders, epochs=2, lr=0.1, amp=amp, progress=False, device="cpu")
    assert history.nonfinite_batches == [1, 0]
    assert all(math.isfinite(v) for v in history.train_loss)


def test_three_nonfinite_batches_in_a_row_are_a_divergence(loaders):
    net = CountingNet(lambda net, out: torch.where(
        torch.tensor(net.training and net.calls in (2, 3, 4)), torch.full_like(out, float("inf")).detach(), out))
    with pytest.raises(train.TrainingDiverged, match="3 batches in a row in epoch 1"):
        train.fit(net, *loaders, epochs=2, lr=0.1, progress=False, device="cpu")


def test_nonfinite_streak_carries_over_an_epoch_boundary(loaders):
    # 4 training batches per epoch: calls 4 (end of epoch 1) and 5, 6 (start of epoch 2, after
    # evaluation's 2 calls, which do not count as training)
    bad = {4, 7, 8}
    net = CountingNet(lambda net, out: torch.where(
        torch.tensor(net.training and net.calls in bad), torch.full_like(out, float("inf")).detach(), out))
    with pytest.raises(train.TrainingDiverged, match="in a row in epoch 2"):
        train.fit(net, *loaders, epochs=3, lr=0.1, progress=False, device="cpu")


def test_running_metrics_leave_nonfinite_batches_out():
    metrics = train.RunningMetrics("cpu")
    logits, labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    metrics.add(torch.tensor(1.0), logits, labels)
    metrics.add(torch.tensor(float("inf")), logits, labels)
    metrics.add(torch.tensor(3.0), logits, labels)
    assert metrics.mean_loss() == 2.0 and metrics.accuracy() == 1.0 and metrics.nonfinite() == 1
    assert not metrics.diverged() and metrics.seen == 3


# ----------------------------------------------------------------------------- dry runs, evaluation

def test_max_steps_cuts_training_and_evaluation(loaders, monkeypatch, capsys):
    monkeypatch.setenv("CNN_MAX_STEPS", "2")
    net = CountingNet(lambda net, out: out)
    history = train.fit(net, *loaders, epochs=2, lr=0.1, progress=False, device="cpu")
    assert net.calls == 2 * (2 + 2)  # per epoch: 2 training and 2 evaluation batches
    assert history.meta["max_steps"] == 2 and history.meta["train_examples"] == 64
    assert "CNN_MAX_STEPS=2: each epoch trains on 2 of 4 batches and evaluates 2 of 2" in \
        capsys.readouterr().out.replace("evaluates 2 of 2", "evaluates 2 of 2")


class RecordsDtype(nn.Module):
    """``tiny_net`` that records, per mode (training or eval), the dtype its first layer computes in."""

    def __init__(self):
        super().__init__()
        self.body = tiny_net()
        self.seen = {True: set(), False: set()}

    def forward(self, x):
        self.seen[self.training].add(self.body[0](x).dtype)
        return self.body(x)


def test_evaluation_runs_in_the_training_precision_and_layout(loaders, monkeypatch):
    layouts = []
    real = train.runtime.to_layout
    monkeypatch.setattr(train.runtime, "to_layout", lambda x, cl: (layouts.append(cl), real(x, cl))[1])
    net = RecordsDtype()
    train.fit(net, *loaders, epochs=1, lr=0.1, amp="bf16", channels_last=True, progress=False, device="cpu")
    assert net.seen[True] == net.seen[False] == {torch.bfloat16}
    assert layouts == [True] * (4 + 2)  # 4 training and 2 evaluation batches, all channels-last


def test_evaluate_defaults_to_full_precision(loaders):
    net = RecordsDtype()
    train.evaluate(net, loaders[1], "cpu")
    assert net.seen[False] == {torch.float32}


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def fails(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        train.atomic_write(path, fails)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_running_metrics_weights_batches_by_size():
    metrics = train.RunningMetrics("cpu")
    metrics.add(torch.tensor(1.0), torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
    metrics.add(torch.tensor(4.0), torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    assert metrics.seen == 3
    assert metrics.mean_loss() == pytest.approx((1.0 * 2 + 4.0) / 3)
    assert metrics.accuracy() == pytest.approx(2 / 3)


def test_report_points_are_spread_and_include_the_last_batch():
    assert train.report_points(235, 4) == {58, 117, 175, 234}  # round(235 * k / 4) - 1
    assert train.report_points(3, 4) == {0, 1, 2}
    assert train.report_points(10, 1) == {9}

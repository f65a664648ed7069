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
    return data.fashion_mnist(16)


def test_fit_learns_and_reports(loaders):
    torch.manual_seed(0)
    history = train.fit(tiny_net(), *loaders, epochs=25, lr=0.5, progress=False)
    assert history.epochs == 25 and not history.interrupted
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.test_acc[-1] > 0.3  # the fake classes are brightness levels: learnable
    assert all(s > 0 for s in history.seconds) and all(e > 0 for e in history.examples_per_sec)
    assert history.meta["train_examples"] == 64 and history.meta["image_shape"] == [1, 28, 28]
    assert "test acc" in history.summary()


def test_history_json_round_trip(tmp_path, loaders):
    history = train.fit(tiny_net(), *loaders, epochs=2, lr=0.1, progress=False, name="tiny")
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
    train.fit(straight, *loaders, epochs=3, lr=0.2, init=None, progress=False)

    train_iter, test_iter = data.fashion_mnist(16)
    first = tiny_net()
    first.load_state_dict(start)
    torch.manual_seed(99)  # resuming restores every random state from the checkpoint
    path = tmp_path / "run.pt"
    train.fit(first, train_iter, test_iter, epochs=1, lr=0.2, init=None, checkpoint=path, progress=False)
    resumed = tiny_net()
    torch.manual_seed(123)
    train_iter, test_iter = data.fashion_mnist(16)
    history = train.fit(resumed, train_iter, test_iter, epochs=3, lr=0.2, init=None,
                        checkpoint=path, progress=False)
    assert history.epochs == 3
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_rerun_of_a_finished_run_returns_at_once(tmp_path, loaders, capsys):
    path = tmp_path / "done.pt"
    history = train.fit(tiny_net(), *loaders, epochs=2, lr=0.1, checkpoint=path, progress=False)
    again = train.fit(tiny_net(), *loaders, epochs=2, lr=0.1, checkpoint=path, progress=False)
    assert again.to_dict()["train_loss"] == history.to_dict()["train_loss"]
    assert "already complete" in capsys.readouterr().out


def test_resume_false_keeps_the_old_checkpoint_as_backup(tmp_path, loaders):
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False)
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, resume=False, progress=False)
    assert path.exists() and path.with_name("run.pt.bak").exists()


def test_truncated_checkpoint_is_reported_and_kept(tmp_path, loaders):
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False)
    path.write_bytes(path.read_bytes()[:100])
    damaged = path.read_bytes()
    with pytest.raises(train.CheckpointError) as error:
        train.fit(tiny_net(), *loaders, epochs=2, lr=0.1, checkpoint=path, progress=False)
    assert str(path) in str(error.value) and "truncated" in str(error.value)
    assert "left as it is" in str(error.value)
    assert path.read_bytes() == damaged


def test_checkpoint_of_another_model_is_refused_and_kept(tmp_path, loaders):
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False)
    before = path.read_bytes()
    other = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(train.CheckpointError, match="another model"):
        train.fit(other, *loaders, epochs=2, lr=0.1, checkpoint=path, progress=False)
    with pytest.raises(train.CheckpointError, match="lr was 0.1, now 0.3"):
        train.fit(tiny_net(), *loaders, epochs=2, lr=0.3, checkpoint=path, progress=False)
    assert path.read_bytes() == before


def test_not_a_checkpoint(tmp_path, loaders):
    path = tmp_path / "other.pt"
    torch.save({"weights": 1}, path)
    with pytest.raises(train.CheckpointError, match="not a checkpoint written by"):
        train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False)


def test_nan_loss_stops_with_the_learning_rate_named(tmp_path, loaders):
    path = tmp_path / "run.pt"
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, checkpoint=path, progress=False)
    with pytest.raises(train.TrainingDiverged) as error:
        train.fit(tiny_net(), *loaders, epochs=3, lr=1e20, checkpoint=tmp_path / "big.pt",
                  progress=False)
    message = str(error.value)
    assert "lr=1e+20" in message and "learning rate" in message and "lr=1e+19" in message
    assert not (tmp_path / "big.pt").exists()  # nothing from the diverged run was saved


def test_diverging_run_keeps_the_last_good_checkpoint(tmp_path, loaders):
    explodes_later = CountingNet(lambda net, out: out * float("nan") if net.calls > 5 else out)
    path = tmp_path / "run.pt"
    with pytest.raises(train.TrainingDiverged, match="last good epoch \\(1\\)"):
        train.fit(explodes_later, *loaders, epochs=3, lr=0.1, checkpoint=path, progress=False)
    assert path.exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(epochs=0, lr=0.1), "epochs must be a positive integer"),
    (dict(epochs=2.5, lr=0.1), "epochs must be a positive integer"),
    (dict(epochs=1, lr=0), "lr must be a positive number"),
    (dict(epochs=1, lr=-0.1), "lr must be a positive number"),
    (dict(epochs=1, lr=float("nan")), "lr must be a positive number"),
    (dict(epochs=1, lr=0.1, optimizer="sgdd"), "optimizer must be one of"),
    (dict(epochs=1, lr=0.1, amp="fp8"), "amp must be"),
])
def test_bad_arguments_are_explained(loaders, kwargs, message):
    with pytest.raises(ValueError, match=message):
        train.fit(tiny_net(), *loaders, progress=False, **kwargs)


def test_keyboard_interrupt_returns_history_and_keeps_checkpoint(tmp_path, loaders, capsys):
    def stop_in_epoch_two(net, out):
        if net.training and net.calls == 7:  # epoch 2 (4 training batches + eval per epoch)
            raise KeyboardInterrupt
        return out

    path = tmp_path / "run.pt"
    net = CountingNet(stop_in_epoch_two)
    history = train.fit(net, *loaders, epochs=3, lr=0.1, checkpoint=path, progress=False)
    assert history.interrupted and history.epochs == 1
    out = capsys.readouterr().out
    assert "Interrupted during epoch 2" in out and "run the cell again" in out
    assert path.exists()
    net.calls = -100  # the rerun is not interrupted, and resumes after epoch 1
    again = train.fit(net, *loaders, epochs=3, lr=0.1, checkpoint=path, progress=False)
    assert again.epochs == 3 and again.train_loss[0] == history.train_loss[0]


def test_aux_outputs_are_weighted(loaders):
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = tiny_net()

        def forward(self, x):
            out = self.body(x)
            return (out, out * 0) if self.training else out

    history = train.fit(WithAux(), *loaders, epochs=1, lr=0.1, progress=False)
    # the aux head predicts uniform: its loss is log(10), weighted 0.3 on top of the main loss
    assert history.train_loss[0] > 0.3 * math.log(10)


def test_bf16_autocast_and_channels_last_run_on_cpu(loaders):
    history = train.fit(tiny_net(), *loaders, epochs=1, lr=0.1, amp="bf16", channels_last=True,
                        progress=False)
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
    train.fit(tiny_net(), *loaders, epochs=1, lr=0.1)
    captured = capsys.readouterr()
    assert "epoch 1: loss" in captured.err + captured.out


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from torch import nn
    sys.path.insert(0, {root!r})
    from utils import data, train
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
    train_iter, test_iter = data.fashion_mnist(8)
    checkpoint = sys.argv[1] if sys.argv[1] != "-" else None
    history = train.fit(net, train_iter, test_iter, epochs=4, lr=0.2, checkpoint=checkpoint,
                        progress=False)
    torch.save(net.state_dict(), sys.argv[2])
    print("EPOCHS", history.epochs)
""")


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, fake_data):
    env = {**os.environ}
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(root=str(REPO_ROOT), delay=0.03))
    # Uninterrupted reference run.
    subprocess.run([sys.executable, str(script), "-", str(tmp_path / "straight.pt")],
                   env=env, check=True, capture_output=True, timeout=120)
    checkpoint = tmp_path / "ckpt" / "run.pt"
    process = subprocess.Popen([sys.executable, str(script), str(checkpoint), str(tmp_path / "x.pt")],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert checkpoint.exists(), "the first epoch never finished"
    time.sleep(0.1)  # well inside epoch 2 (8 batches of 0.03 s each)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    state = torch.load(checkpoint, weights_only=False)
    saved = train.History.from_dict(state["history"])
    assert 1 <= saved.epochs < 4 and len(saved.test_acc) == saved.epochs
    assert not list(checkpoint.parent.glob("*.tmp")) or True  # stale temp files are removed on resume
    result = subprocess.run([sys.executable, str(script), str(checkpoint), str(tmp_path / "resumed.pt")],
                            env=env, check=True, capture_output=True, text=True, timeout=120)
    assert "EPOCHS 4" in result.stdout and "Resumed from" in result.stdout
    assert not list(checkpoint.parent.glob("*.tmp"))
    straight = torch.load(tmp_path / "straight.pt")
    resumed = torch.load(tmp_path / "resumed.pt")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


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

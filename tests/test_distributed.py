"""utils.distributed and fit inside torchrun: sharding, DDP equivalence, all-reduced metrics,
rank-0 writes, a lost rank and resuming. The launches run this file as the worker script
(``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/test_distributed.py``)
on the CPU with gloo."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from utils import checkpoint, config, data, distributed, train  # noqa: E402

N_TRAIN, N_TEST, BATCH, EPOCHS = 64, 24, 8, 2


def tiny_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 10))


def loaders(batch_size, augment=None):
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (N_TRAIN + N_TEST, 1, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (N_TRAIN + N_TEST,), generator=generator)
    train_iter = data.DeviceLoader(images[:N_TRAIN], labels[:N_TRAIN], batch_size, shuffle=True,
                                   device="cpu", seed=3, augment=augment)
    test_iter = data.DeviceLoader(images[N_TRAIN:], labels[N_TRAIN:], batch_size, shuffle=False, device="cpu")
    return train_iter, test_iter


def run_fit(batch_size, out: Path, epochs=EPOCHS, augment=None):
    config.seed_everything(0)
    net = tiny_net()
    train_iter, test_iter = loaders(batch_size, augment)
    history = train.fit(net, train_iter, test_iter, epochs=epochs, lr=0.5, device="cpu", progress=False,
                        checkpoint=out / "run.pt")
    history.save(out / "history.json")
    return net, history


class Tripwire:
    """An augmentation that leaves images alone but kills (or stalls) rank 1 at its n-th batch."""

    def __init__(self, action=None, at=None):
        self._action, self._at, self._calls = action, int(at or 0), 0

    def __call__(self, x):
        self._calls += 1
        if self._action and distributed.rank() == 1 and self._calls == self._at:
            if self._action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(120)
        return x


def worker(mode: str, out: Path) -> None:
    """What each torchrun process does; results go to ``out/rank<r>.pt``."""
    writes = []
    original = checkpoint.atomic_write

    def counting_write(path, write):
        writes.append(str(path))
        original(path, write)

    checkpoint.atomic_write = train.atomic_write = counting_write
    action, _, at = mode.partition(":")
    epochs = EPOCHS if action == "plain" else 3  # kill, stall, and resume after them
    net, history = run_fit(BATCH, out / "run", epochs=epochs,
                           augment=Tripwire(action, at) if at else Tripwire())
    checkpoint.atomic_write = train.atomic_write = original
    torch.save({"state": net.state_dict(), "history": history.to_dict(), "writes": writes,
                "world": distributed.world_size()}, out / f"rank{distributed.rank()}.pt")
    distributed.cleanup()


def torchrun(out: Path, mode="plain", env=None, timeout=120):
    command = distributed.torchrun_command(Path(__file__), mode, out, nproc=2)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    return result, time.perf_counter() - start


# ----------------------------------------------------------------------------- no processes

@pytest.mark.parametrize("n, world", [(64, 2), (70, 2), (65, 2), (17, 3), (64, 1), (9, 2)])
def test_shards_of_an_epoch_are_disjoint_and_cover_the_data(n, world):
    images, labels = torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n)
    loader = data.DeviceLoader(images, labels, 4, shuffle=True, device="cpu", seed=5)
    shards = [distributed.ShardedLoader(loader, r, world) for r in range(world)]
    order = loader.epoch_order()
    per_rank = [list(shard.indices(order)) for shard in shards]
    assert len({len(steps) for steps in per_rank}) == 1  # every rank takes the same number of steps
    seen = torch.cat([index for steps in per_rank for index in steps])
    assert sorted(seen.tolist()) == list(range(n))  # disjoint and covering: each example once
    assert all(len(index) > 0 for steps in per_rank for index in steps)
    full = [i for i, (start, stop) in enumerate(shards[0].slices) if stop - start == world * 4]
    for step in full:  # a full step: rank r gets batch r of the world batches of that step
        for r in range(world):
            assert torch.equal(per_rank[r][step], order[(step * world + r) * 4:(step * world + r + 1) * 4])


def test_sharded_loader_yields_its_shard_and_keeps_the_loader_surface():
    train_iter, _ = loaders(BATCH)
    shard = distributed.ShardedLoader(train_iter, 1, 2)
    assert len(shard) == N_TRAIN // (2 * BATCH)
    assert (shard.batch_size, shard.image_shape, shard.num_examples) == (BATCH, (1, 8, 8), N_TRAIN)
    state = train_iter.state_dict()
    order = train_iter.epoch_order()
    train_iter.load_state_dict(state)
    labels = torch.cat([y for _, y in shard])
    assert torch.equal(labels, torch.cat([train_iter.labels[i] for i in shard.indices(order)]))


def test_more_ranks_than_batches_is_a_clear_error():
    train_iter, _ = loaders(32)  # 2 batches
    with pytest.raises(distributed.DistributedError, match="3 ranks but the loader yields only 2 batch"):
        distributed.ShardedLoader(train_iter, 0, 3)


def test_backend_and_timeout_choices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.choose_backend() == "gloo"
    with pytest.raises(distributed.DistributedError, match="'nccl' needs CUDA"):
        distributed.choose_backend("nccl")
    monkeypatch.setenv(distributed.BACKEND_ENV, "mpi")
    with pytest.raises(distributed.DistributedError, match="not one of"):
        distributed.choose_backend()
    assert distributed.timeout_seconds() == 60
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "-3")
    with pytest.raises(distributed.DistributedError, match="positive number of seconds"):
        distributed.timeout_seconds()


def test_outside_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert not distributed.setup() and not distributed.active()
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    loader, _ = loaders(BATCH)
    assert distributed.shard(loader) is loader
    net = tiny_net()
    assert distributed.data_parallel(net, torch.device("cpu")) is net


# ----------------------------------------------------------------------------- two processes

def test_two_processes_match_one_process_on_the_doubled_batch(tmp_path):
    result, _ = torchrun(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["world"] == 2
    reference, reference_history = run_fit(2 * BATCH, tmp_path / "single")
    for name, value in reference.state_dict().items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), name  # replicas agree
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=1e-5, atol=1e-6)
    for r in range(2):  # the all-reduced metrics are those of the single process
        history = ranks[r]["history"]
        for key in ("train_loss", "train_acc", "test_acc"):
            assert history[key] == pytest.approx(getattr(reference_history, key), rel=1e-5), key
    assert ranks[1]["writes"] == [] and len(ranks[0]["writes"]) == EPOCHS + 1  # rank 0 writes alone
    saved = json.loads((tmp_path / "run" / "history.json").read_text())
    assert saved["meta"]["world_size"] == 2 and saved["test_acc"] == ranks[0]["history"]["test_acc"]


def test_a_killed_rank_ends_the_run_and_two_processes_resume(tmp_path):
    result, seconds = torchrun(tmp_path, "kill:6", env={distributed.TIMEOUT_ENV: "20"})
    output = result.stdout + result.stderr
    assert result.returncode != 0 and seconds < 60, output
    assert "rank" in output and "1 (local_rank: 1)" in output and "SIGKILL" in output, output
    assert (tmp_path / "run" / "run.pt").exists() and not (tmp_path / "rank0.pt").exists()
    saved = checkpoint.read(tmp_path / "run" / "run.pt")["history"]
    done = len(saved["train_loss"])
    assert done >= 1
    result, _ = torchrun(tmp_path, "resume")  # the same run, resumed by two processes
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Resumed from {tmp_path / 'run' / 'run.pt'} after epoch {done}" in result.stdout
    history = torch.load(tmp_path / "rank0.pt", weights_only=False)["history"]
    assert len(history["train_loss"]) == 3 and history["train_loss"][:done] == saved["train_loss"]


def test_a_stalled_rank_times_out_with_a_clear_error(tmp_path):
    result, seconds = torchrun(tmp_path, "stall:2", env={distributed.TIMEOUT_ENV: "3"})
    output = result.stdout + result.stderr
    assert result.returncode != 0 and seconds < 45, output
    assert "DistributedError: rank 0 of 2" in output and "CNN_DIST_TIMEOUT=3" in output, output


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]))

"""Data-parallel training in processes launched by ``torchrun`` (chapter 11).

Outside ``torchrun`` nothing here does anything: ``setup()`` returns False, ``active()`` is
False and ``utils.train.fit`` runs as it always has. Inside ``torchrun`` (which sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``), ``fit``
calls ``setup()`` and then:

- shards every epoch with ``ShardedLoader``: all ranks draw the same shuffled order; one
  step takes ``world_size`` consecutive batches of it and gives batch ``r`` to rank ``r``,
  so each rank keeps its batch size, the effective batch is ``world_size`` times larger and
  every example is used exactly once per epoch across the ranks (the last step splits what
  is left evenly);
- wraps the model in ``DistributedDataParallel`` (gradients averaged by all-reduce);
- all-reduces the sums it reports (loss, correct predictions, examples);
- writes checkpoints and histories on rank 0 only; every rank resumes from the same file.

The process group uses NCCL when CUDA is present, gloo otherwise (``$CNN_DIST_BACKEND``
overrides the choice); ``$CNN_DIST_TIMEOUT`` (seconds, default 60) bounds how long a rank
waits for the others in a collective operation before it fails instead of hanging.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys

import torch
import torch.distributed as dist

from . import config

TIMEOUT_ENV, BACKEND_ENV = "CNN_DIST_TIMEOUT", "CNN_DIST_BACKEND"
DEFAULT_TIMEOUT_S = 60.0
BACKENDS = ("nccl", "gloo")


class DistributedError(RuntimeError):
    """A distributed run was set up wrongly, or lost one of its processes."""


# ----------------------------------------------------------------------------- who am I

def launched() -> bool:
    """Whether this process was started by ``torchrun`` (it sets ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    """Whether a process group is running (after ``setup()`` inside ``torchrun``)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's number among all processes (0 outside a distributed run)."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    """The number of processes (1 outside a distributed run)."""
    return dist.get_world_size() if active() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    """This process's number on its machine: which GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """Rank 0: the process that prints, saves and logs."""
    return rank() == 0


# ----------------------------------------------------------------------------- set-up

def timeout_seconds() -> float:
    """``$CNN_DIST_TIMEOUT`` in seconds (default 60): the longest wait for the other ranks."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds (or unset it "
                               f"for {DEFAULT_TIMEOUT_S:g} s)")
    return value


def choose_backend(backend: str | None = None) -> str:
    """``backend``, else ``$CNN_DIST_BACKEND``, else NCCL with CUDA and gloo without."""
    backend = (backend or os.environ.get(BACKEND_ENV, "")).strip().lower() or (
        "nccl" if torch.cuda.is_available() else "gloo")
    if backend not in BACKENDS:
        raise DistributedError(f"backend {backend!r} is not one of {BACKENDS} (set {BACKEND_ENV} "
                               "or leave it unset to choose automatically)")
    if backend == "nccl" and not torch.cuda.is_available():
        raise DistributedError("backend 'nccl' needs CUDA GPUs and none is visible to this process; "
                               f"use 'gloo' on CPUs (unset {BACKEND_ENV} to choose automatically)")
    return backend


def setup(backend: str | None = None) -> bool:
    """Join the process group when launched by ``torchrun`` (once; later calls do nothing).
    Returns whether this is a distributed run."""
    if active():
        return True
    if not launched():
        return False
    backend = choose_backend(backend)
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds()))
    return True


def cleanup() -> None:
    """Leave the process group (at the end of a training script)."""
    if active():
        dist.destroy_process_group()


def device() -> torch.device:
    """The device of this rank: its own GPU (``cuda:LOCAL_RANK``) under NCCL, else the CPU;
    ``config.device()`` outside a distributed run."""
    if not active():
        return config.device()
    return torch.device("cuda", local_rank()) if dist.get_backend() == "nccl" else torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed every generator with ``seed + rank``: dropout masks and augmentations differ
    between ranks (the model's first weights need not agree: DDP copies rank 0's)."""
    config.seed_everything(seed + rank())


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_(tensor: torch.Tensor, op=None) -> torch.Tensor:
    """Sum (or ``op``) ``tensor`` over all ranks in place; a clear error when a rank is lost."""
    if active():
        try:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        except RuntimeError as exc:  # DistBackendError and gloo's errors derive from it
            raise lost_rank_error(exc) from exc
    return tensor


def lost_rank_error(exc: BaseException) -> DistributedError:
    """The error a rank raises when a collective operation fails or times out."""
    return DistributedError(
        f"rank {rank()} of {world_size()}: a collective operation failed, so another rank has died, "
        f"hung or been stopped (ranks wait at most {TIMEOUT_ENV}={timeout_seconds():g} s for each "
        f"other). torchrun's summary names the rank that failed first. Cause: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a collective operation that lost a peer or timed out."""
    if isinstance(exc, (dist.DistError, DistributedError)):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection closed", "connection reset",
                                         "timed out", "broken pipe"))


def data_parallel(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``net`` wrapped in ``DistributedDataParallel`` in a distributed run (itself otherwise).
    DDP copies rank 0's weights to every rank and averages the gradients during backward."""
    if not active():
        return net
    ids = [device.index if device.index is not None else local_rank()] if device.type == "cuda" else None
    try:
        return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
    except RuntimeError as exc:
        raise lost_rank_error(exc) from exc


def all_reduce_metrics(metrics) -> None:
    """Turn one rank's ``utils.train.RunningMetrics`` into the sums over all ranks (in place)."""
    all_reduce_(metrics.loss_sum)
    counts = torch.stack([metrics.correct, metrics.counted, metrics.nonfinite_count,
                          torch.tensor(metrics.seen, device=metrics.correct.device)])
    all_reduce_(counts)
    metrics.correct, metrics.counted, metrics.nonfinite_count = counts[0], counts[1], counts[2]
    metrics.seen = int(counts[3].item())
    for name in ("longest", "streak"):
        all_reduce_(getattr(metrics, name), dist.ReduceOp.MAX)


# ----------------------------------------------------------------------------- sharding

def shard_slices(num_examples: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` positions in the epoch's order that each step covers: full steps
    of ``world * batch_size`` examples, then the rest (added to the last full step when it is
    too few to give every rank one example). Raises when there are fewer batches than ranks."""
    batches = -(-num_examples // batch_size)
    if batches < world:
        raise DistributedError(
            f"{world} ranks but the loader yields only {batches} batch(es) of {batch_size} "
            f"({num_examples} examples): every rank needs at least one batch per epoch. Use a "
            f"smaller batch size, more data, or at most {batches} processes (--nproc_per_node)")
    span = world * batch_size
    stops = list(range(span, num_examples + 1, span))
    rest = num_examples - (stops[-1] if stops else 0)
    if rest >= world or not stops:
        stops.append(num_examples)
    elif rest:
        stops[-1] = num_examples
    return list(zip([0, *stops[:-1]], stops))


class ShardedLoader:
    """A ``DeviceLoader`` seen by one rank: per step, its share of ``world`` consecutive
    batches of the epoch's order (the same order on every rank). Everything else
    (batch size, image shape, shuffling state) is the wrapped loader's."""

    def __init__(self, loader, rank_: int | None = None, world: int | None = None):
        self.loader = loader
        self.rank = rank() if rank_ is None else rank_
        self.world = world_size() if world is None else world
        if not 0 <= self.rank < self.world:
            raise DistributedError(f"rank {self.rank} is not in 0..{self.world - 1}")
        self.slices = shard_slices(loader.num_examples, loader.batch_size, self.world)

    def __len__(self) -> int:
        return len(self.slices)

    def __getattr__(self, name):  # batch_size, image_shape, labels, state_dict, ...
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def indices(self, order: torch.Tensor | None):
        """This rank's example indices for each step of an epoch drawn in ``order``."""
        for start, stop in self.slices:
            positions = torch.arange(start, stop)
            mine = torch.tensor_split(positions, self.world)[self.rank]
            yield mine if order is None else order[mine.to(order.device)]

    def __iter__(self):
        order = self.loader.epoch_order()
        for index in self.indices(order):
            yield self.loader.batch(index.to(self.loader.device))


def shard(loader):
    """``loader`` sharded for this rank (itself outside a distributed run or if sharded already)."""
    if not active() or isinstance(loader, ShardedLoader):
        return loader
    return ShardedLoader(loader)


# ----------------------------------------------------------------------------- launching

def torchrun_command(script, *args, nproc: int = 2) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N script args`` as an argument list, with the
    Python running now (``torchrun`` may not be on the PATH of a notebook's kernel)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(script), *map(str, args)]


def launch(script, *args, nproc: int = 2, timeout: float = 600, env: dict | None = None) -> str:
    """Run ``script`` in ``nproc`` processes with torchrun, print and return its output; a
    failed run raises ``DistributedError`` with the output's end."""
    path = os.pathsep.join(filter(None, [str(config.REPO_ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(torchrun_command(script, *args, nproc=nproc), capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "PYTHONPATH": path, **(env or {})})
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise DistributedError(f"torchrun exited with status {result.returncode}:\n{output[-3000:]}")
    print(result.stdout, end="")
    return result.stdout

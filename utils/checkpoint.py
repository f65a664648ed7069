"""Checkpoints of training runs: written atomically, read safely, resumed exactly.

A checkpoint holds everything a run draws on to continue as if it had never stopped: the
weights, the optimizer, scheduler and gradient-scaler states, the history so far, every
random state (PyTorch on the CPU, CUDA and Apple GPUs, Python, NumPy, the loader's
shuffling and its augmentation), and the settings of the run. Resuming under other
settings is refused with each difference named, and the file is never deleted.
"""
from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

#: Version 2: readable with ``torch.load(weights_only=True)``, stores every random state.
CHECKPOINT_FORMAT = 2


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, or belongs to another model or setting."""


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


def remove_stale_temporaries(path) -> None:
    """A process killed while writing ``path`` leaves only its temporary file: remove it."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def model_signature(net: nn.Module) -> str:
    """Class name and parameter shapes, hashed: tells whether a checkpoint fits a model."""
    shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in net.state_dict().items())
    return f"{type(net).__name__}:" + hashlib.sha1(shapes.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- random states

def random_states(train_iter=None) -> dict:
    """Every random state a training run draws from, in a form ``weights_only`` loading accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "mps": torch.mps.get_rng_state() if _mps_available() else None,
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "loader": train_iter.state_dict() if hasattr(train_iter, "state_dict") else None,
    }
    return states


def restore_random_states(states: dict, train_iter=None) -> None:
    """Put back what ``random_states`` saved (the devices present now)."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if states.get("mps") is not None and _mps_available():
        torch.mps.set_rng_state(states["mps"])
    if states.get("python") is not None:
        random.setstate(_as_tuples(states["python"]))
    if states.get("numpy") is not None:
        kind, keys, position, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if states.get("loader") is not None and hasattr(train_iter, "load_state_dict"):
        train_iter.load_state_dict(states["loader"])


def _as_tuples(value):
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


# ----------------------------------------------------------------------------- save and load

def save(path, *, net, optimizer, scheduler, scaler, history: dict, train_iter, settings: dict) -> None:
    """Everything needed to continue training exactly where it stopped, written atomically."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "signature": model_signature(net),
        "settings": settings,
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history,
        "rng": random_states(train_iter),
    }
    atomic_write(path, lambda handle: torch.save(state, handle))


def _keep_note(path) -> str:
    return (f"The file was left as it is. To start over, delete or rename {path}, "
            "or pass another checkpoint path.")


def read(path) -> dict:
    """The contents of a checkpoint written by ``fit`` (tensors only, nothing executable)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"Checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                              f"it is probably truncated or not a checkpoint. {_keep_note(path)}") from None
    if not isinstance(state, dict) or "signature" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a checkpoint written by utils.train.fit. {_keep_note(path)}")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} was written by an older version of utils.train.fit "
                              f"(format {state.get('format')}, now {CHECKPOINT_FORMAT}) and cannot be "
                              f"resumed exactly. {_keep_note(path)}")
    return state


def differences(saved: dict, current: dict) -> list[str]:
    """Each setting whose value differs, as 'name was A, now B' (absent settings are None)."""
    return [f"{key} was {saved.get(key)!r}, now {current.get(key)!r}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def load(path, net: nn.Module, settings: dict | None = None) -> dict:
    """Read a checkpoint and check it belongs to ``net`` (and ``settings``); never deletes it."""
    state = read(path)
    if state["signature"] != model_signature(net):
        raise CheckpointError(
            f"Checkpoint {path} was written by another model ({state['signature'].split(':')[0]}, "
            f"or the same class with other layer shapes) and does not fit this "
            f"{type(net).__name__}. {_keep_note(path)}")
    changed = differences(state["settings"], settings) if settings is not None else []
    if changed:
        raise CheckpointError(f"Checkpoint {path} was trained with other settings ({'; '.join(changed)}); "
                              f"resuming would mix two runs. {_keep_note(path)}")
    return state


def load_weights(path, net: nn.Module) -> dict:
    """Copy the weights of a ``fit`` checkpoint into ``net`` (e.g. a backbone trained in an
    earlier chapter) and return the checkpoint's history dict."""
    state = load(path, net)
    net.load_state_dict(state["model"])
    return state["history"]

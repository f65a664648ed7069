"""Run profile, device choice, seeding and where things live on disk."""
from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

#: The one place the repository's address is written; notebooks' setup cells and
#: Colab badges are checked against it by ``tests/test_notebooks.py``.
REPO_URL = "https://github.com/modern-cnns/modern-cnns-from-scratch"
REPO_ROOT = Path(__file__).resolve().parent.parent

PROFILES = ("smoke", "quick", "full")
PROFILE_HELP = {
    "smoke": "CI: seconds per chapter, tiny data, checks that every cell runs",
    "quick": "a laptop CPU: minutes per chapter, real but reduced training",
    "full": "a GPU: the book's settings (resolution, epochs, learning rate)",
}


class ProfileError(ValueError):
    """Raised for an unknown ``CNN_PROFILE`` value."""


#: The smallest GPU memory (GiB) the ``full`` profile is chosen for automatically. The
#: heaviest full setting (Inception-v3 at 299 px, batch 128, with its auxiliary head)
#: needs several GiB of activations; a Colab T4 reports 14.7 GiB, a 4 GB laptop GPU
#: runs out of memory, so smaller GPUs get ``quick``.
FULL_MIN_GPU_GIB = 10.0


def _gpu_memory_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30


def profile_choice() -> tuple[str, str]:
    """The run profile and why it was chosen (the setup cell prints both)."""
    value = os.environ.get("CNN_PROFILE", "").strip().lower()
    if value:
        return profile(), "set by CNN_PROFILE"
    memory = _gpu_memory_gib()
    if memory is None:
        return "quick", "no CUDA GPU; set CNN_PROFILE=full to train with the book's settings anyway"
    if memory >= FULL_MIN_GPU_GIB:
        return "full", f"CUDA GPU with {memory:.1f} GiB (at least {FULL_MIN_GPU_GIB:g} GiB)"
    return "quick", (f"CUDA GPU with only {memory:.1f} GiB (full needs about {FULL_MIN_GPU_GIB:g} GiB); "
                     "set CNN_PROFILE=full to try anyway")


def profile() -> str:
    """The run profile: ``$CNN_PROFILE``, else ``full`` on a CUDA GPU with at least
    ``FULL_MIN_GPU_GIB`` of memory and ``quick`` otherwise."""
    value = os.environ.get("CNN_PROFILE", "").strip().lower()
    if not value:
        memory = _gpu_memory_gib()
        return "full" if memory is not None and memory >= FULL_MIN_GPU_GIB else "quick"
    if value not in PROFILES:
        choices = "\n".join(f"  {name:6s} {PROFILE_HELP[name]}" for name in PROFILES)
        raise ProfileError(
            f"CNN_PROFILE={os.environ['CNN_PROFILE']!r} is not a profile. Use one of:\n{choices}\n"
            "for example `CNN_PROFILE=quick jupyter lab`, or unset it to choose automatically."
        )
    return value


def pick(**by_profile):
    """Return the value given for the current profile, e.g. ``pick(smoke=1, quick=3, full=10)``."""
    unknown = set(by_profile) - set(PROFILES)
    if unknown:
        raise ProfileError(f"pick() got {sorted(unknown)}; profiles are {PROFILES}")
    current = profile()
    if current not in by_profile:
        raise ProfileError(f"pick() has no value for the current profile {current!r}")
    return by_profile[current]


def _positive_int_env(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"{name}={raw!r} must be a positive whole number (or unset it)")
    return int(raw)


def max_steps() -> int | None:
    """``$CNN_MAX_STEPS``: stop every epoch, evaluation and throughput measurement after
    this many batches (a dry run of a profile's settings); None when unset."""
    return _positive_int_env("CNN_MAX_STEPS")


def max_batch() -> int | None:
    """``$CNN_MAX_BATCH``: the largest batch ``utils.data`` builds (a dry run of heavy
    settings on a CPU); None when unset."""
    return _positive_int_env("CNN_MAX_BATCH")


def dry_run_note() -> str | None:
    """What ``CNN_MAX_STEPS``/``CNN_MAX_BATCH`` cut short, or None when neither is set."""
    parts = [f"{name}={value}" for name, value in (("CNN_MAX_STEPS", max_steps()),
                                                  ("CNN_MAX_BATCH", max_batch())) if value]
    return ("dry run (" + ", ".join(parts) + "): training and evaluation are cut short; "
            "the numbers mean nothing") if parts else None


def cap_examples(n: int | None, batch_size: int) -> int | None:
    """``n`` examples (None: all of them), or in a dry run only as many as ``CNN_MAX_STEPS``
    batches hold: for a chapter's own loops over data that ``fit`` does not cut short."""
    steps = max_steps()
    if steps is None:
        return n
    return steps * batch_size if n is None else min(n, steps * batch_size)


def device() -> torch.device:
    """The best device present: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def data_dir() -> Path:
    """Where data is cached: ``$CNN_DATA_DIR``, default ``data/`` at the repository root."""
    return Path(os.environ.get("CNN_DATA_DIR", REPO_ROOT / "data")).expanduser()


def results_dir() -> Path:
    """Where histories, checkpoints and figures go (``results/`` at the root, ignored by git)."""
    path = Path(os.environ.get("CNN_RESULTS_DIR", REPO_ROOT / "results")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def describe() -> None:
    """Print the profile, the device and the library versions (the setup cell's report)."""
    dev = device()
    from .reference import cpu_model  # /proc/cpuinfo's model name where there is one

    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model() or "CPU"
    chosen, reason = profile_choice()
    print(f"profile {chosen} ({PROFILE_HELP[chosen]}): {reason}")
    print(f"device  {dev} ({name}, {torch.get_num_threads()} CPU threads)")
    print(f"results {results_dir()} (set CNN_RESULTS_DIR to keep them elsewhere)")
    if dry_run_note():
        print(dry_run_note())
    import torchvision

    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, numpy {np.__version__}")

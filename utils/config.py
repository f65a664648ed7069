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


def profile() -> str:
    """The run profile: ``$CNN_PROFILE``, else ``full`` with CUDA and ``quick`` without."""
    value = os.environ.get("CNN_PROFILE", "").strip().lower()
    if not value:
        return "full" if torch.cuda.is_available() else "quick"
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
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "CPU"
    print(f"profile {profile()} ({PROFILE_HELP[profile()]})")
    print(f"device  {dev} ({name}, {torch.get_num_threads()} CPU threads)")
    import torchvision

    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, numpy {np.__version__}")

"""Shared fixtures: small fake IDX files, isolated data/results folders."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from utils import data


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file, the format of (Fashion-)MNIST."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def make_fake_fashion_mnist(folder: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """Four small IDX files whose labels are learnable (class k is brightness k)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (labels[:, None, None] * 25 + rng.integers(0, 5, (n, 28, 28))).astype(np.uint8)
        write_idx(folder / data.FILES[f"{split}_images"], images)
        write_idx(folder / data.FILES[f"{split}_labels"], labels)
    return folder


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point CNN_DATA_DIR/CNN_RESULTS_DIR at empty temporary folders and hide Debian's copy."""
    monkeypatch.setenv("CNN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CNN_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    data._CACHE.clear()
    yield tmp_path
    data._CACHE.clear()


@pytest.fixture
def fake_data(isolated):
    """Fake Fashion-MNIST in $CNN_DATA_DIR."""
    return make_fake_fashion_mnist(isolated / "data")

"""Fashion-MNIST held as tensors on the training device.

The whole data set (60,000 + 10,000 images of 28x28 bytes, 55 MB) is read once from
the original ``.gz`` files, kept as ``uint8`` on the device, and converted, resized
and normalized there one batch at a time. No PIL, no worker processes.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import config
from .checkpoint import atomic_write

CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle boot")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

HOW_TO_GET_DATA = """\
Fashion-MNIST was not found and could not be downloaded.
Get it in one of these ways, then run the cell again:
  * Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist
    (puts the files in {debian})
  * copy the four files
      {files}
    (from https://github.com/zalandoresearch/fashion-mnist, folder data/fashion)
    into {data_dir}  (or set CNN_DATA_DIR to the folder that holds them)
  * connect to the internet: torchvision then downloads them into that folder.
Searched: {searched}
Download error: {error}"""


class DataNotFoundError(FileNotFoundError):
    """No copy of Fashion-MNIST could be found or downloaded."""


class DataFileError(ValueError):
    """A data file exists but is truncated or not an IDX file."""


def text_labels(labels) -> list[str]:
    """Class names for numeric labels."""
    return [CLASSES[int(i)] for i in labels]


def _has_all_files(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FILES.values())


def candidate_dirs() -> list[Path]:
    """Folders searched, in order: ``$CNN_DATA_DIR`` (and torchvision's layout inside it), Debian's."""
    base = config.data_dir()
    return [base, base / "FashionMNIST" / "raw", DEBIAN_DIR]


def find_data_dir(download: bool = True) -> Path:
    """The first folder holding the four files; download with torchvision if none does."""
    searched = candidate_dirs()
    for folder in searched:
        if _has_all_files(folder):
            return folder
    error = "download=False" if not download else None
    if download:
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(root=str(config.data_dir()), train=True, download=True)
            torchvision.datasets.FashionMNIST(root=str(config.data_dir()), train=False, download=True)
        except Exception as exc:  # network errors come in many types
            error = f"{type(exc).__name__}: {exc}"
        else:
            if _has_all_files(searched[1]):
                return searched[1]
            error = "torchvision finished but the .gz files are not where expected"
    raise DataNotFoundError(HOW_TO_GET_DATA.format(
        debian=DEBIAN_DIR, data_dir=config.data_dir(),
        files="\n      ".join(FILES.values()),
        searched=", ".join(str(p) for p in searched), error=error))


def read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST format) into a ``uint8`` array."""
    fix = (f"Delete {path} and run again to fetch a fresh copy "
           "(or reinstall dataset-fashion-mnist if it is Debian's).")
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DataFileError(f"{path} is truncated or not gzip data ({exc}). {fix}") from None
    if len(raw) < 8:
        raise DataFileError(f"{path} is too short to be an IDX file. {fix}")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise DataFileError(f"{path} is not an IDX file of bytes (bad magic number). {fix}")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + math.prod(shape)
    if len(raw) != expected:
        raise DataFileError(f"{path} holds {len(raw)} bytes but its header promises {expected}. {fix}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


_CACHE: dict[tuple, dict[str, torch.Tensor]] = {}
SHAPES = {"train_images": (28, 28), "test_images": (28, 28), "train_labels": (), "test_labels": ()}


def decoded_cache_path(folder: Path) -> Path:
    """Where the decoded arrays of the files in ``folder`` are kept: ``.cache/`` in the data
    folder, named after the files' paths, sizes and modification times, so that a changed
    file is decoded again."""
    stats = {folder / name: (folder / name).stat() for name in FILES.values()}
    stamp = ";".join(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}" for path, stat in stats.items())
    return config.data_dir() / ".cache" / f"fashion-mnist-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.npz"


def _mismatched_split(arrays: dict[str, np.ndarray]) -> str | None:
    """The first split ('train' or 'test') whose numbers of images and labels differ, if any."""
    return next((split for split in ("train", "test")
                 if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"])), None)


def _read_decoded_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no usable cache (missing, truncated, wrong shapes)."""
    try:
        with np.load(path) as stored:
            arrays = {role: stored[role] for role in FILES}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    ok = all(a.dtype == np.uint8 and a.shape[1:] == SHAPES[role] for role, a in arrays.items())
    return arrays if ok and _mismatched_split(arrays) is None else None


def _write_decoded_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save the decoded arrays (uncompressed) and remove caches of older files. Best effort:
    a read-only or full disk only means the next start decodes the ``.gz`` files again."""
    try:
        atomic_write(path, lambda handle: np.savez(handle, **arrays))
        for old in path.parent.glob("fashion-mnist-*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass


def load_arrays(download: bool = True) -> dict[str, torch.Tensor]:
    """The four arrays as CPU tensors: images ``(N, 1, 28, 28) uint8``, labels ``(N,) int64``.

    Decoding the gzipped files takes about 0.3 s; the decoded bytes are kept in
    ``$CNN_DATA_DIR/.cache`` (55 MB) and read back in a few hundredths of a second.
    """
    folder = find_data_dir(download)
    key = tuple((folder / name, (folder / name).stat().st_mtime_ns) for name in FILES.values())
    if key not in _CACHE:
        cache = decoded_cache_path(folder)
        decoded = _read_decoded_cache(cache)
        if decoded is None:
            decoded = {role: read_idx(folder / name) for role, name in FILES.items()}
            split = _mismatched_split(decoded)
            if split is not None:
                raise DataFileError(f"{folder}: the {split} images and labels differ in number")
            _write_decoded_cache(cache, decoded)
        arrays = {}
        for role, array in decoded.items():
            tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
            arrays[role] = tensor.unsqueeze(1) if role.endswith("images") else tensor.long()
        _CACHE.clear()
        _CACHE[key] = arrays
    return _CACHE[key]


class DeviceLoader:
    """Iterates over ``(images, labels)`` batches of a data set held as a tensor on a device.

    Images are stored as ``uint8``; each batch is converted to ``float`` in [0, 1],
    resized (bilinear) and optionally augmented and normalized on the device.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
                 shuffle: bool, resize: int | None = None, device=None, augment=None,
                 normalize: tuple[float, float] | None = None, seed: int = 0):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        cap = config.max_batch()
        if cap is not None and batch_size > cap:
            print(f"CNN_MAX_BATCH={cap}: batches of {cap} instead of {batch_size}")
            batch_size = cap
        if resize is not None and (not isinstance(resize, int) or resize <= 0):
            raise ValueError(f"resize must be a positive integer (pixels) or None, got {resize!r}")
        self.device = torch.device(device) if device is not None else config.device()
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.resize = resize
        self.augment = augment
        self.normalize = normalize
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def num_examples(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.images.shape[1:]
        return (channels, self.resize or height, self.resize or width)

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def transform(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 batch -> float batch at the target size (and augmented when ``train``)."""
        x = images.float().div_(255)
        if self.resize is not None and self.resize != x.shape[-1]:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear",
                              align_corners=False, antialias=self.resize < x.shape[-1])
        if train and self.augment is not None:
            x = self.augment(x)
        if self.normalize is not None:
            mean, std = self.normalize
            x = x.sub_(mean).div_(std)
        return x

    def epoch_order(self) -> torch.Tensor | None:
        """The order of the examples in the next epoch (None: in storage order). Drawing it
        advances the shuffling generator, as starting an epoch does."""
        if not self.shuffle:
            return None
        return torch.randperm(self.num_examples, generator=self.generator).to(self.device)

    def batch(self, index) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(images, labels)`` batch of the examples at ``index`` (a slice or a tensor)."""
        return self.transform(self.images[index], train=self.shuffle), self.labels[index]

    def __iter__(self):
        n = self.num_examples
        order = self.epoch_order()
        for start in range(0, n, self.batch_size):
            if order is None:
                index = slice(start, start + self.batch_size)
            else:
                index = order[start:start + self.batch_size]
            yield self.batch(index)

    def state_dict(self) -> dict:
        """The shuffling and augmentation state, so a resumed run sees the same batches, crops
        and flips as an uninterrupted one."""
        return {"generator": self.generator.get_state(), "augment": augment_state(self.augment)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        load_augment_state(self.augment, state.get("augment"))


def augment_state(augment) -> dict | None:
    """The random state of an augmentation: its own ``state_dict()`` if it has one, else every
    ``torch.Generator`` it keeps as an attribute (an augmentation drawing from the global
    generator needs nothing here: the checkpoint saves that one)."""
    if augment is None:
        return None
    if hasattr(augment, "state_dict"):
        return {"state_dict": augment.state_dict()}
    return {name: value.get_state() for name, value in vars(augment).items()
            if isinstance(value, torch.Generator)} if hasattr(augment, "__dict__") else {}


def load_augment_state(augment, state: dict | None) -> None:
    if augment is None or not state:
        return
    if "state_dict" in state:
        augment.load_state_dict(state["state_dict"])
        return
    for name, generator_state in state.items():
        getattr(augment, name).set_state(generator_state)


def _subset(images, labels, size, seed):
    if size is None or size >= len(labels):
        return images, labels
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"subset sizes must be positive integers or None, got {size!r}")
    index = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:size]
    index = index.sort().values
    return images[index], labels[index]


def fashion_mnist(batch_size: int, resize: int | None = None, *, train_subset: int | None = None,
                  test_subset: int | None = None, device=None, augment=None,
                  normalize: tuple[float, float] | None = None, download: bool = True,
                  seed: int = 0):
    """Fashion-MNIST as ``(train_iter, test_iter)`` on the training device.

    ``resize`` upsamples the 28x28 images on the device (AlexNet wants 224).
    ``train_subset``/``test_subset`` keep a fixed random subset of that many examples
    (the ``smoke`` and ``quick`` profiles use them). ``augment`` is a function applied to
    each float training batch on the device. The data are searched in ``$CNN_DATA_DIR``
    (default ``data/``), then Debian's ``/usr/share/datasets/fashion-mnist``, then
    downloaded with torchvision.
    """
    arrays = load_arrays(download)
    train = _subset(arrays["train_images"], arrays["train_labels"], train_subset, seed)
    test = _subset(arrays["test_images"], arrays["test_labels"], test_subset, seed + 1)
    common = dict(resize=resize, device=device, normalize=normalize)
    train_iter = DeviceLoader(*train, batch_size, shuffle=True, augment=augment, seed=seed, **common)
    test_iter = DeviceLoader(*test, batch_size, shuffle=False, **common)
    return train_iter, test_iter

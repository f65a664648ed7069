import gzip

import pytest
import torch

from utils import data
from tests.conftest import make_fake_fashion_mnist


def test_reads_cnn_data_dir_first(fake_data, monkeypatch):
    debian = make_fake_fashion_mnist(fake_data.parent / "debian", n_train=10, n_test=10)
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    assert data.find_data_dir() == fake_data
    train_iter, test_iter = data.fashion_mnist(16)
    assert train_iter.num_examples == 64 and test_iter.num_examples == 32


def test_torchvision_layout_inside_data_dir(isolated):
    raw = make_fake_fashion_mnist(isolated / "data" / "FashionMNIST" / "raw")
    assert data.find_data_dir() == raw


def test_falls_back_to_debian_package(isolated, monkeypatch):
    debian = make_fake_fashion_mnist(isolated / "debian", n_train=20, n_test=12)
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    assert data.find_data_dir(download=False) == debian
    train_iter, _ = data.fashion_mnist(8, download=False)
    assert train_iter.num_examples == 20


def test_debian_path_is_the_packages_path():
    assert str(data.DEBIAN_DIR) == "/usr/share/datasets/fashion-mnist"


def test_offline_message_says_how_to_get_the_data(isolated, monkeypatch):
    import torchvision

    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_network)
    with pytest.raises(data.DataNotFoundError) as error:
        data.fashion_mnist(8)
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message and "CNN_DATA_DIR" in message
    assert "name resolution" in message
    assert str(isolated / "data") in message


def test_truncated_file_is_named(fake_data):
    path = fake_data / data.FILES["train_images"]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(data.DataFileError) as error:
        data.fashion_mnist(8)
    assert str(path) in str(error.value) and "Delete" in str(error.value)


def test_wrong_length_and_bad_magic_are_named(fake_data):
    labels = fake_data / data.FILES["test_labels"]
    with gzip.open(labels, "rb") as handle:
        raw = handle.read()
    with gzip.open(labels, "wb") as handle:
        handle.write(raw[:-3])
    with pytest.raises(data.DataFileError, match="header promises"):
        data.read_idx(labels)
    with gzip.open(labels, "wb") as handle:
        handle.write(b"\x01\x02" + raw[2:])
    with pytest.raises(data.DataFileError, match="magic"):
        data.read_idx(labels)


def _reload():
    data._CACHE.clear()  # forget the in-process copy, as a new Python process would
    return data.load_arrays(download=False)


def test_decoded_arrays_are_cached_and_read_back_identically(fake_data, monkeypatch):
    first = _reload()
    cache = data.decoded_cache_path(fake_data)
    assert cache.parent == fake_data / ".cache" and cache.is_file()
    monkeypatch.setattr(data, "read_idx", lambda path: pytest.fail("decoded again despite the cache"))
    second = _reload()
    assert all(torch.equal(first[key], second[key]) and first[key].dtype == second[key].dtype for key in first)
    second["train_images"][0] += 1  # writable, and a copy: the cache file is untouched
    assert torch.equal(_reload()["train_images"], first["train_images"])


def test_changed_source_file_replaces_the_cache(fake_data):
    old = _reload()
    old_cache = data.decoded_cache_path(fake_data)
    make_fake_fashion_mnist(fake_data, n_train=20, n_test=10, seed=1)
    new = _reload()
    assert new["train_labels"].shape == (20,) and not torch.equal(new["test_labels"], old["test_labels"][:10])
    assert not old_cache.exists() and data.decoded_cache_path(fake_data).is_file()  # no stale 55 MB copies


def test_damaged_cache_is_ignored_and_rewritten(fake_data):
    good = _reload()
    cache = data.decoded_cache_path(fake_data)
    cache.write_bytes(cache.read_bytes()[:100])
    assert torch.equal(_reload()["train_images"], good["train_images"])
    assert cache.stat().st_size > 100


def test_unwritable_cache_folder_still_loads(fake_data, monkeypatch):
    def refuse(path, write):
        raise PermissionError(f"read-only: {path}")

    monkeypatch.setattr("utils.data.atomic_write", refuse)
    assert _reload()["train_labels"].shape == (64,)
    assert not data.decoded_cache_path(fake_data).exists()


def test_batches_are_float_in_unit_range_and_cover_every_example(fake_data):
    train_iter, test_iter = data.fashion_mnist(10)
    assert len(train_iter) == 7  # 64 examples, last batch of 4 kept
    seen = 0
    for X, y in train_iter:
        assert X.dtype == torch.float32 and X.shape[1:] == (1, 28, 28)
        assert 0.0 <= X.min() and X.max() <= 1.0
        seen += len(y)
    assert seen == 64
    labels = torch.cat([y for _, y in test_iter])
    assert torch.equal(labels, data.load_arrays()["test_labels"])  # test order is fixed


def test_resize_happens_on_the_device(fake_data):
    train_iter, _ = data.fashion_mnist(8, resize=64, device="cpu")
    assert train_iter.images.shape[-1] == 28  # stored at native size, as bytes
    assert train_iter.images.dtype == torch.uint8
    X, _ = next(iter(train_iter))
    assert X.shape == (8, 1, 64, 64) and X.device.type == "cpu"
    assert train_iter.image_shape == (1, 64, 64)
    small, _ = data.fashion_mnist(8, resize=14)
    assert next(iter(small))[0].shape == (8, 1, 14, 14)


def test_subsets_are_fixed_random_samples(fake_data):
    first, test = data.fashion_mnist(8, train_subset=20, test_subset=10)
    again, _ = data.fashion_mnist(8, train_subset=20, test_subset=10)
    assert first.num_examples == 20 and test.num_examples == 10
    assert torch.equal(first.labels, again.labels)
    other, _ = data.fashion_mnist(8, train_subset=20, seed=1)
    assert not torch.equal(first.images, other.images)
    whole, _ = data.fashion_mnist(8, train_subset=10_000)
    assert whole.num_examples == 64


def test_shuffling_is_reproducible_and_resumable(fake_data):
    train_iter, _ = data.fashion_mnist(16, seed=5)
    state = train_iter.state_dict()
    first_epoch = [y for _, y in train_iter]
    train_iter.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(first_epoch, [y for _, y in train_iter]))
    second_epoch = [y for _, y in train_iter]
    assert not all(torch.equal(a, b) for a, b in zip(first_epoch, second_epoch))


def test_augment_applies_to_training_batches_only(fake_data):
    flip = lambda x: x.flip(-1)  # noqa: E731
    train_iter, test_iter = data.fashion_mnist(8, augment=flip, device="cpu")
    plain_train, plain_test = data.fashion_mnist(8, device="cpu")  # same seed: same batches
    for (X, y), (P, q) in zip(train_iter, plain_train):
        assert torch.equal(y, q) and torch.equal(X, P.flip(-1))
    assert not torch.equal(next(iter(train_iter))[0], next(iter(plain_train))[0])
    for (X, _), (P, _) in zip(test_iter, plain_test):
        assert torch.equal(X, P)  # evaluation sees the images as they are


@pytest.mark.parametrize("bad", [0, -3, 2.5, None])
def test_bad_batch_size_is_explained(fake_data, bad):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        data.fashion_mnist(bad)


def test_normalize(fake_data):
    train_iter, test_iter = data.fashion_mnist(64, normalize=(0.5, 0.25), device="cpu")
    plain_train, plain_test = data.fashion_mnist(64, device="cpu")
    for normalized, plain in ((train_iter, plain_train), (test_iter, plain_test)):
        X, _ = next(iter(normalized))
        P, _ = next(iter(plain))
        torch.testing.assert_close(X, (P - 0.5) / 0.25)
    assert X.mean() < P.mean()  # the fake images are mostly dark: shifted down by the mean


class GeneratorAugment:
    """An augmentation drawing from its own generator, as chapter 09's RandomCropFlip does."""

    def __init__(self, seed=0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x):
        return x + torch.rand(x.shape, generator=self.generator)


def test_loader_state_includes_the_augmentations_random_state(fake_data):
    train_iter, _ = data.fashion_mnist(16, augment=GeneratorAugment(), device="cpu")
    list(train_iter)  # one epoch: both generators have moved on
    state = train_iter.state_dict()
    second = [X for X, _ in train_iter]
    fresh, _ = data.fashion_mnist(16, augment=GeneratorAugment(), device="cpu")
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(second, [X for X, _ in fresh]))
    unrestored, _ = data.fashion_mnist(16, augment=GeneratorAugment(), device="cpu")
    unrestored.load_state_dict({"generator": state["generator"]})  # shuffling only
    assert not all(torch.equal(a, b) for a, b in zip(second, [X for X, _ in unrestored]))


def test_max_batch_caps_the_batch_size(fake_data, monkeypatch, capsys):
    monkeypatch.setenv("CNN_MAX_BATCH", "8")
    train_iter, _ = data.fashion_mnist(32, device="cpu")
    assert train_iter.batch_size == 8 and len(next(iter(train_iter))[1]) == 8
    assert "CNN_MAX_BATCH=8" in capsys.readouterr().out


def test_real_fashion_mnist_when_installed():
    if not (data.DEBIAN_DIR / data.FILES["train_images"]).exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    arrays = data.load_arrays(download=False)
    assert arrays["train_images"].shape == (60_000, 1, 28, 28)
    assert arrays["test_images"].shape == (10_000, 1, 28, 28)
    assert torch.bincount(arrays["train_labels"]).tolist() == [6000] * 10

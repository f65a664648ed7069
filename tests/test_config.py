import pytest
import torch

from utils import config


@pytest.mark.parametrize("name", config.PROFILES)
def test_known_profiles(monkeypatch, name):
    monkeypatch.setenv("CNN_PROFILE", name.upper())
    assert config.profile() == name


def test_default_profile_follows_cuda(monkeypatch):
    monkeypatch.delenv("CNN_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.profile() == "quick"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.profile() == "full"


def test_unknown_profile_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("CNN_PROFILE", "fast")
    with pytest.raises(config.ProfileError) as error:
        config.profile()
    message = str(error.value)
    assert "'fast'" in message
    for name in config.PROFILES:
        assert name in message


def test_pick(monkeypatch):
    monkeypatch.setenv("CNN_PROFILE", "quick")
    assert config.pick(smoke=1, quick=2, full=3) == 2
    with pytest.raises(config.ProfileError):
        config.pick(smoke=1, full=3)
    with pytest.raises(config.ProfileError):
        config.pick(smoke=1, quick=2, full=3, fast=4)


def test_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert config.device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert config.device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert config.device() == torch.device("cpu")


def test_seed_everything_repeats():
    config.seed_everything(3)
    first = torch.rand(3)
    config.seed_everything(3)
    assert torch.equal(first, torch.rand(3))


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CNN_DATA_DIR", str(tmp_path))
    assert config.data_dir() == tmp_path
    monkeypatch.delenv("CNN_DATA_DIR")
    assert config.data_dir() == config.REPO_ROOT / "data"

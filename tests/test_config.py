import pytest
import torch

from utils import config


@pytest.mark.parametrize("name", config.PROFILES)
def test_known_profiles(monkeypatch, name):
    monkeypatch.setenv("CNN_PROFILE", name.upper())
    assert config.profile() == name


@pytest.mark.parametrize("gib, expected", [(None, "quick"), (4.0, "quick"), (7.9, "quick"),
                                            (14.7, "full"), (80.0, "full")])
def test_default_profile_follows_the_gpus_memory(monkeypatch, gib, expected):
    """No GPU or a small one (a 4 GB laptop GPU runs out of memory under full): quick;
    a Colab T4 (14.7 GiB) or larger: full. The reason is reported with the choice."""
    monkeypatch.delenv("CNN_PROFILE", raising=False)
    monkeypatch.setattr(config, "_gpu_memory_gib", lambda: gib)
    assert config.profile() == expected
    chosen, reason = config.profile_choice()
    assert chosen == expected
    assert ("no CUDA GPU" in reason) if gib is None else (f"{gib:.1f} GiB" in reason)


def test_gpu_memory_is_read_from_the_device(monkeypatch):
    class Properties:
        total_memory = 16 * 2**30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Properties())
    assert config._gpu_memory_gib() == 16.0
    monkeypatch.delenv("CNN_PROFILE", raising=False)
    assert config.profile() == "full"


def test_profile_set_by_the_environment_says_so(monkeypatch):
    monkeypatch.setenv("CNN_PROFILE", "smoke")
    assert config.profile_choice() == ("smoke", "set by CNN_PROFILE")


@pytest.mark.parametrize("raw, expected", [("", None), ("2", 2), (" 10 ", 10)])
def test_max_steps_and_batch_from_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv("CNN_MAX_STEPS", raw)
    monkeypatch.setenv("CNN_MAX_BATCH", raw)
    assert config.max_steps() == expected and config.max_batch() == expected
    assert (config.dry_run_note() is None) == (expected is None)


@pytest.mark.parametrize("raw", ["0", "-1", "two", "2.5"])
def test_bad_max_steps_is_explained(monkeypatch, raw):
    monkeypatch.setenv("CNN_MAX_STEPS", raw)
    with pytest.raises(ValueError, match="CNN_MAX_STEPS=.* must be a positive whole number"):
        config.max_steps()


def test_describe_reports_the_choice_and_where_results_go(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CNN_PROFILE", "quick")
    monkeypatch.setenv("CNN_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("CNN_MAX_STEPS", "2")
    config.describe()
    out = capsys.readouterr().out
    assert "profile quick" in out and "set by CNN_PROFILE" in out
    assert str(tmp_path) in out and "CNN_RESULTS_DIR" in out and "CNN_MAX_STEPS=2" in out


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


def test_cap_examples_only_in_a_dry_run(monkeypatch):
    monkeypatch.delenv("CNN_MAX_STEPS", raising=False)
    assert config.cap_examples(None, 128) is None and config.cap_examples(5000, 128) == 5000
    monkeypatch.setenv("CNN_MAX_STEPS", "2")
    assert config.cap_examples(None, 128) == 256 and config.cap_examples(100, 128) == 100
    assert config.cap_examples(5000, 128) == 256

import pytest
import torch
import torchvision
from torch import nn

from utils import profile


def test_count_params_all_and_trainable():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert profile.count_params(net) == 3 * 4 + 4 + 4 * 2 + 2
    net[0].requires_grad_(False)
    assert profile.count_params(net, trainable_only=True) == 10


def test_flops_are_two_per_multiply_add():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # 8 output channels x 10x10 positions x (3 x 3 x 3) multiply-adds, 2 FLOPs each
    assert profile.count_flops(conv, (1, 3, 10, 10)) == 2 * 8 * 10 * 10 * 27
    assert profile.count_flops(nn.Linear(5, 7), (4, 5)) == 2 * 4 * 5 * 7


def test_flops_on_meta_match_real_and_torchvision_metadata():
    # torchvision's ResNet-18 "GFLOPS" metadata (1.81) is multiply-adds: 1,814,073,344 x 2 FLOPs.
    with torch.device("meta"):
        meta_net = torchvision.models.resnet18()
    assert profile.count_flops(meta_net, (1, 3, 224, 224)) == 2 * 1_814_073_344
    assert profile.count_params(meta_net) == 11_689_512


def test_per_module_breakdown_sums_to_total():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    total, parts = profile.count_flops(net, (1, 1, 8, 8), per_module=True)
    assert parts["0"] + parts["3"] == total
    assert net.training  # the count does not leave the model in eval mode


def test_layer_table_lists_shapes_params_and_flops():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    table = profile.layer_table(net, (1, 1, 8, 8))
    lines = table.splitlines()
    assert "(4, 6, 6)" in lines[2] and "40" in lines[2]
    assert "(144,)" in lines[4]
    assert lines[-1].split()[1] == f"{profile.count_params(net):,}"


def test_train_flops_are_about_three_times_forward():
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
    forward = profile.count_flops(net, (2, 3, 16, 16))
    both = profile.count_train_flops(net, (2, 3, 16, 16))
    # the first layer needs no gradient for its input, so slightly under 3x
    assert 2.5 * forward < both <= 3 * forward


def test_throughput_and_matmul_rate_are_positive():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    assert profile.throughput(net, (8, 1, 4, 4), steps=2) > 0
    assert profile.throughput(net, (8, 1, 4, 4), steps=2, train=True) > 0
    assert profile.matmul_gflops(size=64, repeats=1) > 0


def test_complexity_table_formats_rows():
    table = profile.complexity_table({"a model": (1234, 4e6, (1, 1, 28, 28))})
    assert "a model" in table and "1x28x28" in table and "1,234" in table and "4.0" in table


class CountsCalls(nn.Module):
    """A 16-channel-wide convolutional net recording, per call, whether its input was channels-last."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.layouts = []

    def forward(self, x):
        self.layouts.append(x.stride(1) == 1)
        return self.conv(x).mean((2, 3))


def test_throughput_waits_for_the_device_and_measures_in_fits_layout(monkeypatch):
    from utils import runtime

    waited = []
    monkeypatch.setattr(runtime, "synchronize", lambda device: waited.append(torch.device(device).type))
    net = CountsCalls()
    rate = profile.throughput(net, (2, 3, 8, 8), train=True, steps=3, warmup=1, device="cpu")
    assert rate > 0 and waited == ["cpu", "cpu"]  # before and after the timed steps
    assert net.layouts == [True] * 4  # the layout fit trains this net in on a CPU
    assert net.conv.weight.is_contiguous()  # and the net is given back as it was
    assert "channels-last" in profile.setup_note(net, "cpu")
    net.layouts.clear()
    profile.throughput(net, (2, 3, 8, 8), steps=2, warmup=0, device="cpu", channels_last=False)
    assert net.layouts == [False, False]


def test_synchronize_covers_cuda_and_mps(monkeypatch):
    from utils import runtime

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("cuda"))
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    for device in ("cuda", "mps", "cpu"):
        runtime.synchronize(device)
    assert calls == ["cuda", "mps"]


def test_max_steps_caps_the_throughput_measurement(monkeypatch, capsys):
    monkeypatch.setenv("CNN_MAX_STEPS", "2")
    monkeypatch.setattr(profile, "_announced_cap", False)
    net = CountsCalls()
    profile.throughput(net, (2, 3, 8, 8), steps=10, warmup=5, device="cpu")
    assert len(net.layouts) == 2 + 2
    assert "CNN_MAX_STEPS=2" in capsys.readouterr().out

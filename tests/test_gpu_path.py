"""The GPU path of utils.train.fit (mixed precision, channels-last, cuDNN autotuning, compile),
exercised as far as a CPU can: the same code runs on the CPU with bf16 autocast and
channels-last tensors, and the choices made for a GPU are checked with a patched torch.cuda.
Tests that need a real GPU are skipped without one; every other test passes the device
explicitly, so the whole file also passes on a CUDA machine."""
from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from tests.conftest import make_fake_fashion_mnist
from utils import data, runtime, train

CUDA = torch.cuda.is_available()


@pytest.fixture
def loaders(isolated):
    """Tiny learnable fake Fashion-MNIST (class k has brightness k), batch 16."""
    make_fake_fashion_mnist(isolated / "data")
    return data.fashion_mnist(16, device="cpu")


def conv_bn_net():
    """Convolutions, batch norm and a linear layer: the layer kinds autocast treats differently."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


class WithAuxHead(nn.Module):
    """Returns (main, aux) in training mode like GoogLeNet/Inception-v3."""

    def __init__(self):
        super().__init__()
        self.body = conv_bn_net()
        self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 10))

    def forward(self, x):
        main = self.body(x)
        return (main, self.aux(x)) if self.training else main


# ----------------------------------------------------------------------------- mixed precision on the CPU

def test_bf16_on_cpu_trains_and_keeps_float32_weights(loaders):
    torch.manual_seed(0)
    net = conv_bn_net()
    history = train.fit(net, *loaders, epochs=1, lr=0.1, amp="bf16", progress=False, device="cpu")
    assert history.meta["amp"] == "bfloat16"
    assert math.isfinite(history.train_loss[0]) and 0 <= history.test_acc[0] <= 1
    # autocast computes in bf16 but the optimizer updates float32 master weights
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_bf16_autocast_really_lowers_precision_on_cpu():
    layer = nn.Linear(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(2, 8)).dtype == torch.bfloat16


def test_bf16_with_auxiliary_head_and_grad_clip(loaders):
    torch.manual_seed(0)
    history = train.fit(WithAuxHead(), *loaders, epochs=1, lr=0.05, amp="bf16", grad_clip=1.0,
                        progress=False, device="cpu")
    assert math.isfinite(history.train_loss[0])


def test_fp16_on_cpu_needs_no_grad_scaler(loaders):
    # GradScaler is only built for CUDA; fp16 autocast on the CPU must still run
    torch.manual_seed(0)
    history = train.fit(conv_bn_net(), *loaders, epochs=1, lr=0.05, amp="fp16", progress=False, device="cpu")
    assert history.meta["amp"] == "float16"


def test_auto_means_full_precision_on_cpu(loaders):
    history = train.fit(conv_bn_net(), *loaders, epochs=1, lr=0.1, progress=False, device="cpu")
    assert history.meta["amp"] is None


def test_bf16_checkpoint_resumes(loaders, tmp_path):
    checkpoint = tmp_path / "bf16.pt"
    torch.manual_seed(0)
    train.fit(conv_bn_net(), *loaders, epochs=1, lr=0.1, amp="bf16", checkpoint=checkpoint, progress=False, device="cpu")
    torch.manual_seed(0)
    history = train.fit(conv_bn_net(), *loaders, epochs=2, lr=0.1, amp="bf16", checkpoint=checkpoint,
                        progress=False, device="cpu")
    assert history.epochs == 2


# ----------------------------------------------------------------------------- channels-last on the CPU

def test_channels_last_on_cpu_trains_and_converts_the_weights(loaders):
    torch.manual_seed(0)
    net = conv_bn_net()
    history = train.fit(net, *loaders, epochs=1, lr=0.1, channels_last=True, progress=False, device="cpu")
    assert math.isfinite(history.train_loss[0])
    conv_weight = net[0].weight
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_gives_the_same_predictions(loaders):
    torch.manual_seed(0)
    net = conv_bn_net().eval()
    _, test_iter = loaders
    plain = train.evaluate(net, test_iter, "cpu")
    net.to(memory_format=torch.channels_last)
    assert train.evaluate(net, test_iter, "cpu", channels_last=True) == plain


def wide_conv_net():
    """The first convolution 16 channels wide: channels-last pays off on a CPU."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_channels_last_auto_stays_off_on_cpu_for_narrow_convolutions(loaders):
    net = conv_bn_net()  # an 8-channel first convolution, like LeNet's 6
    history = train.fit(net, *loaders, epochs=1, lr=0.1, progress=False, device="cpu")
    assert net[0].weight.is_contiguous()
    assert history.meta["channels_last"] is False


def test_channels_last_auto_is_on_on_cpu_for_wide_convolutions(loaders):
    net = wide_conv_net()
    history = train.fit(net, *loaders, epochs=1, lr=0.1, progress=False, device="cpu")
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert history.meta["channels_last"] is True and math.isfinite(history.train_loss[0])


def test_channels_last_false_overrides_auto(loaders):
    net = wide_conv_net()
    history = train.fit(net, *loaders, epochs=1, lr=0.1, channels_last=False, progress=False, device="cpu")
    assert net[0].weight.is_contiguous() and history.meta["channels_last"] is False


@pytest.mark.parametrize("make, device, expected", [
    (conv_bn_net, "cpu", False),       # first convolution 8 < 16 channels
    (wide_conv_net, "cpu", True),
    (conv_bn_net, "cuda", True),       # on a GPU every convolutional net
    (wide_conv_net, "mps", False),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), "cuda", False),  # no convolution
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), "cpu", False),
])
def test_prefers_channels_last_table(make, device, expected):
    assert train.prefers_channels_last(make(), torch.device(device)) is expected


def test_chapter_models_channels_last_choice_on_cpu():
    from utils import models

    cpu = torch.device("cpu")
    assert not train.prefers_channels_last(models.bn_lenet_concise(), cpu)  # measured 0.82x
    assert not train.prefers_channels_last(models.lenet(), cpu)
    for make in (models.alexnet, models.nin, models.googlenet, models.resnet18, models.inception_bn,
                 lambda: models.vgg11(width_divisor=4)):
        assert train.prefers_channels_last(make(), cpu)


class RecordsAutotuning(nn.Module):
    """``conv_bn_net`` that records whether cuDNN autotuning was on during each forward pass."""

    def __init__(self):
        super().__init__()
        self.body = conv_bn_net()
        self.seen = []

    def forward(self, x):
        self.seen.append(torch.backends.cudnn.benchmark)
        return self.body(x)


def test_cudnn_autotuning_is_not_switched_on_for_the_cpu(loaders, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    net = RecordsAutotuning()
    train.fit(net, *loaders, epochs=1, lr=0.1, progress=False, device="cpu")
    assert set(net.seen) == {False} and torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize("before", [False, True])
def test_cudnn_autotuning_is_restored_afterwards(monkeypatch, before):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)
    with runtime.cudnn_autotuning(True):
        assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cudnn.benchmark is before
    with pytest.raises(RuntimeError), runtime.cudnn_autotuning(True):
        raise RuntimeError("a failing run restores it too")
    assert torch.backends.cudnn.benchmark is before


# ----------------------------------------------------------------------------- the GPU choices, with torch.cuda patched

def test_amp_dtype_asks_for_native_bf16(monkeypatch):
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return False

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert train.amp_dtype(torch.device("cuda"), "auto") == torch.float16
    assert asked == {"including_emulation": False}  # emulated bf16 is slow: do not count it


@pytest.mark.parametrize("device, amp, native_bf16, expected", [
    ("cuda", "auto", True, torch.bfloat16),
    ("cuda", "auto", False, torch.float16),
    ("cuda", "bf16", False, torch.bfloat16),
    ("cuda", "fp16", True, torch.float16),
    ("cuda", None, True, None),
    ("cuda", False, True, None),
    ("cuda", "off", True, None),
    ("cpu", "auto", True, None),
    ("mps", "auto", True, None),
    ("cpu", "bf16", False, torch.bfloat16),
])
def test_amp_dtype_table(monkeypatch, device, amp, native_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16)
    assert train.amp_dtype(torch.device(device), amp) == expected


def test_native_bf16_on_pytorch_without_including_emulation(monkeypatch):
    """PyTorch before 2.4 has ``is_bf16_supported()`` without the keyword (and counts only
    native support): the call falls back instead of failing."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert train.amp_dtype(torch.device("cuda"), "auto") == torch.bfloat16


def test_grad_scaler_only_for_fp16_on_cuda():
    assert runtime.grad_scaler(torch.device("cpu"), torch.float16) is None
    assert runtime.grad_scaler(torch.device("cuda"), torch.bfloat16) is None
    assert runtime.grad_scaler(torch.device("cuda"), None) is None
    scaler = runtime.grad_scaler(torch.device("cuda"), torch.float16)  # no GPU needed to build one
    assert scaler is not None and hasattr(scaler, "unscale_")


def test_grad_scaler_falls_back_on_pytorch_without_torch_amp_grad_scaler(monkeypatch):
    monkeypatch.delattr(torch.amp, "GradScaler")
    scaler = runtime.grad_scaler(torch.device("cuda"), torch.float16)
    assert type(scaler).__module__.startswith("torch.")


def test_amp_dtype_rejects_unknown_values():
    with pytest.raises(ValueError, match="amp must be"):
        train.amp_dtype(torch.device("cpu"), "int8")


# ----------------------------------------------------------------------------- compile and the real GPU

@pytest.mark.skipif(os.environ.get("CNN_SLOW_TESTS") != "1",
                    reason="torch.compile takes a minute or more on a CPU; set CNN_SLOW_TESTS=1")
def test_compile_on_cpu(loaders):
    torch.manual_seed(0)
    net = conv_bn_net()
    history = train.fit(net, *loaders, epochs=1, lr=0.1, compile=True, progress=False, device="cpu")
    assert math.isfinite(history.train_loss[0])
    # the checkpointable module is the original one, not the compiled wrapper
    assert not any(key.startswith("_orig_mod") for key in net.state_dict())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_gpu_defaults(loaders):
    train_iter, test_iter = loaders
    train_iter, test_iter = (data.DeviceLoader(it.images, it.labels, 16, shuffle=s, device="cuda")
                             for it, s in ((train_iter, True), (test_iter, False)))
    net = conv_bn_net()
    before = torch.backends.cudnn.benchmark
    net = RecordsAutotuning()
    history = train.fit(net, train_iter, test_iter, epochs=1, lr=0.1, device="cuda", progress=False)
    native = runtime.native_bf16(torch.device("cuda"))
    assert history.meta["amp"] == ("bfloat16" if native else "float16")
    assert net.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert set(net.seen) == {True} and torch.backends.cudnn.benchmark is before


def test_installed_torch_meets_the_requirements_floor():
    import re

    from utils.config import REPO_ROOT

    floor = re.search(r"^torch>=([\d.]+)", (REPO_ROOT / "requirements.txt").read_text(), re.M).group(1)
    installed = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", torch.__version__).groups())
    assert installed >= tuple(int(part) for part in floor.split("."))
    assert hasattr(torch.amp, "GradScaler") and hasattr(torch, "mps")  # what runtime uses first

"""How a model runs on a device: eval mode, precision, memory layout, cuDNN autotuning and
waiting for the device. ``utils.train.fit`` and ``utils.profile.throughput`` share these
choices, so a measured speed is the speed ``fit`` trains at.
"""
from __future__ import annotations

import contextlib
from contextlib import nullcontext

import torch
from torch import nn


@contextlib.contextmanager
def eval_mode(net: nn.Module, training: bool = False):
    """Put ``net`` in eval mode (or training mode with ``training=True``) for the block, then
    restore the mode it had."""
    was_training = net.training
    net.train(training)
    try:
        yield net
    finally:
        net.train(was_training)


def synchronize(device) -> None:
    """Wait until ``device`` has finished its queued work (CUDA and Apple GPUs run
    asynchronously: without this a timer measures only how fast work is queued)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ----------------------------------------------------------------------------- precision

def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA GPU computes bfloat16 natively (Ampere and later)."""
    try:
        # Some GPUs report bf16 only through slow emulation: ask for native support.
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # PyTorch before 2.4 has no including_emulation and counts only native
        return bool(torch.cuda.is_bf16_supported())


def amp_dtype(device: torch.device, amp) -> torch.dtype | None:
    """The autocast dtype for ``amp`` = 'auto' | 'bf16' | 'fp16' | None on ``device``.

    'auto' means bf16 on GPUs that run it natively (Ampere and later), fp16 (with a
    gradient scaler) on older GPUs, and full precision on CPUs and Apple GPUs.
    """
    if amp in (None, False, "off"):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if amp != "auto":
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or None, got {amp!r}")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if native_bf16(device) else torch.float16


def grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """A gradient scaler for fp16 on CUDA (fp16 gradients underflow without one), else None."""
    if dtype != torch.float16 or device.type != "cuda":
        return None
    if hasattr(torch.amp, "GradScaler"):  # PyTorch 2.3 and later
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for ``dtype`` on ``device`` (a no-op context for full precision)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def precision_name(dtype: torch.dtype | None) -> str | None:
    """'bfloat16', 'float16' or None (full precision): how a History records it."""
    return str(dtype).replace("torch.", "") if dtype is not None else None


# ----------------------------------------------------------------------------- memory layout

CHANNELS_LAST_MIN_WIDTH = 16  # float32 lanes of one AVX-512 register


def prefers_channels_last(net: nn.Module, device: torch.device) -> bool:
    """What ``channels_last='auto'`` means: whether channels-last memory (NHWC) is expected
    to train ``net`` faster on ``device``.

    - CUDA GPUs: yes for every convolutional network (cuDNN's fast kernels, tensor cores
      above all, work in NHWC).
    - CPUs: yes when the first convolution has at least 16 output channels. oneDNN's
      NHWC kernels vectorise across channels, and the first layers, working on the
      largest feature maps, take most of the time. Measured on a 2-core AVX-512 CPU, one
      training step was 1.07-1.35x faster for AlexNet, NiN, GoogLeNet, ResNet-18,
      Inception-BN and a quarter-width VGG-11 (first layers 16-96 channels wide), but
      0.82x (slower) for batch-norm LeNet, whose 6-channel layers leave most of a vector
      register empty.
    - Apple GPUs and networks without convolutions: no.
    """
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and convs[0].out_channels >= CHANNELS_LAST_MIN_WIDTH


def resolve_channels_last(net: nn.Module, device: torch.device, channels_last) -> bool:
    """``channels_last`` = 'auto' | True | False, resolved for ``net`` on ``device``."""
    if channels_last == "auto":
        return prefers_channels_last(net, device)
    if not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
    return channels_last


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An image batch in the chosen memory layout."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@contextlib.contextmanager
def cudnn_autotuning(enabled: bool):
    """Let cuDNN time its convolution algorithms and keep the fastest (worth it when the
    input shape is fixed, as in training) for the block, then restore the previous setting."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled) or before
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def describe_setup(device: torch.device, dtype: torch.dtype | None, channels_last: bool) -> str:
    """One line naming the precision, memory layout and autotuning, e.g. for a report."""
    precision = {None: "float32", torch.bfloat16: "bfloat16 autocast",
                 torch.float16: "float16 autocast"}.get(dtype, str(dtype))
    layout = "channels-last" if channels_last else "NCHW"
    tuning = ", cuDNN autotuning" if device.type == "cuda" else ""
    return f"{device.type}, {precision}, {layout}{tuning}"

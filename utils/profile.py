"""How big and how expensive a model is: parameters, FLOPs, a layer table, throughput.

FLOPs are forward-pass floating-point operations counted by PyTorch's
``FlopCounterMode``: 2 per multiply-add of convolutions and matrix products (pooling,
activations and batch norm are not counted, as in the papers). Papers and torchvision
often quote multiply-adds (MACs) instead: MACs = FLOPs / 2.
"""
from __future__ import annotations

import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import config, runtime
from .runtime import eval_mode


def count_params(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all of them, or only those that require gradients)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def _model_device(net: nn.Module) -> torch.device:
    tensor = next(iter(net.parameters()), None)
    if tensor is None:
        tensor = next(iter(net.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def count_flops(net: nn.Module, input_shape, *, per_module: bool = False):
    """Forward FLOPs of one pass over an input of ``input_shape`` (batch included).

    Runs in eval mode (no auxiliary heads, no dropout) on the model's own device; build
    the model on the ``meta`` device (``with torch.device('meta'): net = factory()``) to
    count an ImageNet-size model without spending memory or time. With
    ``per_module=True`` returns ``(total, {module name: flops})``.
    """
    device = _model_device(net)
    x = torch.zeros(tuple(input_shape), device=device)
    with eval_mode(net), torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    total = counter.get_total_flops()
    if not per_module:
        return total
    # FlopCounterMode names modules "<RootClass>.<child>.<grandchild>"; drop the root.
    root = type(net).__name__
    by_module = {name[len(root) + 1:]: sum(counts.values())
                 for name, counts in counter.get_flop_counts().items()
                 if name.startswith(root + ".")}
    return total, by_module


def count_train_flops(net: nn.Module, input_shape) -> int:
    """FLOPs of one forward plus backward pass (training step without the optimizer), auxiliary
    heads included. On a model that lives on the ``meta`` device nothing is computed."""
    device = _model_device(net)
    x = torch.zeros(tuple(input_shape), device=device)
    try:
        with eval_mode(net, training=True), FlopCounterMode(display=False) as counter:
            outputs = net(x)  # in training mode a model may return (main, aux1, ...): all train
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            sum(output.float().sum() for output in outputs).backward()
    finally:
        net.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def output_shapes(net: nn.Module, input_shape) -> list[tuple[str, str, tuple, int]]:
    """``(name, layer type, output shape, parameters)`` for each direct child of ``net``."""
    rows = []
    hooks = []
    for name, child in net.named_children():
        def record(module, inputs, output, name=name):
            shape = tuple((output[0] if isinstance(output, (tuple, list)) else output).shape)
            rows.append((name, type(module).__name__, shape, count_params(module)))
        hooks.append(child.register_forward_hook(record))
    try:
        with eval_mode(net), torch.no_grad():
            net(torch.zeros(tuple(input_shape), device=_model_device(net)))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def layer_table(net: nn.Module, input_shape, *, flops: bool = True) -> str:
    """A text table: each top-level layer's output shape, parameters (and FLOPs)."""
    rows = output_shapes(net, input_shape)
    by_module = count_flops(net, input_shape, per_module=True)[1] if flops else {}
    header = f"{'layer':<14}{'type':<20}{'output shape':<22}{'params':>13}"
    header += f"{'MFLOPs':>11}" if flops else ""
    lines = [header, "-" * len(header)]
    for name, kind, shape, params in rows:
        line = f"{name:<14}{kind:<20}{str(tuple(shape[1:])):<22}{params:>13,}"
        if flops:
            line += f"{by_module.get(name, 0) / 1e6:>11.1f}"
        lines.append(line)
    lines.append("-" * len(header))
    total = f"{'total':<56}{count_params(net):>13,}"
    if flops:
        total += f"{count_flops(net, input_shape) / 1e6:>11.1f}"
    lines.append(total)
    return "\n".join(lines)


def print_layer_table(net: nn.Module, input_shape, *, flops: bool = True) -> None:
    print(layer_table(net, input_shape, flops=flops))


def complexity_table(models: dict) -> str:
    """Rows of ``name -> (params, flops, input_shape)`` as a text table, MACs beside FLOPs."""
    width = max([len("model")] + [len(name) for name in models]) + 2
    header = f"{'model':<{width}}{'input':<12}{'params':>14}{'MFLOPs':>12}{'MMACs':>12}"
    lines = [header, "-" * len(header)]
    for name, (params, flops, shape) in models.items():
        size = "x".join(str(s) for s in shape[1:])
        lines.append(f"{name:<{width}}{size:<12}{params:>14,}{flops / 1e6:>12,.1f}{flops / 2e6:>12,.1f}")
    return "\n".join(lines)


def throughput(net: nn.Module, input_shape, *, train: bool = False, steps: int = 10,
               warmup: int = 2, device=None, amp="auto", channels_last="auto") -> float:
    """Examples per second of forward passes (or forward+backward+SGD steps if ``train``),
    measured the way ``fit`` runs: the same precision and memory layout (``amp`` and
    ``channels_last`` as in ``fit``; ``setup_note`` names them), cuDNN autotuning on a
    GPU, and waiting for the device before reading the clock on every device.
    ``$CNN_MAX_STEPS`` caps ``steps`` and ``warmup``."""
    device = torch.device(device) if device is not None else _model_device(net)
    steps, warmup = _capped(steps), _capped(warmup)
    dtype = runtime.amp_dtype(device, amp)
    layout = runtime.resolve_channels_last(net, device, channels_last)
    x = runtime.to_layout(torch.randn(tuple(input_shape), device=device), layout)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6) if train else None
    scaler = runtime.grad_scaler(device, dtype) if train else None

    def one_step():
        with runtime.autocast(device, dtype), torch.set_grad_enabled(train):
            output = net(x)
            output = (output[0] if isinstance(output, (tuple, list)) else output).float().mean()
        if not train:
            return
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            output.backward()
            optimizer.step()
        else:
            scaler.scale(output).backward()
            scaler.step(optimizer)
            scaler.update()

    before = _layout_of(net)
    net.to(memory_format=torch.channels_last if layout else torch.contiguous_format)
    try:
        with eval_mode(net, training=train), runtime.cudnn_autotuning(device.type == "cuda"):
            for _ in range(warmup):
                one_step()
            runtime.synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                one_step()
            runtime.synchronize(device)
            elapsed = time.perf_counter() - start
    finally:
        net.to(memory_format=before)
        if train:
            net.zero_grad(set_to_none=True)
    return x.shape[0] * steps / elapsed


def setup_note(net: nn.Module, device, *, amp="auto", channels_last="auto") -> str:
    """How ``throughput`` (and ``fit``) run ``net`` on ``device``, e.g. 'cuda, bfloat16
    autocast, channels-last, cuDNN autotuning'."""
    device = torch.device(device)
    return runtime.describe_setup(device, runtime.amp_dtype(device, amp),
                                  runtime.resolve_channels_last(net, device, channels_last))


def _layout_of(net: nn.Module):
    weight = next((m.weight for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if weight is not None and weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) \
            and not weight.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


_announced_cap = False


def _capped(n: int) -> int:
    """``n`` limited by ``$CNN_MAX_STEPS`` (said once per session)."""
    global _announced_cap
    cap = config.max_steps()
    if cap is None or n <= cap:
        return n
    if not _announced_cap:
        print(f"CNN_MAX_STEPS={cap}: throughput measured over at most {cap} steps (a dry run)")
        _announced_cap = True
    return cap


def matmul_gflops(size: int = 1024, repeats: int = 5, device=None) -> float:
    """This machine's measured float32 matrix-multiply rate (median of ``repeats``), GFLOP/s."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    rates = []
    for _ in range(repeats):
        runtime.synchronize(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        runtime.synchronize(device)
        rates.append(4 * 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return sorted(rates)[len(rates) // 2]


def train_flops_per_example(net: nn.Module, image_shape) -> int | None:
    """Forward plus backward FLOPs of one training example of shape ``image_shape`` (C, H, W).

    Counted on a copy of ``net`` whose tensors live on the ``meta`` device (the copy never holds
    real weights, so a large model on a GPU is not duplicated in memory), so the model's weights,
    batch-norm statistics and random number generators are untouched and nothing is computed. A
    batch of two is counted and halved (batch norm on one example is undefined). ``None`` when
    the model cannot be copied or run this way.
    """
    import copy

    try:
        # deepcopy takes what ``memo`` already maps: every tensor becomes a meta stand-in
        memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                for p in net.parameters()}
        memo.update({id(b): torch.empty_like(b, device="meta") for b in net.buffers()})
        shadow = copy.deepcopy(net, memo)
        return count_train_flops(shadow, (2, *image_shape)) // 2
    except Exception:  # a model that cannot be deep-copied or traced on meta: no count
        return None

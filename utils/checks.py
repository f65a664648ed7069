"""Input checks that models call first, so a wrong input fails with a message saying what to do."""
from __future__ import annotations

import torch


class InputSizeError(ValueError):
    """An image batch of the wrong shape for a model."""


def check_images(x: torch.Tensor, *, model: str, in_channels: int, min_size: int | None = None,
                 sizes: tuple[int, int] | None = None, preferred: int | None = None) -> None:
    """Check that ``x`` is ``(N, in_channels, H, W)`` with H and W allowed by the model.

    ``min_size``: the smallest side the model's downsampling survives; ``sizes``: an
    inclusive range of sides for models whose first linear layer fixes the resolution;
    ``preferred``: the side to suggest (default: the smallest that works).
    """
    if x.dim() != 4:
        raise InputSizeError(f"{model} expects a batch of images (N, C, H, W), got shape "
                             f"{tuple(x.shape)}. Add the batch dimension with x.unsqueeze(0).")
    channels, height, width = x.shape[1:]
    if channels != in_channels:
        raise InputSizeError(
            f"{model} was built for {in_channels}-channel images but got {channels} channels. "
            f"Build it with in_channels={channels} (Fashion-MNIST: 1, ImageNet/CIFAR: 3).")
    side = min(height, width)
    if sizes is not None and not (sizes[0] <= height <= sizes[1] and sizes[0] <= width <= sizes[1]):
        wanted = f"{sizes[0]}x{sizes[0]}" if sizes[0] == sizes[1] else f"{sizes[0]} to {sizes[1]} pixels"
        raise InputSizeError(
            f"{model} needs {wanted} input (its first linear layer is sized for it); got "
            f"{height}x{width}. Resize the data, e.g. "
            f"fashion_mnist(batch_size, resize={preferred or sizes[0]}).")
    if min_size is not None and side < min_size:
        raise InputSizeError(
            f"{model} needs input of at least {min_size}x{min_size} pixels (smaller images leave "
            f"its last stages too little to work on); got {height}x{width}. Resize the data, "
            f"e.g. fashion_mnist(batch_size, resize={preferred or min_size}).")


def accepted_sides(side_of, target: int, *, pooled: bool = False, search=range(8, 1024)) -> tuple[int, int]:
    """Smallest and largest square input side a feature stack accepts.

    ``side_of(n)`` is the side of the stack's last feature map for an ``n x n`` input.
    Without pooling the accepted sides are those that end in a ``target x target`` map (the
    first linear layer is sized for it); with adaptive pooling (``pooled=True``) any side that
    leaves at least a 1x1 map is accepted, and the largest is unbounded (returned as 10**6).
    Raises ``ValueError`` when no side in ``search`` works.
    """
    valid = [n for n in search if (side_of(n) >= 1 if pooled else side_of(n) == target)]
    if not valid:
        raise ValueError(f"no input side from {search.start} to {search.stop - 1} gives a "
                         f"{target}x{target} feature map; check the layers' kernels and strides")
    return valid[0], (10**6 if pooled else valid[-1])

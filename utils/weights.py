"""Copying weights between two implementations of the same network, to prove they are equal.

A chapter checks its model against torchvision's or timm's by copying the reference's weights
into it and comparing outputs on the same input. The two implementations register their
tensors in the same order (that is what "layer for layer the same" means) but often under
different names, so tensors are paired by position and every pair must agree in shape.
"""
from __future__ import annotations

import torch
from torch import nn


class WeightMismatch(ValueError):
    """The two networks do not hold the same tensors in the same order."""


def copy_weights_by_position(source: nn.Module, target: nn.Module) -> list[tuple[str, str]]:
    """Load ``source``'s parameters and buffers into ``target``, pairing them in registration order.

    Returns the ``(source_name, target_name)`` pairs. Raises ``WeightMismatch`` naming the first
    pair whose shapes differ, or the two counts when the networks hold different numbers of tensors.
    ``target`` may live on the meta device (built with ``torch.device("meta")``): it is then
    materialised on ``source``'s device first.
    """
    source_state, target_state = source.state_dict(), target.state_dict()
    if len(source_state) != len(target_state):
        raise WeightMismatch(f"the source holds {len(source_state)} tensors, the target "
                             f"{len(target_state)}: the two networks are not built layer for layer alike")
    pairs = list(zip(source_state, target_state))
    for position, (s, t) in enumerate(pairs):
        if source_state[s].shape != target_state[t].shape:
            raise WeightMismatch(f"tensor {position}: {s} has shape {tuple(source_state[s].shape)} but "
                                 f"{t} has shape {tuple(target_state[t].shape)}")
    if any(tensor.is_meta for tensor in target_state.values()):
        device = next(iter(source_state.values())).device
        target.to_empty(device=device)
    target.load_state_dict({t: source_state[s] for s, t in pairs})
    return pairs


def max_output_difference(source: nn.Module, target: nn.Module, input_shape, *, seed: int = 0) -> float:
    """Largest absolute difference of the two networks' outputs (eval mode) on one random input
    of shape ``input_shape`` (batch included); the networks are left in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*input_shape, generator=generator)
    source.eval(), target.eval()
    with torch.no_grad():
        return (source(x) - target(x)).abs().max().item()

import pytest
import torch
from torch import nn

from utils.weights import WeightMismatch, copy_weights_by_position, max_output_difference


def small(hidden=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 3))


class Renamed(nn.Module):
    """The same layers as ``small`` under other names."""
    def __init__(self, hidden=8):
        super().__init__()
        self.fc = nn.Linear(4, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.fc(x))))


def test_copy_pairs_renamed_tensors_and_makes_outputs_equal():
    source, target = small(), Renamed()
    source[1].running_mean.fill_(0.5)
    assert max_output_difference(source, target, (5, 4)) > 1e-3
    pairs = copy_weights_by_position(source, target)
    assert pairs[0] == ("0.weight", "fc.weight") and pairs[-1] == ("3.bias", "head.bias")
    assert len(pairs) == len(source.state_dict())
    assert max_output_difference(source, target, (5, 4)) == 0.0


def test_copy_into_a_meta_model_materialises_it():
    source = small()
    with torch.device("meta"):
        target = Renamed()
    copy_weights_by_position(source, target)
    assert not any(p.is_meta for p in target.parameters())
    assert max_output_difference(source, target, (5, 4)) == 0.0


def test_shape_mismatch_names_the_pair():
    with pytest.raises(WeightMismatch, match=r"tensor 0: 0.weight has shape \(8, 4\) but fc.weight has shape \(6, 4\)"):
        copy_weights_by_position(small(), Renamed(hidden=6))


def test_count_mismatch_names_both_counts():
    with pytest.raises(WeightMismatch, match="the source holds 9 tensors, the target 4"):
        copy_weights_by_position(small(), nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)))

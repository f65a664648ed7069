"""Chapter 08: receptive-field arithmetic, dropout from scratch, rectifiers, the linear probe."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from utils import profile
from utils.checks import InputSizeError
from utils.models import (FrozenBackboneProbe, InvertedDropout, RECTIFIER_KINDS, RectifierCNN,
                          DilatedConvStack, dilated_kernel_size, gradient_receptive_field,
                          make_rectifier, resnet18, stacked_receptive_field)


def unit_stack(layers):
    convs = []
    for k, d, s in layers:
        conv = nn.Conv2d(1, 1, k, stride=s, dilation=d, padding=d * (k - 1) // 2, bias=False)
        nn.init.ones_(conv.weight)
        convs.append(conv)
    return nn.Sequential(*convs)


# --------------------------------------------------------------------- receptive fields

def test_effective_kernel_size():
    # k + (k - 1)(d - 1): Yu & Koltun (2016); 3x3 at rate 2 spans 5x5, at rate 4 9x9
    assert [dilated_kernel_size(3, d) for d in (1, 2, 3, 4)] == [3, 5, 7, 9]
    assert dilated_kernel_size(5, 2) == 9


@pytest.mark.parametrize("layers, field", [
    ([(3, 1, 1)] * 3, 7),
    ([(3, 2, 1)] * 3, 13),
    ([(3, d, 1) for d in (1, 2, 3)], 13),
    ([(3, d, 1) for d in (1, 2, 4)], 15),  # Yu & Koltun's exponential rates: 2^(i+2) - 1
    ([(3, d, 1) for d in (1, 2, 5)], 17),
    ([(3, 1, 2), (3, 2, 1)], 11),
    ([(7, 1, 2), (3, 1, 2), (3, 1, 1), (3, 1, 1)], 27),  # ResNet stem + first block
])
def test_receptive_field_formula_matches_autograd(layers, field):
    assert stacked_receptive_field(layers) == field
    mask, _ = gradient_receptive_field(unit_stack(layers), input_size=45)
    rows, cols = mask.nonzero(as_tuple=True)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (field, field)


def test_gridding_and_hdc_coverage():
    # constant rate 2: only even offsets, 7 x 7 = 49 of 13 x 13 pixels; rates 1, 2, 3 cover all 169
    assert int(gradient_receptive_field(unit_stack([(3, 2, 1)] * 3), 31)[0].sum()) == 49
    assert int(gradient_receptive_field(unit_stack([(3, d, 1) for d in (1, 2, 3)]), 31)[0].sum()) == 169
    assert int(gradient_receptive_field(unit_stack([(3, d, 1) for d in (2, 4, 8)]), 41)[0].sum()) == 225


def test_dilated_stack_keeps_size():
    block = DilatedConvStack(3, 8, rates=(1, 2, 5))
    assert block(torch.zeros(2, 3, 20, 20)).shape == (2, 8, 20, 20)
    assert block.receptive_field() == 17


# --------------------------------------------------------------------- dropout

@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_inverted_dropout_same_mask_as_nn_dropout(p):
    x = torch.randn(32, 128)
    torch.manual_seed(7)
    ours = InvertedDropout(p)(x)
    torch.manual_seed(7)
    theirs = nn.Dropout(p)(x)
    torch.testing.assert_close(ours, theirs)


def test_inverted_dropout_scaling_matches_nn_dropout_mask():
    # independent of how the masks are drawn: recover nn.Dropout's mask and apply our formula
    x = torch.rand(1000, 64) + 0.5  # no zeros in the input
    theirs = nn.Dropout(0.3)(x)
    mask = (theirs != 0).float()
    torch.testing.assert_close(x * mask * (1 / 0.7), theirs)


def test_inverted_dropout_statistics():
    out = InvertedDropout(0.3, generator=torch.Generator().manual_seed(0))(torch.ones(1_000_000))
    assert abs((out == 0).float().mean().item() - 0.3) < 0.005   # zero fraction ~ p
    assert abs(out.mean().item() - 1.0) < 0.01                     # expectation preserved
    assert torch.allclose(out[out != 0], torch.tensor(1 / 0.7))


def test_inverted_dropout_eval_is_identity_and_edges():
    x = torch.randn(8, 16)
    dropout = InvertedDropout(0.5).eval()
    assert dropout(x) is x
    assert torch.equal(nn.Dropout(0.5).eval()(x), x)
    assert torch.equal(InvertedDropout(1.0)(x), torch.zeros_like(x))
    assert InvertedDropout(0.0)(x) is x
    with pytest.raises(ValueError):
        InvertedDropout(1.5)


def test_inverted_dropout_seeded_generator_repeats():
    x = torch.randn(100)
    a = InvertedDropout(0.5, generator=torch.Generator().manual_seed(3))(x)
    b = InvertedDropout(0.5, generator=torch.Generator().manual_seed(3))(x)
    assert torch.equal(a, b)


# --------------------------------------------------------------------- rectifiers

def test_rectifier_factory_and_parameters():
    assert [profile.count_params(make_rectifier(k, 64)) for k in RECTIFIER_KINDS] == [0, 0, 0, 1, 64]
    with pytest.raises(ValueError, match="unknown rectifier"):
        make_rectifier("gelu", 8)


def test_rrelu_train_and_eval():
    torch.manual_seed(0)
    rrelu = nn.RReLU(1 / 8, 1 / 3)
    slopes = -rrelu.train()(-torch.ones(10_000))
    assert slopes.min() >= 1 / 8 and slopes.max() <= 1 / 3 and slopes.unique().numel() > 100
    assert torch.allclose(-rrelu.eval()(-torch.ones(5)), torch.full((5,), (1 / 8 + 1 / 3) / 2))


def test_rectifier_cnn_counts():
    # 4 conv-BN layers (16, 32, 64, 64) + fc 64 -> 10; PReLU adds 4 shared or 16+32+64+64 = 176 slopes
    base = (1 * 16 * 9 + 32) + (16 * 32 * 9 + 64) + (32 * 64 * 9 + 128) + (64 * 64 * 9 + 128) + 64 * 10 + 10
    assert profile.count_params(RectifierCNN("relu")) == base
    assert profile.count_params(RectifierCNN("prelu")) == base + 4
    assert profile.count_params(RectifierCNN("prelu-channel")) == base + 176
    net = RectifierCNN("prelu-channel")
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert [s.numel() for s in net.prelu_slopes()] == [16, 32, 64, 64]
    with pytest.raises(InputSizeError):
        net(torch.zeros(2, 3, 28, 28))


# --------------------------------------------------------------------- backbone probe

def test_frozen_backbone_probe_trains_only_the_head():
    torch.manual_seed(0)
    backbone = resnet18()
    backbone.fc = nn.Identity()
    probe = FrozenBackboneProbe(backbone, 512, 4)
    assert profile.count_params(probe, trainable_only=True) == 512 * 4 + 4
    probe.train()
    assert probe.head.training and not any(m.training for m in probe.backbone.modules())
    bn = probe.backbone.bn1
    before = bn.running_mean.clone()
    loss = F.cross_entropy(probe(torch.rand(4, 1, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.equal(bn.running_mean, before)  # BN statistics untouched while "training"
    assert all(p.grad is None for p in probe.backbone.parameters())
    assert probe.head.weight.grad is not None

"""Chapter 08: receptive fields and coverage, dilated ResNet-50, dropout masks, rectifiers, He
initialisation, the linear probe, and the structure of the chapter's diagrams."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from utils import profile
from utils.checks import InputSizeError
from utils import plot
from utils.models import (FrozenBackboneProbe, InvertedDropout, RECTIFIER_KINDS, RectifierCNN,
                          DilatedConvStack, dilated_coverage, dilated_kernel_size,
                          dilated_sampling_grid, gradient_receptive_field, make_rectifier,
                          rectifier_conv_block, relu_stack_stds, resnet18, stacked_receptive_field)


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


# --------------------------------------------------------------------- sampling grids and coverage

@pytest.mark.parametrize("dilation", [1, 2, 3, 4])
def test_sampling_grid_has_nine_taps_spaced_by_the_rate(dilation):
    grid = dilated_sampling_grid(dilation)
    span = dilated_kernel_size(3, dilation)
    assert grid.shape == (span, span) and int(grid.sum()) == 9
    rows, cols = grid.nonzero(as_tuple=True)
    assert sorted(set(rows.tolist())) == [0, dilation, 2 * dilation] == sorted(set(cols.tolist()))
    padded = dilated_sampling_grid(dilation, size=9)
    assert padded.shape == (9, 9) and int(padded.sum()) == 9 and padded[4, 4] == 1  # centre tap


def test_coverage_by_indicator_masks():
    # rates 2, 2, 2: a 13x13 field with holes (only even offsets: 7 x 7 = 49 pixels seen)
    grid = dilated_coverage((2, 2, 2))
    assert grid.shape == (13, 13) and int(grid.sum()) == 49 and not grid.all()
    assert not grid[1::2, :].any() and grid[::2, ::2].all()
    # rates 1, 2, 3 (HDC): the same 13x13 field, no holes; 1, 2, 5: 17x17, no holes
    assert dilated_coverage((1, 2, 3)).shape == (13, 13) and dilated_coverage((1, 2, 3)).all()
    assert dilated_coverage((1, 2, 5)).shape == (17, 17) and dilated_coverage((1, 2, 5)).all()
    assert int(dilated_coverage((2, 4, 8)).sum()) == 225  # 15 x 15 of 29 x 29
    assert dilated_coverage((1, 1, 1)).all() and dilated_coverage((1, 1, 1)).shape == (7, 7)


@pytest.mark.parametrize("rates", [(1, 1, 1), (2, 2, 2), (1, 2, 3), (1, 2, 5), (2, 4, 8)])
def test_coverage_equals_autograd_mask(rates):
    covered = dilated_coverage(rates)
    mask, _ = gradient_receptive_field(unit_stack([(3, d, 1) for d in rates]), covered.shape[0])
    assert torch.equal(covered, mask)


def test_coverage_and_sampling_figures_have_one_panel_per_mask():
    figure = plot.mask_grid({f"rates {r}": dilated_coverage(r) for r in [(2, 2, 2), (1, 2, 3)]})
    images = [image for ax in figure.axes for image in ax.images]
    assert len(images) == 2 and [image.get_array().shape for image in images] == [(13, 13), (13, 13)]
    figure = plot.mask_grid({d: dilated_sampling_grid(d, size=9) for d in (1, 2, 3)})
    assert [int(ax.images[0].get_array().sum()) for ax in figure.axes] == [9, 9, 9]


# --------------------------------------------------------------------- dilated ResNet-50

def _stage_shapes(net, size=224):
    x = torch.zeros(1, 3, size, size, device="meta")
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    shapes = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, name)(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


def test_resnet50_replace_stride_with_dilation():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        standard = torchvision.models.resnet50()
        dilated = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    assert _stage_shapes(standard)[-1] == (2048, 7, 7)       # output stride 32
    assert _stage_shapes(dilated) == [(256, 56, 56), (512, 28, 28), (1024, 28, 28), (2048, 28, 28)]  # 8
    assert profile.count_params(standard) == profile.count_params(dilated) == 25_557_032
    assert [b.conv2.dilation[0] for b in dilated.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in dilated.layer4] == [2, 4, 4]
    assert all(b.conv2.stride == (1, 1) for b in [*dilated.layer3, *dilated.layer4])
    assert dilated.layer3[0].downsample[0].stride == (1, 1)
    dilated_names = [n for n, m in dilated.named_modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)]
    assert len(dilated_names) == 8 and all(n.endswith("conv2") for n in dilated_names)


def test_resnet50_diagrams_show_the_dilated_stages():
    torchvision = pytest.importorskip("torchvision")
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(0)
    nets = {"standard": torchvision.models.resnet50(),
            "dilated": torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])}
    label = lambda block, name: f"d{block.conv2.dilation[0]} s{block.conv2.stride[0]}"
    diagram = plot.compare_architectures({k: (v, (3, 32, 32)) for k, v in nets.items()},
                                         blocks=(Bottleneck,), block_label=label)
    for part in (0, 1):
        blocks = [(box.text, times) for box, times in diagram.boxes(part) if box.text.startswith("d")]
        assert sum(times for _, times in blocks) == 3 + 4 + 6 + 3  # every bottleneck, once
        assert sorted(r.times for r in diagram.repeats(part)) == [2, 2, 3, 5]
    dilated_blocks = [(box.text, times) for box, times in diagram.boxes(1) if box.text.startswith("d")]
    assert [text for text, _ in dilated_blocks][-4:] == ["d1 s1", "d2 s1", "d2 s1", "d4 s1"]
    assert not any("s2" in text for text, _ in dilated_blocks[3:])


# --------------------------------------------------------------------- dropout masks

def test_nn_dropout_mask_fraction_scale_and_fresh_draws():
    torch.manual_seed(0)
    dropout = nn.Dropout(p=0.25)
    first, second = dropout(torch.ones(2000, 128)), dropout(torch.ones(2000, 128))
    torch.testing.assert_close(first.unique(), torch.tensor([0.0, 1 / 0.75]))  # dropped, or scaled by 1/(1-p)
    assert abs((first == 0).float().mean().item() - 0.25) < 0.01
    assert abs(first.mean().item() - 1) < 0.01                           # expectation preserved
    agreement = ((first == 0) == (second == 0)).float().mean().item()
    assert abs(agreement - (0.25 ** 2 + 0.75 ** 2)) < 0.01               # independent draws per element
    assert len({tuple(row.tolist()) for row in (first == 0)}) == 2000    # every example its own mask


def test_dropout_mask_figure_structure():
    torch.manual_seed(0)
    dropout = nn.Dropout(0.5)
    a, b = dropout(torch.ones(8, 16)) != 0, dropout(torch.ones(8, 16)) != 0
    figure = plot.mask_grid({"pass 1": a, "pass 2": b, "changed": a != b})
    arrays = [ax.images[0].get_array() for ax in figure.axes]
    assert len(arrays) == 3 and all(arr.shape == (8, 16) for arr in arrays)
    assert (arrays[0] != arrays[1]).any() and ((arrays[0] != arrays[1]) == (arrays[2] == 1)).all()


# --------------------------------------------------------------------- He initialisation

def test_he_keeps_variance_xavier_halves_it():
    xavier = relu_stack_stds(nn.init.xavier_normal_)
    he = relu_stack_stds(lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"))
    assert len(xavier) == len(he) == 30
    per_layer = (xavier[-1] / xavier[0]) ** (1 / 29)
    assert abs(per_layer - 2 ** -0.5) < 0.02            # variance halves per ReLU layer
    assert abs(xavier[0] - 1) < 0.05 and abs(he[0] - 2 ** 0.5) < 0.07
    assert 0.5 < he[-1] / he[0] < 2 and xavier[-1] < 1e-3


# --------------------------------------------------------------------- the five rectifier networks

def _negative_slope(module, channels):
    return -module.eval()(-torch.ones(1, channels, 1, 1)).mean().item()


def test_the_five_networks_really_differ_in_their_rectifier():
    slopes = {}
    for kind in RECTIFIER_KINDS:
        net = RectifierCNN(kind)
        slopes[kind] = [_negative_slope(getattr(net, f"block{i}")[2], w)
                        for i, w in zip(range(1, 5), (16, 32, 64, 64))]
    assert slopes["relu"] == [0.0] * 4
    assert slopes["leaky"] == pytest.approx([0.01] * 4)
    assert slopes["rrelu"] == pytest.approx([11 / 48] * 4)
    assert slopes["prelu"] == pytest.approx([0.25] * 4) == slopes["prelu-channel"]
    kinds = {kind: type(RectifierCNN(kind).block1[2]) for kind in RECTIFIER_KINDS}
    assert kinds == {"relu": nn.ReLU, "leaky": nn.LeakyReLU, "rrelu": nn.RReLU, "prelu": nn.PReLU,
                     "prelu-channel": nn.PReLU}


def test_rectifier_conv_block_and_state_dict_keys():
    block = rectifier_conv_block(3, 8, "prelu-channel")
    assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.PReLU] and block[2].weight.numel() == 8
    keys = list(RectifierCNN("relu").state_dict())
    assert keys[:2] == ["block1.0.weight", "block1.1.weight"] and keys[-2:] == ["fc.weight", "fc.bias"]


def test_rectifier_cnn_diagram_matches_the_layers_that_run():
    net = RectifierCNN("prelu-channel")
    diagram = plot.architecture(net, (1, 28, 28), title="RectifierCNN")
    leaves = [m for m in net.modules() if len(list(m.children())) == 0]
    assert diagram.layer_count() == len(leaves) == 4 * 3 + 2 + 3
    texts = [box.text for box, _ in diagram.boxes()]
    assert texts.count("PReLU") == 4 and sum(t.startswith("Conv 3×3") for t in texts) == 4
    assert diagram.parallels() == [] and diagram.repeats() == []


def test_hdc_block_diagram_shows_the_rates():
    diagram = plot.architecture(DilatedConvStack(1, 8, rates=(1, 2, 3)), (1, 28, 28), horizontal=True)
    convs = [box.text for box, _ in diagram.boxes() if box.text.startswith("Conv")]
    assert convs == ["Conv 3×3, p1", "Conv 3×3, p2, d2", "Conv 3×3, p3, d3"]
    assert diagram.layer_count() == 9

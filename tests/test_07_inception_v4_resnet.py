"""Chapter 07 (v4 / Inception-ResNet): Inception-v4 and Inception-ResNet-v1/v2 against their reference numbers."""
import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

from utils.weights import copy_weights_by_position
from utils import profile
from utils.checks import InputSizeError
from utils.models import (InceptionResNetA, InceptionResNetB, InceptionResNetC,
                          InceptionResNetReductionB, InceptionResNetV1Stem, InceptionResNetV2Stem,
                          InceptionV4A, InceptionV4B, InceptionV4C, InceptionV4ReductionB,
                          InceptionV4Stem, ReductionA, inception_resnet_v1, inception_resnet_v2,
                          inception_v4)

IMAGENET = (1, 3, 299, 299)
# timm 1.0 results tables (results-imagenet.csv / model cards), REFERENCES.md: parameters exact,
# GMACs as published by timm (its counter adds 2 ops per batch-norm output to conv/linear MACs).
V4_PARAMS, V4_GMACS = 42_679_816, 12.28
IR_V2_PARAMS, IR_V2_GMACS = 55_843_464, 13.18
# FlopCounterMode (conv + linear only) on timm's own models, the same for ours: 24,507,949,248
# and 26,311,588,032 FLOPs.
V4_FLOPS, IR_V2_FLOPS = 24_507_949_248, 26_311_588_032
# Inception-ResNet-v1: no reference implementation or published count; our count of the paper's
# Figures 10-15 (bias-free convs with BN, biased linear 1x1 expansions), 6.206 GMACs at 299x299.
IR_V1_PARAMS, IR_V1_FLOPS = 22_756_328, 12_412_723_392


def meta(factory, **kwargs):
    with torch.device("meta"):
        return factory(**kwargs)


def batch_norm_outputs(net, shape):
    sizes = []
    hooks = [m.register_forward_hook(lambda module, args, out: sizes.append(out.numel()))
             for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        net.eval()(torch.zeros(shape, device="meta"))
    for hook in hooks:
        hook.remove()
    return sum(sizes)


@pytest.mark.parametrize("factory, timm_name, params, flops, gmacs", [
    (inception_v4, "inception_v4", V4_PARAMS, V4_FLOPS, V4_GMACS),
    (inception_resnet_v2, "inception_resnet_v2", IR_V2_PARAMS, IR_V2_FLOPS, IR_V2_GMACS),
])
def test_imagenet_counts_equal_timm(factory, timm_name, params, flops, gmacs):
    ours = meta(factory, num_classes=1000, in_channels=3)
    with torch.device("meta"):
        reference = timm.create_model(timm_name, pretrained=False)
    assert profile.count_params(ours) == profile.count_params(reference) == params
    assert profile.count_flops(ours, IMAGENET) == profile.count_flops(reference, IMAGENET) == flops
    macs_with_bn = flops / 2 + 2 * batch_norm_outputs(ours, IMAGENET)
    assert round(macs_with_bn / 1e9, 2) == gmacs


@pytest.mark.parametrize("factory, timm_name", [(inception_v4, "inception_v4"),
                                                (inception_resnet_v2, "inception_resnet_v2")])
def test_outputs_equal_timm_with_copied_weights(factory, timm_name):
    torch.manual_seed(0)
    reference = timm.create_model(timm_name, pretrained=False).eval()
    ours = factory(num_classes=1000, in_channels=3).eval()
    copy_weights_by_position(reference, ours)
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_inception_resnet_v1_paper_counts():
    net = meta(inception_resnet_v1, num_classes=1000, in_channels=3)
    assert profile.count_params(net) == IR_V1_PARAMS
    assert profile.count_flops(net, IMAGENET) == IR_V1_FLOPS
    assert [len(net.inception_a), len(net.inception_b), len(net.inception_c)] == [5, 10, 5]
    assert isinstance(net.head, nn.Identity) and net.fc.in_features == 1792


def test_inception_resnet_v2_released_layout():
    net = meta(inception_resnet_v2, num_classes=1000, in_channels=3)
    assert [len(net.inception_a), len(net.inception_b), len(net.inception_c)] == [10, 20, 10]
    assert [b.scale for b in (net.inception_a[0], net.inception_b[0], net.inception_c[0])] == [0.17, 0.10, 0.20]
    last = net.inception_c[-1]
    assert last.scale == 1.0 and last.activation is False
    assert net.head.conv.out_channels == 1536


@pytest.mark.parametrize("in_channels, klmn, out_channels", [
    (384, (192, 224, 256, 384), 1024),   # Inception-v4 (paper Table 1)
    (256, (192, 192, 256, 384), 896),    # Inception-ResNet-v1
    (320, (256, 256, 384, 384), 1088),   # Inception-ResNet-v2, released layout
    (384, (256, 256, 384, 384), 1152),   # Inception-ResNet-v2, paper layout (Figure 17 says 1154)
])
def test_reduction_a_channels(in_channels, klmn, out_channels):
    block = meta(ReductionA, in_channels=in_channels, k=klmn[0], l=klmn[1], m=klmn[2], n=klmn[3])
    assert block(torch.zeros(1, in_channels, 35, 35, device="meta")).shape == (1, out_channels, 17, 17)


def test_block_shapes():
    with torch.device("meta"):
        assert InceptionV4Stem(3)(torch.zeros(IMAGENET)).shape == (1, 384, 35, 35)
        assert InceptionResNetV1Stem(3)(torch.zeros(IMAGENET)).shape == (1, 256, 35, 35)
        assert InceptionResNetV2Stem(3)(torch.zeros(IMAGENET)).shape == (1, 320, 35, 35)
        assert InceptionV4A()(torch.zeros(1, 384, 35, 35)).shape == (1, 384, 35, 35)
        assert InceptionV4B()(torch.zeros(1, 1024, 17, 17)).shape == (1, 1024, 17, 17)
        assert InceptionV4ReductionB()(torch.zeros(1, 1024, 17, 17)).shape == (1, 1536, 8, 8)
        assert InceptionV4C()(torch.zeros(1, 1536, 8, 8)).shape == (1, 1536, 8, 8)
        reduction_b = InceptionResNetReductionB(896, (256, 384), (256, 256), (256, 256, 256))
        assert reduction_b(torch.zeros(1, 896, 17, 17)).shape == (1, 1792, 8, 8)


def test_residual_blocks_keep_shape_and_scale_zero_is_relu():
    torch.manual_seed(0)
    blocks = [(InceptionResNetA, (64, 8, (8, 8), (8, 12, 16))),
              (InceptionResNetB, (64, 8, (8, 8, 8))),
              (InceptionResNetC, (64, 8, (8, 8, 8)))]
    x = torch.randn(2, 64, 5, 5)
    for cls, args in blocks:
        assert cls(*args, scale=0.2)(x).shape == x.shape
        assert torch.equal(cls(*args, scale=0.0)(x), F.relu(x))
        assert torch.equal(cls(*args, scale=0.0, activation=False)(x), x)


@pytest.mark.parametrize("factory", [inception_v4, inception_resnet_v1, inception_resnet_v2])
def test_fashion_mnist_reduced_variants(factory):
    net = factory(blocks=(1, 1, 1))
    assert net(torch.randn(2, 1, 75, 75)).shape == (2, 10)
    with pytest.raises(InputSizeError, match="at least 75x75"):
        net(torch.randn(2, 1, 74, 74))
    with pytest.raises(InputSizeError, match="in_channels=3"):
        net(torch.randn(2, 3, 75, 75))


# ---------------------------------------------------------------- diagrams (structure, not pixels)
from utils import plot  # noqa: E402
from utils.diagram import layer_text  # noqa: E402
from utils.models import BasicConv2d, mixed_5b_branches, residual_stage, stem_split2_towers  # noqa: E402


def unit_label(block, name):
    if isinstance(block, BasicConv2d):
        return f"{layer_text(block.conv)} +BN+ReLU"
    if hasattr(block, "scale"):
        return f"{type(block).__name__} ×{block.scale:g}" + ("" if block.activation else ", no ReLU")
    return type(block).__name__


UNITS = dict(blocks=(BasicConv2d,), block_label=unit_label)


def leaf_count(module):
    return sum(1 for m in module.modules() if next(m.children(), None) is None)


def units(diagram, part=0):
    return sum(times for box, times in diagram.boxes(part) if box.kind == "BasicConv2d")


def branch_counts(diagram, part=0):
    return sorted(len(p.branches) for p in diagram.parallels(part))


@pytest.mark.parametrize("name, build, shape, branches", [
    ("v4 stem", lambda: InceptionV4Stem(3), (3, 299, 299), [2, 2, 2]),
    ("Inception-A", InceptionV4A, (384, 35, 35), [4]),
    ("Reduction-A", lambda: ReductionA(384, 192, 224, 256, 384), (384, 35, 35), [3]),
    ("Inception-B", InceptionV4B, (1024, 17, 17), [4]),
    ("Reduction-B", InceptionV4ReductionB, (1024, 17, 17), [3]),
    ("Inception-C", InceptionV4C, (1536, 8, 8), [2, 2, 4]),
    ("IR Reduction-B", lambda: InceptionResNetReductionB(1088, (256, 384), (256, 288), (256, 288, 320)),
     (1088, 17, 17), [4]),
])
def test_concat_block_diagrams(name, build, shape, branches):
    block = meta(build)
    with torch.device("meta"):
        diagram = plot.architecture(block, shape, title=name, **UNITS)
    assert branch_counts(diagram) == branches
    assert diagram.layer_count() == leaf_count(block)          # every layer that runs is drawn
    assert units(diagram) == sum(isinstance(m, BasicConv2d) for m in block.modules())
    assert diagram.repeats() == []
    assert [b for b, _ in diagram.boxes() if b.kind == "concat"][-1].shape[0] == \
        block(torch.zeros(1, *shape, device="meta")).shape[1]


@pytest.mark.parametrize("cls, args, shape, branches", [
    (InceptionResNetA, (320, 32, (32, 32), (32, 48, 64)), (320, 35, 35), 3),
    (InceptionResNetB, (1088, 192, (128, 160, 192)), (1088, 17, 17), 2),
    (InceptionResNetC, (2080, 192, (192, 224, 256)), (2080, 8, 8), 2),
])
def test_residual_block_diagrams_show_scale_identity_and_sum(cls, args, shape, branches):
    block = cls(*args, scale=0.17)
    diagram = plot.architecture(block, shape, **UNITS)
    kinds = [box.kind for box, _ in diagram.boxes()]
    assert [box.text for box, _ in diagram.boxes() if box.kind == "scale"] == ["× 0.17"]
    assert kinds.count("add") == 1 and kinds[-1] == "ReLU"
    outer = [p for p in diagram.parallels() if any(not b.items for b in p.branches)]
    assert len(outer) == 1 and len(outer[0].branches) == 2        # branches | identity
    assert sorted(len(p.branches) for p in diagram.parallels()) == sorted([2, branches])
    # BasicConv2d units (2 layers each) + the linear 1x1 + the final ReLU (a function)
    assert diagram.layer_count() == leaf_count(block) + 1
    plain = [box for box, _ in diagram.boxes() if box.kind == "Conv2d"]
    assert len(plain) == 1 and plain[0].shape[0] == shape[0]    # the linear expansion


def test_stem_diagrams_of_the_inception_resnets():
    v1, v2 = meta(InceptionResNetV1Stem, in_channels=3), meta(InceptionResNetV2Stem, in_channels=3)
    with torch.device("meta"):
        diagram = plot.compare_architectures({"v1": (v1, (3, 299, 299)), "v2": (v2, (3, 299, 299))},
                                             **UNITS)
    assert diagram.parallels(0) == [] and branch_counts(diagram, 1) == [4]
    assert units(diagram, 0) == 6 and units(diagram, 1) == 5 + 7
    assert diagram.layer_count(0) == leaf_count(v1) and diagram.layer_count(1) == leaf_count(v2)
    assert len(mixed_5b_branches(192)) == 4 and len(stem_split2_towers(160)) == 2


def test_model_diagrams_at_block_level():
    v4 = meta(inception_v4, num_classes=1000, in_channels=3)
    v4_blocks = (InceptionV4Stem, InceptionV4A, ReductionA, InceptionV4B, InceptionV4ReductionB,
                 InceptionV4C)
    with torch.device("meta"):
        diagram = plot.architecture(v4, (3, 299, 299), blocks=v4_blocks)
    assert sorted(r.times for r in diagram.repeats()) == [3, 4, 7]
    assert diagram.layer_count() == leaf_count(v4)
    v1 = meta(inception_resnet_v1, num_classes=1000, in_channels=3)
    v2 = meta(inception_resnet_v2, num_classes=1000, in_channels=3)
    ir_blocks = (InceptionResNetV1Stem, InceptionResNetV2Stem, InceptionResNetA, ReductionA,
                 InceptionResNetB, InceptionResNetReductionB, InceptionResNetC, BasicConv2d)
    with torch.device("meta"):
        both = plot.compare_architectures({"v1": (v1, (3, 299, 299)), "v2": (v2, (3, 299, 299))},
                                          blocks=ir_blocks, block_label=unit_label)
    assert sorted(r.times for r in both.repeats(0)) == [5, 5, 10]
    assert sorted(r.times for r in both.repeats(1)) == [9, 10, 20]   # + the lone linear last block
    texts = [box.text for box, _ in both.boxes(1)]
    assert "InceptionResNetC ×1, no ReLU" in texts and "InceptionResNetA ×0.17" in texts
    assert both.layer_count(0) == leaf_count(v1) and both.layer_count(1) == leaf_count(v2)


# ---------------------------------------------------------------- grid sizes and split helpers
def test_smallest_side_with_a_3x3_grid_at_the_c_blocks():
    for factory in (inception_v4, inception_resnet_v1, inception_resnet_v2):
        net = meta(factory, blocks=(1, 1, 1)).eval()   # a 1x1 grid: BN needs eval mode
        for side, expected in ((96, 1), (138, 2), (139, 3)):
            x = torch.zeros(1, 1, side, side, device="meta")
            x = net.reduction_b(net.inception_b(net.reduction_a(net.inception_a(net.stem(x)))))
            assert x.shape[-1] == expected, (factory.__name__, side)


def test_residual_stage_linear_last():
    stage = residual_stage(InceptionResNetC, 64, (8, (8, 8, 8)), 3, 0.2, linear_last=True)
    assert [b.scale for b in stage] == [0.2, 0.2, 1.0]
    assert [b.activation for b in stage] == [True, True, False]

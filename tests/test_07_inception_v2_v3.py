"""Chapter 07 (v2/v3): BN-Inception and Inception-v3 against their reference numbers."""
import math

import pytest
import torch
import torchvision

from utils import plot, profile, references
from utils.checks import InputSizeError
from utils.models import (BasicConv2d, InceptionV3A, InceptionV3Aux, InceptionV3B, InceptionV3C,
                          InceptionV3D, InceptionV3E, InceptionBNBlock, inception_bn, inception_v3,
                          inception_v3_min_size)

# torchvision.models.inception_v3 documentation / REFERENCES.md: 23,834,568 parameters without
# the auxiliary head, 27,161,264 with it, 5.713 GFLOPS (really GMACs) at 299x299.
V3_PARAMS, V3_PARAMS_AUX, V3_MACS = 23_834_568, 27_161_264, 5.713e9
# BN-Inception: the paper prints no count; counted from Figure 5 of Ioffe & Szegedy (2015)
# with bias-free convolutions (our layout), at 224x224.
BN_PARAMS, BN_MACS = 11_285_224, 2_032_600_064


def meta(factory, **kwargs):
    with torch.device("meta"):
        return factory(**kwargs)


def test_basic_conv_keys_match_torchvision():
    ours = BasicConv2d(3, 8, kernel_size=3)
    theirs = torchvision.models.inception.BasicConv2d(3, 8, kernel_size=3)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.bn.eps == 0.001 and ours.conv.bias is None


def test_inception_v3_imagenet_counts():
    net = meta(inception_v3, num_classes=1000, in_channels=3, aux_logits=False)
    assert profile.count_params(net) == V3_PARAMS
    assert round(profile.count_flops(net, (1, 3, 299, 299)) / 2e9, 3) == V3_MACS / 1e9
    assert profile.count_params(meta(inception_v3, num_classes=1000, in_channels=3, aux_logits=True)) == V3_PARAMS_AUX


def test_inception_v3_flops_equal_torchvision():
    with torch.device("meta"):
        reference = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=False,
                                                    transform_input=False)
    ours = meta(inception_v3, num_classes=1000, in_channels=3, aux_logits=False)
    assert profile.count_flops(ours, (1, 3, 299, 299)) == profile.count_flops(reference, (1, 3, 299, 299))


def test_inception_v3_outputs_equal_torchvision():
    torch.manual_seed(0)
    reference = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=False,
                                                transform_input=False).eval()
    ours = inception_v3(num_classes=1000, in_channels=3, aux_logits=False).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_inception_v3_aux_keys_match_torchvision():
    with torch.device("meta"):
        reference = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=True)
    ours = meta(inception_v3, num_classes=1000, in_channels=3, aux_logits=True)
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == theirs


def test_bn_inception_counts():
    net = meta(inception_bn, num_classes=1000, in_channels=3)
    assert profile.count_params(net) == BN_PARAMS
    assert profile.count_flops(net, (1, 3, 224, 224)) == 2 * BN_MACS


def test_block_shapes():
    assert InceptionBNBlock(192, 64, 64, 64, 64, 96, 32)(torch.zeros(1, 192, 28, 28)).shape == (1, 256, 28, 28)
    assert InceptionBNBlock(320, 0, 128, 160, 64, 96, 0, "max", 2)(torch.zeros(1, 320, 28, 28)).shape == (1, 576, 14, 14)
    with torch.device("meta"):
        assert InceptionV3A(192, 32)(torch.zeros(1, 192, 35, 35)).shape == (1, 256, 35, 35)
        assert InceptionV3B(288)(torch.zeros(1, 288, 35, 35)).shape == (1, 768, 17, 17)
        assert InceptionV3C(768, 128)(torch.zeros(1, 768, 17, 17)).shape == (1, 768, 17, 17)
        assert InceptionV3D(768)(torch.zeros(1, 768, 17, 17)).shape == (1, 1280, 8, 8)
        assert InceptionV3E(1280)(torch.zeros(1, 1280, 8, 8)).shape == (1, 2048, 8, 8)


def test_fashion_mnist_configurations():
    torch.manual_seed(0)
    assert inception_bn()(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    with torch.device("meta"):
        net = inception_v3()  # aux head on: training returns (main, aux)
        main, aux = net(torch.zeros(2, 1, 299, 299))
        assert main.shape == aux.shape == (2, 10)
        low_res = inception_v3(stem_stride=1, stem_pool=False)
        main, aux = low_res(torch.zeros(2, 1, 79, 79))
        assert aux.shape == (2, 10)
        assert net.eval()(torch.zeros(2, 1, 75, 75)).shape == (2, 10)


def test_min_sizes_are_the_papers_resolutions():
    # Szegedy et al. 2016, Sec. 7: 299, 151 and 79 px variants (77 is the exact minimum of the last).
    assert inception_v3_min_size() == 75
    assert inception_v3_min_size(aux=True) == 299
    assert inception_v3_min_size(1, True, aux=True) == 151
    assert inception_v3_min_size(1, False, aux=True) == 77


def test_wrong_inputs_raise_helpful_errors():
    with torch.device("meta"):
        net = inception_v3(aux_logits=False).eval()
        with pytest.raises(InputSizeError, match="3 channels"):
            net(torch.zeros(1, 3, 299, 299))
        with pytest.raises(InputSizeError, match="at least 75x75"):
            net(torch.zeros(1, 1, 64, 64))
        with pytest.raises(InputSizeError, match="auxiliary classifier"):
            inception_v3(aux_logits=True)(torch.zeros(2, 1, 75, 75))
        with pytest.raises(InputSizeError, match="BN-Inception"):
            inception_bn()(torch.zeros(1, 1, 16, 16))


# ----------------------------------------------------------------------------- diagrams

def _leaves(module):
    return sum(1 for m in module.modules() if not list(m.children()))


def _layers_that_run(module):
    """Leaf modules plus the functional ReLU inside every BasicConv2d."""
    leaves = sum(1 for m in module.modules() if not list(m.children()))
    return leaves + sum(isinstance(m, BasicConv2d) for m in module.modules())


def _branch_kinds(fork):
    return [[box.kind for box in branch.items if hasattr(box, "kind")] for branch in fork.branches]


def test_bn_inception_block_diagrams():
    # 3a: four branches (1x1 / 1x1-3x3 / 1x1-3x3-3x3 / pool-1x1); 3c: three, its pool passed through
    block_3a = InceptionBNBlock(192, 64, 64, 64, 64, 96, 32, pool="avg")
    block_3c = InceptionBNBlock(320, 0, 128, 160, 64, 96, 0, pool="max", stride=2)
    diagram = plot.compare_architectures({"3a": (block_3a, (192, 28, 28)), "3c": (block_3c, (320, 28, 28))})
    (fork_3a,), (fork_3c,) = diagram.parallels(0), diagram.parallels(1)
    assert len(fork_3a.branches) == 4 and len(fork_3c.branches) == 3
    assert _branch_kinds(fork_3c)[-1] == ["MaxPool2d"]
    assert [b.items[-1].shape for b in fork_3c.branches] == [(160, 14, 14), (96, 14, 14), (320, 14, 14)]
    assert diagram.layer_count(0) == _layers_that_run(block_3a) == 7 * 3 + 1
    assert diagram.layer_count(1) == _layers_that_run(block_3c) == 5 * 3 + 1
    assert diagram.repeats(0) == diagram.repeats(1) == []


@pytest.mark.parametrize("module, shape, branches, inner_forks, convs", [
    (InceptionV3A(192, 32), (192, 35, 35), 4, 0, 7),      # paper Figure 5 (released: a 5x5 branch)
    (InceptionV3C(768, 128), (768, 17, 17), 4, 0, 10),    # Figure 6, n = 7
    (InceptionV3E(1280), (1280, 8, 8), 4, 2, 9),          # Figure 7: 1x3 | 3x1 in two branches
    (InceptionV3B(288), (288, 35, 35), 3, 0, 4),          # Figure 10 style reductions
    (InceptionV3D(768), (768, 17, 17), 3, 0, 6),
])
def test_inception_v3_module_diagrams(module, shape, branches, inner_forks, convs):
    diagram = plot.architecture(module, shape)
    forks = diagram.parallels()
    outer = max(forks, key=lambda fork: len(fork.branches))
    assert len(outer.branches) == branches and len(forks) == 1 + inner_forks
    assert all(len(fork.branches) == 2 for fork in forks if fork is not outer)
    pools = 1  # every module has one pooling layer
    assert diagram.layer_count() == _layers_that_run(module) == 3 * convs + pools
    with torch.no_grad():
        out_shape = tuple(module(torch.zeros(1, *shape)).shape[1:])
    assert [box for box, _ in diagram.boxes()][-1].shape == out_shape
    assert diagram.repeats() == []


def test_aux_head_diagram_is_one_path():
    head = InceptionV3Aux(768, num_classes=10)
    diagram = plot.architecture(head, (768, 17, 17))
    assert diagram.parallels() == [] and diagram.repeats() == []
    kinds = [box.kind for box, _ in diagram.boxes()]
    assert kinds.count("Conv2d") == 2 and kinds.count("BatchNorm2d") == 2 and kinds.count("Linear") == 1
    assert diagram.layer_count() == _layers_that_run(head) == 2 * 3 + 3  # 2 BasicConv2d, 2 pools, fc


def test_bn_inception_model_diagram():
    net = inception_bn()
    diagram = plot.architecture(net, (1, 96, 96), blocks=(BasicConv2d, InceptionBNBlock), training=True)
    kinds = [box.kind for box, n in diagram.boxes() for _ in range(n)]
    assert kinds.count("InceptionBNBlock") == 10 and kinds.count("BasicConv2d") == 3
    assert diagram.parallels() == []  # no auxiliary head, even in training mode
    assert diagram.layer_count() == _leaves(net)  # a block box stands for the modules inside it


def test_inception_v3_model_diagram_shows_the_aux_head():
    blocks = (BasicConv2d, InceptionV3A, InceptionV3B, InceptionV3C, InceptionV3D, InceptionV3E, InceptionV3Aux)
    with torch.device("meta"):
        net = inception_v3(aux_logits=True)
        diagram = plot.architecture(net, (1, 299, 299), blocks=blocks, training=True,
                                    block_label=lambda block, name: name)
        plain = plot.architecture(net, (1, 299, 299), blocks=blocks, training=False,
                                  block_label=lambda block, name: name)
    texts = [box.text for box, n in diagram.boxes() for _ in range(n)]
    assert sum(t.startswith("Mixed_5") for t in texts) == 3 and sum(t.startswith("Mixed_6") for t in texts) == 5
    assert sum(t.startswith("Mixed_7") for t in texts) == 3 and sum(t.startswith("Conv2d_") for t in texts) == 5
    (fork,) = diagram.parallels()  # the aux head branches off after Mixed_6e
    assert len(fork.branches) == 2 and fork.branches[0].items[0].text == "AuxLogits"
    assert texts[texts.index("AuxLogits") - 1] == "Mixed_6e"
    assert plain.parallels() == [] and "AuxLogits" not in [box.text for box, _ in plain.boxes()]
    assert diagram.layer_count() - plain.layer_count() == _leaves(net.AuxLogits)
    assert diagram.layer_count() == _leaves(net)


# ----------------------------------------------------------------------------- recipe and references

def test_tf_rmsprop_first_step_differs_from_torch():
    from timm.optim import RMSpropTF

    def first_step(optimizer_class, **kwargs):
        weight = torch.zeros(1, requires_grad=True)
        optimizer = optimizer_class([weight], lr=1.0, alpha=0.9, eps=1.0, **kwargs)
        weight.grad = torch.tensor([10.0])
        optimizer.step()
        return -weight.item()
    # TF: square average starts at 1, eps inside the root; torch: starts at 0, eps outside
    assert first_step(RMSpropTF, momentum=0.9) == pytest.approx(10 / math.sqrt(0.9 + 10 + 1.0), rel=1e-5)
    assert first_step(torch.optim.RMSprop) == pytest.approx(10 / (math.sqrt(10) + 1.0), rel=1e-5)


def test_multi_crop_and_ensemble_references_name_their_protocol():
    assert references.value("inception_v3.top1.12crop") == 19.47
    assert references.value("inception_v3.top1.144crop") == 18.77
    assert references.value("inception_v3.ensemble.top5") == 3.58
    assert "test set" in references.get("inception_v3.ensemble.top5").protocol
    assert "144 crops" in references.get("inception_v3.ensemble.top1").protocol
    assert references.value("bn_inception.paper.params") == 13.6e6


def test_state_dict_keys_keep_torchvision_order():
    with torch.device("meta"):
        reference = torchvision.models.inception_v3(weights=None, init_weights=False, aux_logits=True)
        ours = inception_v3(num_classes=1000, in_channels=3, aux_logits=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
